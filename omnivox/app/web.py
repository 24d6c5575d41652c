"""The gradio web app: image to 3D (with progress per stage, a 3D viewer, previews, GLB download) and texturing.

Generation runs in the `JobQueue` workers, not in gradio's request threads: a click submits a job and the handler
only polls it, streaming the queue position and the stage progress to the page. So the page stays responsive,
many visitors can wait at once, and each GPU still runs one job at a time. Closing the page (or "Cancel")
cancels the job.

Layout, following the reference demo (spec training.md 6.1/6.2): inputs on the left (image, pipeline type, seed,
decimation target, texture size, per-stage steps and guidance under "Advanced"), results on the right (status,
`gr.Model3D` viewer with environment lighting, turntable video and 2x2 PBR panel when the renderer is available,
GLB download). Deliberate differences from the reference demo:

* one click generates and exports (the reference has "Generate", then "Extract GLB"): no latents are kept per
  session, so memory does not grow with visitors;
* "Random seed" starts off (the reference randomizes by default), so the same image and settings give the same
  model, and the seed used is always shown in the seed box;
* texture sizes include 512 and the decimation target goes down to 10,000 faces, for quick previews on small GPUs;
* an image without transparency is refused at once when no background model is loaded, instead of failing later;
* more photos of the same object can be added (side, back ...): one model conditioned on all of them
  (docs/multiview.md), which the reference demo does not offer for TRELLIS.2;
* both tabs offer a game-ready file under "Game-ready export" (`omnivox.ovoxel.game`: a triangle budget, baked
  normal map and occlusion, levels of detail as ``MSFT_lod``, a watertight option), as the CLI and the service do.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import gradio as gr

from omnivox.app import tasks
from omnivox.app.inputs import InputError, Limits, check_mesh_upload, normalize_mode, read_image
from omnivox.app.jobs import JobQueue, JobState, QueueFull

#: How often a waiting handler polls its job, in seconds.
POLL_SECONDS = 0.25


def build_app(queue: JobQueue, models: tasks.Models, *, limits: Limits = Limits(),
              previews: tasks.Previews | None = tasks.Previews(), poll_seconds: float = POLL_SECONDS) -> gr.Blocks:
    """Build the gradio Blocks app around a running job queue (whose workers own the pipelines).

    Args:
        queue: the job queue; its workers own `tasks.Models`.
        models: one of the workers' models, read for the choices and defaults (pipeline types, sampler settings).
        limits: upload bounds.
        previews: turntable / PBR panel settings (None: no previews).
        poll_seconds: how often handlers poll their job.
    """
    from omnivox.ovoxel.game import MAX_LODS, GameProfile  # the game export's own limits (the app is built once)

    types = tasks.pipeline_types(models)
    defaults = tasks.stage_defaults(models)

    # delete_cache: gradio copies every result it shows into its cache; clear files older than an hour every 10
    # minutes so a long-running app does not fill the disk (the reference demo cleans every 600 s too).
    with gr.Blocks(title="omnivox: image to 3D", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("## omnivox: image to 3D (TRELLIS.2)\nUpload an image of one object. Images with an alpha "
                    "channel are used as they are; others go through background removal.")
        with gr.Tab("Image to 3D"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    image = gr.Image(label="Image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                     elem_id="input-image", height=320)
                    with gr.Accordion("More views of the same object (optional)", open=False):
                        extra_views = gr.File(label="Other photos of this object (side, back ...)",
                                              file_count="multiple", file_types=["image"], elem_id="extra-views")
                        multiview_mode = gr.Radio(["stochastic", "multidiffusion"], value="stochastic",
                                                  label="How the views are combined", elem_id="multiview-mode",
                                                  info="stochastic: views take turns per step (cost of one "
                                                       "image); multidiffusion: every step averages all views")
                    pipeline_type = gr.Radio(list(types), value=tasks.default_pipeline_type(models) or None,
                                             label="Pipeline type", visible=bool(types), elem_id="pipeline-type")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=tasks.MAX_SEED,
                                         elem_id="seed")
                        randomize = gr.Checkbox(False, label="Random seed", elem_id="randomize")
                    decimation = gr.Slider(10_000, 1_000_000, value=200_000, step=10_000, label="Face budget",
                                           elem_id="decimation")
                    texture_size = gr.Radio([str(s) for s in tasks.TEXTURE_SIZES], value="2048",
                                               label="Texture size", elem_id="texture-size")
                    with gr.Accordion("Game-ready export", open=False, elem_id="game-export"):
                        game_profile = gr.Checkbox(False, label="Game-ready file: the face budget as a triangle "
                                                                "budget, baked normal map and occlusion",
                                                   elem_id="game-profile")
                        lods = gr.Slider(0, MAX_LODS, value=0, step=1, label="Levels of detail (MSFT_lod)",
                                         elem_id="lods")
                        watertight = gr.Checkbox(False, label="Watertight (closed, manifold)", elem_id="watertight")
                    stage_inputs = []
                    with gr.Accordion("Advanced: sampler settings per stage", open=False):
                        for name in tasks.STAGES:
                            steps, guidance = defaults[name]
                            title = f"Stage {tasks.STAGES.index(name) + 1} ({tasks.STAGE_LABELS[name]})"
                            with gr.Row():
                                stage_inputs.append(gr.Slider(1, 50, value=steps, step=1,
                                                              label=f"{title}: steps",
                                                              elem_id=f"{name}-steps"))
                                stage_inputs.append(gr.Slider(0.0, 10.0, value=guidance, step=0.1,
                                                              label=f"{title}: guidance",
                                                              elem_id=f"{name}-guidance"))
                    with gr.Row():
                        generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                        cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                with gr.Column(scale=2):
                    status = gr.Markdown("Ready.", elem_id="status")
                    viewer = gr.Model3D(label="3D model", elem_id="viewer", height=480, clear_color=(1, 1, 1, 1))
                    download = gr.DownloadButton("Download GLB", visible=False, elem_id="download")
                    with gr.Row():
                        video = gr.Video(label="Turntable", visible=False, elem_id="turntable", autoplay=True,
                                         loop=True)
                        panel = gr.Image(label="PBR channels", visible=False, elem_id="pbr-panel")
            job_id = gr.State(None)

        with gr.Tab("Texture a mesh", visible=models.texturing is not None):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    mesh_file = gr.File(label="Mesh (.glb, .gltf, .obj, .ply, .stl)", elem_id="texture-mesh",
                                        file_types=[".glb", ".gltf", ".obj", ".ply", ".stl"])
                    texture_image = gr.Image(label="Image", type="pil", image_mode=None, elem_id="texture-image",
                                             height=320)
                    texture_seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=tasks.MAX_SEED,
                                             elem_id="texture-seed")
                    texture_resolution = gr.Radio(["512", "1024"], value="1024", label="Resolution",
                                                  elem_id="texture-resolution")
                    texture_texture_size = gr.Radio([str(s) for s in tasks.TEXTURE_SIZES], value="2048",
                                                    label="Texture size", elem_id="texture-texture-size")
                    with gr.Accordion("Game-ready export", open=False, elem_id="texture-game-export"):
                        texture_game_profile = gr.Checkbox(False, label="Game-ready file: your mesh decimated "
                                                                        "to the triangle budget in a new atlas, "
                                                                        "baked normal map and occlusion",
                                                           elem_id="texture-game-profile")
                        # Plain texturing keeps the user's faces, so unlike the generate tab's face budget (which
                        # always applies) this one only counts for the game-ready file.
                        texture_faces = gr.Slider(1_000, 1_000_000, value=GameProfile().faces, step=1_000,
                                                  label="Triangle budget (game-ready file)",
                                                  elem_id="texture-faces")
                        texture_lods = gr.Slider(0, MAX_LODS, value=0, step=1, label="Levels of detail (MSFT_lod)",
                                                 elem_id="texture-lods")
                        texture_watertight = gr.Checkbox(False, label="Watertight (closed, manifold)",
                                                         elem_id="texture-watertight")
                    texture_button = gr.Button("Texture", variant="primary", elem_id="texture")
                with gr.Column(scale=2):
                    texture_status = gr.Markdown("Ready.", elem_id="texture-status")
                    texture_viewer = gr.Model3D(label="Textured model", height=480, elem_id="texture-viewer")
                    texture_download = gr.DownloadButton("Download GLB", visible=False, elem_id="texture-download")
            texture_job = gr.State(None)

        def on_generate(picture, more_views, chosen_mode, chosen_type, chosen_seed, random_seed, faces, size,
                        game, levels, closed, *stage_values):
            if picture is None:
                yield "**Error:** upload an image first.", gr.Number(), None
                return
            try:
                picture = [_checked_image(picture, limits)] + _uploaded_views(more_views, limits)
                picture = tasks.views_list(picture)
                chosen_seed = random.randint(0, tasks.MAX_SEED) if random_seed else int(chosen_seed or 0)
                params = tasks.GenerateParams(seed=chosen_seed, pipeline_type=chosen_type or None,
                                              decimation_target=int(faces), texture_size=int(size),
                                              multiview_mode=chosen_mode or None,
                                              **_export_choice(game, levels, closed))
                for index, name in enumerate(tasks.STAGES):
                    params = params.with_stage(name, int(stage_values[2 * index]), float(stage_values[2 * index + 1]))
                params = params.validated(types)
                tasks.check_background(models.image_to_3d, picture)
                job = queue.submit("generate",
                                   lambda m, ctx: tasks.generate(m, ctx, picture, params, previews=previews))
            except (InputError, QueueFull) as exc:
                yield f"**Error:** {exc}", gr.Number(), None
                return
            for text in _follow(queue, job.id, poll_seconds):
                yield text, gr.Number(value=chosen_seed), job.id

        # gradio 6 does not draw a Model3D whose value comes from a generator (streamed) event, so the handler
        # that streams progress only updates the status; the result is shown by a plain event chained after it.
        generate_event = generate_button.click(
            _clear_results, outputs=[viewer, download, video, panel], queue=False,
        ).then(
            on_generate, inputs=[image, extra_views, multiview_mode, pipeline_type, seed, randomize, decimation,
                                 texture_size, game_profile, lods, watertight, *stage_inputs],
            outputs=[status, seed, job_id], concurrency_limit=None,
        )
        generate_event.then(lambda current: _results(queue, current), inputs=[job_id],
                            outputs=[viewer, download, video, panel])
        cancel_button.click(lambda current: _cancel(queue, current), inputs=[job_id], outputs=[status],
                            cancels=[generate_event])

        def on_texture(mesh_path, picture, chosen_seed, resolution, size, game, faces, levels, closed):
            if mesh_path is None or picture is None:
                yield "**Error:** upload a mesh and an image first.", None
                return
            try:
                upload = Path(mesh_path)
                suffix, mesh_bytes = check_mesh_upload(upload.read_bytes(), upload.name, limits)
                picture = _checked_image(picture, limits)
                params = tasks.GenerateParams(seed=int(chosen_seed or 0), texture_size=int(size),
                                              decimation_target=int(faces), **_export_choice(game, levels, closed))
                params = params.validated()
                tasks.check_background(models.texturing, picture)
                job = queue.submit("texture", lambda m, ctx: tasks.texture_upload(
                    m, ctx, suffix, mesh_bytes, picture, params, resolution=int(resolution)))
            except (InputError, QueueFull) as exc:
                yield f"**Error:** {exc}", None
                return
            for text in _follow(queue, job.id, poll_seconds):
                yield text, job.id

        texture_button.click(
            lambda: (None, gr.DownloadButton(visible=False)), outputs=[texture_viewer, texture_download], queue=False,
        ).then(
            on_texture, inputs=[mesh_file, texture_image, texture_seed, texture_resolution, texture_texture_size,
                                texture_game_profile, texture_faces, texture_lods, texture_watertight],
            outputs=[texture_status, texture_job], concurrency_limit=None,
        ).then(
            lambda current: _results(queue, current)[:2], inputs=[texture_job],
            outputs=[texture_viewer, texture_download])
    return demo


def _export_choice(game: bool, levels, closed: bool) -> dict:
    """`tasks.GenerateParams` fields of a tab's game controls. Levels and watertight count only while the game
    profile is ticked: the plain profile refuses them, and a user who unticks it after setting them means plain."""
    return dict(profile="game" if game else "plain", lods=int(levels or 0) if game else 0,
                watertight=bool(game and closed))


def _checked_image(picture, limits: Limits):
    width, height = picture.size
    if max(width, height) > limits.max_image_side or min(width, height) < limits.min_image_side:
        raise InputError(f"the image is {width}x{height} pixels; sides must be within "
                         f"{limits.min_image_side}..{limits.max_image_side}")
    return normalize_mode(picture)


def _uploaded_views(files, limits: Limits) -> list:
    """The extra views uploaded beside the main image (gradio hands over their temporary paths), checked as uploads."""
    views = []
    for entry in files or []:
        path = Path(entry if isinstance(entry, (str, Path)) else getattr(entry, "name", entry))
        views.append(read_image(path.read_bytes(), path.name, limits))
    return views


def _clear_results():
    return None, gr.DownloadButton(visible=False), gr.Video(visible=False), gr.Image(visible=False)


def _results(queue: JobQueue, job_id: str | None):
    """Viewer, download button, turntable and PBR panel of a finished job (all hidden unless it succeeded)."""
    try:
        glb = queue.result(job_id) if job_id else None
    except KeyError:
        glb = None
    if glb is None:
        return _clear_results()
    video_path, panel_path = glb.parent / "turntable.mp4", glb.parent / "pbr_panel.png"
    return (str(glb), gr.DownloadButton(value=str(glb), visible=True),
            gr.Video(value=str(video_path), visible=True) if video_path.is_file() else gr.Video(visible=False),
            gr.Image(value=str(panel_path), visible=True) if panel_path.is_file() else gr.Image(visible=False))


def _cancel(queue: JobQueue, job_id: str | None) -> str:
    try:
        cancelled = job_id is not None and queue.cancel(job_id)
    except KeyError:
        cancelled = False
    return "**Cancelled.**" if cancelled else "Nothing to cancel."


def _follow(queue: JobQueue, job_id: str, poll_seconds: float):
    """Stream status lines (queue position, then stage progress, then the outcome) until the job finishes.

    If gradio closes this generator (the visitor left or pressed Cancel), the job is cancelled too.
    """
    finished = False
    try:
        last = None
        while True:
            state = queue.status(job_id)
            if JobState(state["state"]).finished:
                break
            text = _describe(state, queue.counts())
            if text != last:
                yield text
                last = text
            time.sleep(poll_seconds)
        finished = True
        if state["state"] == JobState.DONE.value:
            took = (state["finished"] or 0) - (state["started"] or 0)
            yield f"**Done** in {took:.1f} s."
        else:
            reason = f": {state['error']}" if state["error"] else ""
            yield f"**{state['state'].capitalize()}**{reason}"
    finally:
        if not finished:
            try:
                queue.cancel(job_id)
            except KeyError:
                pass


def _describe(state: dict, counts: dict) -> str:
    if state["state"] == JobState.QUEUED.value:
        return (f"Waiting in the queue: position {state['position']} ({counts['running']} running on "
                f"{counts['workers']} device{'s' if counts['workers'] > 1 else ''}).")
    return f"Running: {state['progress']['text']}."
