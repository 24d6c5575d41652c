"""The work behind a request: typed parameters, the resident pipelines of one device, and the two job functions.

`generate` (image, or several views of one object -> textured GLB) and `texture` (mesh + image(s) -> textured GLB)
run inside a `JobQueue` worker.
Both forward the pipelines' per-step progress to the job, which is also where cancellation takes effect.
The pipelines are loaded once per device by `load_models` and stay resident for the life of the process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from omnivox.app.inputs import InputError
from omnivox.app.jobs import JobCancelled, JobContext

logger = logging.getLogger(__name__)

#: The sampling stages whose steps and guidance a user may set, in the order they run.
STAGES = ("sparse_structure", "shape_slat", "tex_slat")
#: Human-readable names of the stages the pipelines report progress for (the cascade adds `shape_slat_lr`).
STAGE_LABELS = {"sparse_structure": "sparse structure", "shape_slat_lr": "shape (coarse)", "shape_slat": "shape",
                "tex_slat": "material", "game_export": "game export"}

MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_SEED = 2**31 - 1
TEXTURE_SIZES = (512, 1024, 2048, 4096)
MAX_DECIMATION_TARGET = 2_000_000
#: The most views of one object a request may send (each is preprocessed and encoded on its own).
MAX_VIEWS = 8
EXPORT_PROFILES = ("plain", "game")


@dataclass(frozen=True)
class StageParams:
    """Sampler settings of one stage; None keeps the value from the weights' `pipeline.json`."""

    steps: int | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class GenerateParams:
    """Everything a user chooses for one request besides the inputs.

    Attributes:
        seed: seeds the pipeline's torch.Generator (0 ... 2**31-1).
        pipeline_type: one of the pipeline's types ("512", "1024_cascade", ...); None: the pipeline's default.
        stages: per-stage sampler settings, keyed by the names in `STAGES` (missing stages keep defaults).
        decimation_target: faces of the exported mesh.
        texture_size: side of the baked textures.
        multiview_mode: how several images of one object are used ("stochastic" or "multidiffusion"; None: the
            pipeline's default, stochastic); ignored for one image.
        profile: "plain" (the textured GLB) or "game" (`omnivox.ovoxel.game`: ``decimation_target`` is then the
            triangle budget, with a baked normal map and occlusion, and ``result.report.json`` beside the file).
        lods: "game": coarser levels of detail after the first (``MSFT_lod``).
        watertight: "game": a closed, manifold, outward surface.
    """

    seed: int = 0
    pipeline_type: str | None = None
    stages: dict[str, StageParams] = field(default_factory=dict)
    decimation_target: int = 200_000  # export.DEFAULT_FACE_BUDGET (then fewer, within 0.5 voxel)
    texture_size: int = 2048
    multiview_mode: str | None = None
    profile: str = "plain"
    lods: int = 0
    watertight: bool = False

    def validated(self, pipeline_types: tuple[str, ...] = ()) -> "GenerateParams":
        """Return self after checking every range; raises `InputError` (HTTP 422) naming the bad field."""
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed must be in 0..{MAX_SEED}, got {self.seed}", status=422)
        if pipeline_types and self.pipeline_type is not None and self.pipeline_type not in pipeline_types:
            raise InputError(f"pipeline_type must be one of {list(pipeline_types)}, got {self.pipeline_type!r}",
                             status=422)
        for name, stage in self.stages.items():
            if name not in STAGES:
                raise InputError(f"unknown stage {name!r}; stages are {list(STAGES)}", status=422)
            if stage.steps is not None and not 1 <= stage.steps <= MAX_STEPS:
                raise InputError(f"{name}_steps must be in 1..{MAX_STEPS}, got {stage.steps}", status=422)
            if stage.guidance is not None and not 0.0 <= stage.guidance <= MAX_GUIDANCE:
                raise InputError(f"{name}_guidance must be in 0..{MAX_GUIDANCE}, got {stage.guidance}", status=422)
        if not 0 <= self.decimation_target <= MAX_DECIMATION_TARGET:
            raise InputError(f"decimation_target must be in 0..{MAX_DECIMATION_TARGET}, "
                             f"got {self.decimation_target}", status=422)
        from omnivox.pipelines.samplers import MULTIVIEW_MODES

        if self.multiview_mode is not None and self.multiview_mode not in MULTIVIEW_MODES:
            raise InputError(f"multiview_mode must be one of {list(MULTIVIEW_MODES)}, got {self.multiview_mode!r}",
                             status=422)
        if self.profile not in EXPORT_PROFILES:
            raise InputError(f"profile must be one of {list(EXPORT_PROFILES)}, got {self.profile!r}", status=422)
        if self.profile == "plain" and (self.lods or self.watertight):
            raise InputError("lods and watertight only apply with profile 'game'", status=422)
        if self.texture_size not in TEXTURE_SIZES:
            raise InputError(f"texture_size must be one of {list(TEXTURE_SIZES)}, got {self.texture_size}",
                             status=422)
        try:
            self.game_profile()  # the game profile checks its own budget and levels
        except ValueError as error:
            raise InputError(str(error), status=422) from None
        return self

    def game_profile(self):
        """The ``omnivox.ovoxel.game.GameProfile`` of ``profile == "game"`` (``decimation_target`` is its triangle
        budget), else None."""
        if self.profile != "game":
            return None
        from omnivox.ovoxel.game import GameProfile

        return GameProfile(faces=self.decimation_target, lods=self.lods, watertight=self.watertight,
                           texture_size=self.texture_size)

    def with_stage(self, name: str, steps: int | None, guidance: float | None) -> "GenerateParams":
        stages = dict(self.stages)
        stages[name] = StageParams(steps, guidance)
        return replace(self, stages=stages)


