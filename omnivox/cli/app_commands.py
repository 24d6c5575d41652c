"""`omnivox app` (the gradio web app) and `omnivox serve` (the HTTP service): both serve the pipelines."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from omnivox.cli.main import app
from omnivox.cli.checks import require_extra

# Options that `serve` and `app` share (as `omnivox.cli.data_commands` shares its options between stages).
WEIGHTS = typer.Option(..., "--weights", help=(
    "Weights folder with pipeline.json (image to 3D) and, for texturing, texturing_pipeline.json "
    "(e.g. a download of microsoft/TRELLIS.2-4B)."))
BACKGROUND_MODEL = typer.Option(None, "--background-model", help=(
    "BiRefNet/RMBG .onnx file for background removal of RGB images (default: RMBG-2.0/onnx/model.onnx "
    "beside the weights if present; without one, only RGBA images are accepted)."))
DEVICES = typer.Option([], "--device", help=(
    "Device to run on; repeat for several GPUs (one job at a time on each). Default: cuda if present."))
MAX_IMAGE_SIDE = typer.Option(4096, help="Largest image width or height in pixels.")
MAX_MEMORY = typer.Option(None, "--max-memory", help="GPU memory budget per device, e.g. 8GB (models offloaded "
                                                     "and work chunked to stay under it).")
WEIGHTS_DTYPE = typer.Option(None, "--weights-dtype", help="int8 or fp8: the flow models' and DINOv3's weights in "
                                                           "8 bits (half their memory; fp8 needs an RTX 40xx, L4, "
                                                           "H100 or newer).")


def _start_queue(weights: Path, background_model: Optional[Path], devices: List[str], max_pending: int,
                 max_memory: Optional[str] = None, weights_dtype: Optional[str] = None):
    """Open the pipelines once per device (they stay resident) and start one worker per device."""
    if not (Path(weights) / "pipeline.json").is_file():
        typer.echo(f"error: {weights} is not a weights folder (no pipeline.json in it)", err=True)
        raise typer.Exit(2)
    if background_model is not None and not Path(background_model).is_file():
        typer.echo(f"error: background model {background_model} does not exist", err=True)
        raise typer.Exit(2)
    import torch

    from omnivox.app.jobs import JobQueue
    from omnivox.app.tasks import load_models

    devices = devices or ["cuda" if torch.cuda.is_available() else "cpu"]
    try:
        models = [load_models(weights, device, background_model, max_memory=max_memory, weights_dtype=weights_dtype)
                  for device in devices]
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    workdir = tempfile.mkdtemp(prefix="omnivox-jobs-")
    return JobQueue(models, workdir, max_pending=max_pending), models[0]


def _require_app_extra(command: str) -> None:
    require_extra("app", ["fastapi", "uvicorn", "gradio", "multipart"], command)


def _limits(max_upload_mb: float, max_image_side: int):
    from omnivox.app.inputs import Limits

    return Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_image_side=max_image_side,
                  max_mesh_bytes=int(max_upload_mb * 1024 * 1024))


@app.command("serve")
def serve(
    weights: Path = WEIGHTS,
    background_model: Optional[Path] = BACKGROUND_MODEL,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the service to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: List[str] = DEVICES,
    max_upload_mb: float = typer.Option(32.0, help="Largest request body in MiB."),
    max_image_side: int = MAX_IMAGE_SIDE,
    max_pending: int = typer.Option(32, help="Most jobs waiting or running; more get HTTP 503."),
    max_memory: Optional[str] = MAX_MEMORY,
    weights_dtype: Optional[str] = WEIGHTS_DTYPE,
) -> None:
    """HTTP API: POST /v1/generate, POST /v1/texture, GET/DELETE /v1/jobs/{id}, OpenAPI at /docs."""
    _require_app_extra("serve")
    import uvicorn

    from omnivox.app.server import create_app

    queue, models = _start_queue(weights, background_model, device, max_pending, max_memory, weights_dtype)
    service = create_app(queue, models, limits=_limits(max_upload_mb, max_image_side))
    typer.echo(f"omnivox service on http://{host}:{port} (OpenAPI: /docs)")
    try:
        uvicorn.run(service, host=host, port=port, log_level="warning")
    finally:
        queue.close()


@app.command("app")
def web_app(
    weights: Path = WEIGHTS,
    background_model: Optional[Path] = BACKGROUND_MODEL,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the app to the network)."),
    port: int = typer.Option(7860, help="TCP port."),
    device: List[str] = DEVICES,
    max_upload_mb: float = typer.Option(32.0, help="Largest uploaded file in MiB."),
    max_image_side: int = MAX_IMAGE_SIDE,
    preview_frames: int = typer.Option(48, help="Frames of the turntable video (0: no video)."),
    preview_size: int = typer.Option(256, help="Pixel size of the turntable and PBR panel (0: no previews)."),
    max_memory: Optional[str] = MAX_MEMORY,
    weights_dtype: Optional[str] = WEIGHTS_DTYPE,
) -> None:
    """Web app in the browser: image to 3D with progress, 3D viewer, previews and GLB download; texturing tab."""
    _require_app_extra("app")
    from omnivox.app.tasks import Previews
    from omnivox.app.web import build_app

    queue, models = _start_queue(weights, background_model, device, 32, max_memory, weights_dtype)
    previews = Previews(frames=preview_frames, resolution=preview_size) if preview_size > 0 else None
    limits = _limits(max_upload_mb, max_image_side)
    demo = build_app(queue, models, limits=limits, previews=previews)
    typer.echo(f"omnivox app on http://{host}:{port}")
    try:
        demo.queue(default_concurrency_limit=None).launch(server_name=host, server_port=port, share=False,
                                                          show_error=True, quiet=True,
                                                          allowed_paths=[str(queue.workdir)],
                                                          max_file_size=limits.max_upload_bytes)
    finally:
        queue.close()
