"""O-Voxel commands: demo, info."""

from __future__ import annotations

from pathlib import Path

import typer

from omnivox.cli import app


@app.command()
def demo(
    out: Path = typer.Option(Path("omnivox-demo"), "--out", "-o", help="Output folder."),
    resolution: int = typer.Option(128, help="Grid resolution per axis."),
) -> None:
    """Build textured shapes in code, convert them to O-Voxel and back, and report round-trip fidelity."""
    from omnivox.demo import run_demo

    run_demo(out, resolution)