@dataclass
class Models:
    """The pipelines of one device (one `JobQueue` worker owns one `Models`); texturing may be None."""

    device: str
    image_to_3d: Any = None
    texturing: Any = None


def load_models(weights: str | Path, device: str = "cpu", background_model: str | Path | None = None, *,
                max_memory=None, weights_dtype: str | None = None) -> Models:
    """Open the pipelines in `weights` for `device`: image-to-3D from `pipeline.json`, and texturing too when the
    folder has `texturing_pipeline.json`. `background_model` (a BiRefNet `.onnx`) enables RGB inputs;
    `max_memory` (e.g. "8GB") and `weights_dtype` ("int8", "fp8") are the pipelines' own options.

    The pipelines load each network on first use and keep it (see `omnivox.pipelines`), so a server pays the
    loading once; `warm_up` can pay it before the first request.
    """
    from omnivox.pipelines.image_to_3d import ImageTo3DPipeline

    weights = Path(weights)
    options = dict(device=device, background_model=background_model, max_memory=max_memory,
                   weights_dtype=weights_dtype)
    models = Models(device=device, image_to_3d=ImageTo3DPipeline.from_pretrained(weights, **options))
    if (weights / "texturing_pipeline.json").is_file():
        from omnivox.pipelines.texturing import TexturingPipeline

        models.texturing = TexturingPipeline.from_pretrained(weights, **options)
    return models


def check_background(pipeline: Any, image: "Image.Image | list[Image.Image]", what: str = "the image") -> None:
    """Refuse (HTTP 422) an image without transparency when the pipeline has no background remover, at submit time
    rather than after the job waited in the queue. With several views (a list) every one is checked and the
    message names the ones without transparency."""
    from omnivox.pipelines.preprocess import has_transparency

    if pipeline.background_remover is not None:
        return
    views = views_list(image)
    opaque = [k for k, view in enumerate(views) if not has_transparency(view)]
    if not opaque:
        return
    if len(views) > 1:
        what = f"{what}: view(s) {', '.join(str(k + 1) for k in opaque)} of {len(views)}"
    mode = views[opaque[0]].mode
    raise InputError(f"{what} has no transparent background ({mode}, no alpha below 255) and this server "
                     "has no background remover: upload RGBA images with the object cut out, or start the "
                     "server with --background-model PATH.onnx", status=422)


def views_list(image: "Image.Image | list[Image.Image]") -> list[Image.Image]:
    """One image or several views of one object, as a non-empty list of at most `MAX_VIEWS`."""
    views = list(image) if isinstance(image, (list, tuple)) else [image]
    if not views:
        raise InputError("no image: upload at least one", status=422)
    if len(views) > MAX_VIEWS:
        raise InputError(f"{len(views)} images; at most {MAX_VIEWS} views of one object are accepted", status=422)
    return views


def generate(models: Models, context: JobContext, image: "Image.Image | list[Image.Image]", params: GenerateParams,
             *, previews: "Previews | None" = None) -> Path:
    """Image (or several views of one object, a list) -> textured GLB in the job's output folder.

    With `previews`, also writes `pbr_panel.png` and `turntable.mp4` beside it (see `render_previews`).
    """
    pipe = models.image_to_3d
    pipeline_type = params.pipeline_type or pipe.config.default_pipeline_type
    from omnivox.pipelines.types import pipeline_type as type_named

    stages = list(type_named(pipeline_type).stages)
    callback = progress_callback(context, stages + ["export" if params.profile == "plain" else "game_export"])
    # Until the first sampling step (background removal, the image condition, the first call's kernel compilation)
    # the job would otherwise read "starting" for up to half a minute.
    context.report("preparing the image and its condition")
    outputs = pipe.run(images=views_list(image), multiview_mode=params.multiview_mode, seed=params.seed,
                       pipeline_type=pipeline_type, num_samples=1, sampler_params=sampler_params(params),
                       callback=callback)
    path = context.output_dir / "result.glb"
    # Bake where the pipeline ran; a game profile also writes result.report.json.
    outputs[0].to_glb(path, decimation_target=params.decimation_target, texture_size=params.texture_size,
                      device=models.device, progress=callback, profile=params.game_profile())
    if previews is not None:
        render_previews(outputs[0], context, previews, models.device)
    return path


