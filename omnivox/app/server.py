"""The HTTP service (FastAPI): submit image-to-3D and texturing jobs, poll them, fetch the GLB, cancel.

Endpoints (the OpenAPI spec is served at `/openapi.json`, interactive docs at `/docs`):

    POST   /v1/generate               multipart: image(s) + parameters   -> 202 {"id", "state", "position", ...}
    POST   /v1/texture                multipart: mesh + image(s) + params -> 202 job

Several ``image`` parts in one request are views of one object (front, side, back ...): one asset conditioned
on all of them, as the ``multiview_mode`` field says (``stochastic``, the default, or ``multidiffusion``; see
docs/multiview.md); at most `tasks.MAX_VIEWS`.
    GET    /v1/jobs/{id}              state, queue position, progress per stage
    GET    /v1/jobs/{id}/result.glb   the GLB once the job is done (409 before)
    DELETE /v1/jobs/{id}              cancel (also POST /v1/jobs/{id}/cancel)
    GET    /v1/health                 devices, loaded pipelines, queue counts

Bad input gets a 4xx answer with {"detail": "..."} naming the upload and the problem: 413 for a body over
`Limits.max_upload_bytes` (checked while it streams in, before any parsing), 422 for an unreadable image, image
dimensions out of bounds or parameters out of range, 404 for unknown jobs and for `/v1/texture` when the weights
have no texturing pipeline, 503 when the queue is full.

`create_app` takes a ready `JobQueue` whose workers own the resident pipelines, so the models are loaded once per
process (by `omnivox serve`) and tests can pass tiny pipelines.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from omnivox.app import tasks
from omnivox.app.inputs import InputError, Limits, check_mesh_upload, read_image
from omnivox.app.jobs import JobQueue, QueueFull

logger = logging.getLogger(__name__)


class JobProgress(BaseModel):
    stage: str
    step: int
    total: int
    index: int
    stages: int
    text: str


class JobStatus(BaseModel):
    """State of one job. `position` is its place in the queue (1 = next), 0 when not queued."""

    id: str
    kind: str
    state: str
    position: int
    progress: JobProgress
    error: Optional[str]
    created: float
    started: Optional[float]
    finished: Optional[float]
    has_result: bool


class BodySizeLimit:
    """ASGI middleware: answer 413 as soon as a request body grows past `max_bytes`.

    Checks the Content-Length header first and counts the streamed bytes as well, so chunked uploads without a
    length are bounded too; nothing is parsed or spooled to disk beyond the limit.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, int(length))
        received = 0
        replaced = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def replacing_send(message):
            # The framework turns a failed body read into its own error answer; send the 413 in its place.
            nonlocal replaced
            if received > self.max_bytes:
                if not replaced and message["type"] == "http.response.start":
                    replaced = True
                    await self._refuse(send, received)
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except _BodyTooLarge:
            if not replaced:
                await self._refuse(send, received)

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"detail": f"request body of {size} bytes or more exceeds the upload limit of "
                                     f"{self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def create_app(queue: JobQueue, models: tasks.Models, *, limits: Limits = Limits()) -> FastAPI:
    """Build the service around a running job queue.

    Args:
        queue: the job queue; its workers own `tasks.Models` (one per device).
        models: one of the workers' models, read for the accepted choices (pipeline types, whether texturing
            and background removal are available).
        limits: upload bounds.
    """
    pipeline_types = tasks.pipeline_types(models)
    texturing = models.texturing is not None
    app = FastAPI(title="omnivox", version="1", description="TRELLIS.2 image-to-3D and texturing as a job queue.")

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def submit(kind: str, work) -> JobStatus:
        try:
            job = queue.submit(kind, work)
        except QueueFull as exc:
            raise HTTPException(503, str(exc)) from exc
        return JobStatus(**queue.status(job.id))

    def status_of(job_id: str) -> dict:
        try:
            return queue.status(job_id)
        except KeyError:
            raise HTTPException(404, f"no job with id {job_id!r} (unknown, or finished long ago and forgotten)") \
                from None

    def read_views(uploads: list) -> list:
        if len(uploads) > tasks.MAX_VIEWS:
            raise InputError(f"{len(uploads)} image parts; at most {tasks.MAX_VIEWS} views of one object are "
                             "accepted", status=422)
        return [read_image(upload.file.read(), upload.filename or "image", limits) for upload in uploads]

    def named(uploads: list) -> str:
        return f"image {uploads[0].filename or 'image'!r}" if len(uploads) == 1 else "the images"

    @app.post("/v1/generate", status_code=202, response_model=JobStatus, summary="Image(s) to a textured 3D model")
    def generate(
        image: list[UploadFile] = File(..., description="PNG/JPEG/WebP; RGBA is used as is, RGB gets background "
                                                         "removal. Several parts: views of one object"),
        multiview_mode: Optional[str] = Form(None, description="with several images: stochastic (default) or "
                                                                "multidiffusion"),
        seed: int = Form(0),
        pipeline_type: Optional[str] = Form(None, description=f"one of {list(pipeline_types) or 'the pipeline types'}"),
        sparse_structure_steps: Optional[int] = Form(None),
        sparse_structure_guidance: Optional[float] = Form(None),
        shape_slat_steps: Optional[int] = Form(None),
        shape_slat_guidance: Optional[float] = Form(None),
        tex_slat_steps: Optional[int] = Form(None),
        tex_slat_guidance: Optional[float] = Form(None),
        decimation_target: Optional[int] = Form(None, description="faces of the file (default 200000; with "
                                                                   "profile=game its triangle budget, default "
                                                                   "20000)"),
        texture_size: int = Form(2048),
        profile: str = Form("plain", description="plain, or game: baked normal map and occlusion, a triangle "
                                                 "budget, result.report.json beside the file"),
        lods: int = Form(0, description="profile=game: coarser levels of detail after the first (MSFT_lod)"),
        watertight: bool = Form(False, description="profile=game: a closed, manifold, outward surface"),
    ) -> JobStatus:
        pictures = read_views(image)
        if decimation_target is None:
            if profile == "game":
                from omnivox.ovoxel.game import GameProfile

                decimation_target = GameProfile().faces
            else:
                decimation_target = 200_000
        params = tasks.GenerateParams(seed=seed, pipeline_type=pipeline_type or None,
                                      decimation_target=decimation_target, texture_size=texture_size,
                                      multiview_mode=multiview_mode or None, profile=profile, lods=lods,
                                      watertight=watertight)
        for name, steps, guidance in (("sparse_structure", sparse_structure_steps, sparse_structure_guidance),
                                      ("shape_slat", shape_slat_steps, shape_slat_guidance),
                                      ("tex_slat", tex_slat_steps, tex_slat_guidance)):
            if steps is not None or guidance is not None:
                params = params.with_stage(name, steps, guidance)
        params = params.validated(pipeline_types)
        tasks.check_background(models.image_to_3d, pictures, named(image))
        return submit("generate", lambda worker_models, ctx: tasks.generate(worker_models, ctx, pictures, params))

    if texturing:
        @app.post("/v1/texture", status_code=202, response_model=JobStatus, summary="Texture an existing mesh")
        def texture(
            mesh: UploadFile = File(..., description="GLB, glTF (embedded), OBJ, PLY or STL"),
            image: list[UploadFile] = File(..., description="the look to give it (RGBA as is, RGB: background "
                                                             "removal); several parts: views of the object"),
            multiview_mode: Optional[str] = Form(None, description="with several images: stochastic (default) "
                                                                    "or multidiffusion"),
            seed: int = Form(0),
            resolution: int = Form(1024, description="O-Voxel grid of the shape encoding: 512 or 1024"),
            texture_size: int = Form(2048),
            tex_slat_steps: Optional[int] = Form(None),
            tex_slat_guidance: Optional[float] = Form(None),
            profile: str = Form("plain", description="plain, or game: the mesh decimated to a triangle budget in "
                                                     "a new atlas, baked normal map and occlusion, "
                                                     "result.report.json beside the file"),
            decimation_target: Optional[int] = Form(None, description="profile=game: triangle budget (default "
                                                                       "20000)"),
            lods: int = Form(0, description="profile=game: coarser levels of detail after the first (MSFT_lod)"),
            watertight: bool = Form(False, description="profile=game: a closed, manifold, outward surface"),
        ) -> JobStatus:
            mesh_name = mesh.filename or "mesh"
            suffix, mesh_bytes = check_mesh_upload(mesh.file.read(), mesh_name, limits)
            pictures = read_views(image)
            if resolution not in (512, 1024):
                raise InputError(f"resolution must be 512 or 1024, got {resolution}", status=422)
            if decimation_target is None:
                from omnivox.ovoxel.game import GameProfile

                decimation_target = GameProfile().faces  # only the game profile reads it here
            params = tasks.GenerateParams(seed=seed, texture_size=texture_size, multiview_mode=multiview_mode or None,
                                          profile=profile, decimation_target=decimation_target, lods=lods,
                                          watertight=watertight)
            if tex_slat_steps is not None or tex_slat_guidance is not None:
                params = params.with_stage("tex_slat", tex_slat_steps, tex_slat_guidance)
            params = params.validated()
            tasks.check_background(models.texturing, pictures, named(image))

            return submit("texture", lambda worker_models, ctx: tasks.texture_upload(
                worker_models, ctx, suffix, mesh_bytes, pictures, params, resolution=resolution))
    else:
        # Without this route a client would get FastAPI's bare "Not Found", which reads like a wrong URL.
        missing = Path(models.image_to_3d.config.root) / "texturing_pipeline.json"

        @app.post("/v1/texture", status_code=202, response_model=JobStatus,
                  summary="Texture an existing mesh (this server has no texturing weights: always 404)",
                  responses={404: {"description": "the weights folder has no texturing_pipeline.json"}})
        def texture_unavailable() -> JobStatus:
            raise HTTPException(404, f"texturing weights not found: {missing} does not exist, so this server only "
                                     "generates (POST /v1/generate); start `omnivox serve` with a weights folder "
                                     "that has texturing_pipeline.json (TRELLIS.2-4B has it) to texture meshes")

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus, summary="State, queue position and progress")
    def job_status(job_id: str) -> JobStatus:
        return JobStatus(**status_of(job_id))

    @app.get("/v1/jobs/{job_id}/result.glb", summary="The GLB of a finished job",
             responses={200: {"content": {"model/gltf-binary": {}}}, 409: {"description": "not done"}})
    def job_result(job_id: str):
        state = status_of(job_id)
        path = queue.result(job_id)
        if path is None or not Path(path).is_file():
            raise HTTPException(409, f"job {job_id} has no result: it is {state['state']}"
                                     + (f" ({state['error']})" if state["error"] else ""))
        return FileResponse(path, media_type="model/gltf-binary", filename=f"{job_id}.glb")

    @app.delete("/v1/jobs/{job_id}", response_model=JobStatus, summary="Cancel a queued or running job")
    def cancel_job(job_id: str) -> JobStatus:
        try:
            queue.cancel(job_id)
        except KeyError:
            status_of(job_id)  # raises the 404
        return JobStatus(**status_of(job_id))

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobStatus, summary="Cancel (same as DELETE)")
    def cancel_job_post(job_id: str) -> JobStatus:
        return cancel_job(job_id)

    @app.get("/v1/health", summary="Liveness, queue counts")
    def health() -> dict:
        return {"status": "ok", "queue": queue.counts(), "pipeline_types": list(pipeline_types),
                "texturing": texturing}

    app.add_middleware(BodySizeLimit, max_bytes=limits.max_upload_bytes)
    return app
