"""`omnivox app` (the gradio web app) and `omnivox serve` (the HTTP service): both serve the pipelines."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from omnivox.cli import app

_WEIGHTS_HELP = "Folder with pipeline.json and the checkpoints of the image-to-3D pipeline."
_TEXTURING_HELP = "Folder of the texturing pipeline (default: none; the texturing tab / endpoint is off)."
_DEVICE_HELP = "Device to run on; repeat for several GPUs (one job at a time on each). Default: cuda if present."


def _start_queue(weights: Path, texturing_weights: Optional[Path], devices: List[str], max_pending: int):
    """Load the pipelines once per device (they stay resident) and start one worker per device."""
    import torch

    from omnivox.app.jobs import JobQueue
    from omnivox.app.tasks import load_models

    devices = devices or ["cuda" if torch.cuda.is_available() else "cpu"]
    for path in [weights] + ([texturing_weights] if texturing_weights else []):
        if not Path(path).is_dir():
            typer.echo(f"error: weights folder {path} does not exist", err=True)
            raise typer.Exit(2)
    models = [load_models(weights, device, texturing_weights) for device in devices]
    workdir = tempfile.mkdtemp(prefix="omnivox-jobs-")
    return JobQueue(models, workdir, max_pending=max_pending), models[0]


def _limits(max_upload_mb: float, max_image_side: int):
    from omnivox.app.inputs import Limits

    return Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_image_side=max_image_side,
                  max_mesh_bytes=int(max_upload_mb * 1024 * 1024))


@app.command("serve")
def serve(
    weights: Path = typer.Option(..., "--weights", help=_WEIGHTS_HELP),
    texturing_weights: Optional[Path] = typer.Option(None, "--texturing-weights", help=_TEXTURING_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the service to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: List[str] = typer.Option([], "--device", help=_DEVICE_HELP),
    max_upload_mb: float = typer.Option(32.0, help="Largest request body in MiB."),
    max_image_side: int = typer.Option(4096, help="Largest image width or height in pixels."),
    max_pending: int = typer.Option(32, help="Most jobs waiting or running; more get HTTP 503."),
) -> None:
    """HTTP API: POST /v1/generate, POST /v1/texture, GET/DELETE /v1/jobs/{id}, OpenAPI at /docs."""
    import uvicorn

    from omnivox.app.server import create_app
    from omnivox.app.tasks import pipeline_types

    queue, models = _start_queue(weights, texturing_weights, device, max_pending)
    service = create_app(queue, limits=_limits(max_upload_mb, max_image_side),
                         pipeline_types=pipeline_types(models), texturing=models.texturing is not None)
    typer.echo(f"omnivox service on http://{host}:{port} (OpenAPI: /docs)")
    try:
        uvicorn.run(service, host=host, port=port, log_level="warning")
    finally:
        queue.close()


@app.command("app")
def web_app(
    weights: Path = typer.Option(..., "--weights", help=_WEIGHTS_HELP),
    texturing_weights: Optional[Path] = typer.Option(None, "--texturing-weights", help=_TEXTURING_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the app to the network)."),
    port: int = typer.Option(7860, help="TCP port."),
    device: List[str] = typer.Option([], "--device", help=_DEVICE_HELP),
    max_image_side: int = typer.Option(4096, help="Largest image width or height in pixels."),
) -> None:
    """Web app in the browser: image to 3D with progress, 3D viewer, previews and GLB download; texturing tab."""
    from omnivox.app.web import build_app

    queue, models = _start_queue(weights, texturing_weights, device, max_pending=32)
    demo = build_app(queue, models, limits=_limits(32.0, max_image_side))
    typer.echo(f"omnivox app on http://{host}:{port}")
    try:
        demo.queue(default_concurrency_limit=None).launch(server_name=host, server_port=port, share=False,
                                                          show_error=True, quiet=True)
    finally:
        queue.close()