def texture(models: Models, context: JobContext, mesh: Path, image: "Image.Image | list[Image.Image]",
            params: GenerateParams, *, resolution: int = 1024) -> Path:
    """Mesh file + image (or several views, a list) -> the mesh with baked PBR textures, as a GLB in the job's
    output folder."""
    from omnivox.ovoxel.export import save_glb

    if models.texturing is None:
        raise RuntimeError("no texturing pipeline is loaded (the weights folder has no texturing_pipeline.json)")
    profile = params.game_profile()
    result = models.texturing.run(mesh, images=views_list(image), multiview_mode=params.multiview_mode,
                                  seed=params.seed, resolution=resolution,
                                  texture_size=params.texture_size, sampler_params=sampler_params(params),
                                  callback=progress_callback(context, ["tex_slat", "export" if profile is None
                                                                       else "game_export"]), profile=profile)
    path = context.output_dir / "result.glb"
    if profile is None:
        save_glb(result, path)
    else:  # the game-ready file and result.report.json beside it
        result.save(path)
    return path


def texture_upload(models: Models, context: JobContext, suffix: str, mesh_bytes: bytes,
                   image: "Image.Image | list[Image.Image]", params: GenerateParams, *, resolution: int = 1024) -> Path:
    """Save a checked mesh upload (`omnivox.app.inputs.check_mesh_upload`) in the job's own folder, where there is
    nothing beside it to refer to, then `texture` it."""
    path = context.output_dir / f"input{suffix}"
    path.write_bytes(mesh_bytes)
    return texture(models, context, path, image, params, resolution=resolution)


def sampler_params(params: GenerateParams) -> dict[str, dict[str, float]]:
    """The user's per-stage overrides in the pipeline's `sampler_params` form (unset values left out)."""
    out: dict[str, dict[str, float]] = {}
    for name, stage in params.stages.items():
        chosen = {}
        if stage.steps is not None:
            chosen["steps"] = int(stage.steps)
        if stage.guidance is not None:
            chosen["guidance_strength"] = float(stage.guidance)
        if chosen:
            out[name] = chosen
    return out


def progress_callback(context: JobContext, stages: list[str]):
    """Adapt the pipelines' `callback(stage, step, total)` to `JobContext.report` (which raises on cancellation).

    `stages` lists the stages of this run in order (the sampling stages, then "export" where the job exports), so
    progress reads "stage 2/5 shape (coarse): 3/12"; after the last step of the last sampling stage the job reports
    "decoding" in that stage's place (the decoders report nothing themselves).
    """
    sampling = [stage for stage in stages if stage not in ("export", "game_export")]

    def callback(stage: str, step: int, total: int) -> None:
        index = stages.index(stage) + 1 if stage in stages else 0
        context.report(STAGE_LABELS.get(stage, stage), step, total, index=index, stages=len(stages) if index else 0)
        if sampling and stage == sampling[-1] and step == total:
            context.report("decoding", index=index, stages=len(stages))

    return callback


def pipeline_types(models: Models) -> tuple[str, ...]:
    """The pipeline types a user may choose (all four the pipelines implement)."""
    from omnivox.pipelines.types import PIPELINE_TYPES

    return PIPELINE_TYPES


def default_pipeline_type(models: Models) -> str:
    """The weights' default pipeline type (from `pipeline.json`)."""
    return models.image_to_3d.config.default_pipeline_type


def stage_defaults(models: Models) -> dict[str, tuple[int, float]]:
    """Stage -> (steps, guidance strength) from the weights' `pipeline.json` (what the app's sliders start at)."""
    samplers = models.image_to_3d.config.samplers
    return {name: (int(samplers[name].steps), float(samplers[name].guidance_strength)) for name in STAGES}


@dataclass(frozen=True)
class Previews:
    """What to render beside the GLB: the PBR panel at `resolution`, and a turntable of `frames` frames (0: none)."""

    frames: int = 48
    resolution: int = 256


def render_previews(generated: Any, context: JobContext, settings: Previews, device: str = "cpu") -> None:
    """Write `pbr_panel.png` and `turntable.mp4` of a generated asset into the job's folder.

    Previews are a bonus beside the GLB: if rendering fails, the job still succeeds (a warning is logged).
    """
    try:
        from omnivox import preview
    except ImportError as exc:
        logger.warning("no previews: the renderer is not available (%s)", exc)
        return
    try:
        source = preview.PreviewSource.from_ovoxel(generated.coords.numpy(), generated.file_attributes(),
                                                   int(generated.resolution), device=device)
        context.report("preview", 0, 2)
        preview.save_image(preview.render_panel(source, resolution=settings.resolution),
                           context.output_dir / "pbr_panel.png")
        context.report("preview", 1, 2)
        if settings.frames > 0:
            frames = preview.render_turntable(source, num_frames=settings.frames, resolution=settings.resolution)
            preview.save_video(frames, context.output_dir / "turntable.mp4")
        context.report("preview", 2, 2)
    except JobCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - a preview must not cost the user the GLB
        logger.warning("previews failed (%s: %s); the GLB is still available", type(exc).__name__, exc)
