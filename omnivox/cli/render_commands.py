"""`omnivox render`: a mesh or O-Voxel file -> a PBR-shaded PNG (view, panel, grid) or a turntable video."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omnivox.cli.main import app
from omnivox.cli.checks import ASSET_SUFFIXES, DEFAULT_MAX_VOXELS, compute_device, fail, input_file, output_file
from omnivox.cli.progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".gif")


@app.command("render")
def render(
    source: Path = typer.Argument(..., help="Input: .glb, .gltf, .obj, .ply, .stl or .vxz."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .png/.jpg (still) or .mp4/.gif (turntable)."),
    views: Optional[int] = typer.Option(None, "--views", "-n", help="Views in the grid (default 8), or frames of "
                                                                     "the turntable (default 48)."),
    resolution: int = typer.Option(512, "--resolution", "-r", help="Side of each rendered view in pixels."),
    panel: bool = typer.Option(False, "--panel", help="The 2x2 PBR panel: shaded, normals; base colour, "
                                                      "metallic, roughness, alpha."),
    grid: bool = typer.Option(False, "--grid", help="A grid of --views shaded views around the object."),
    voxels: bool = typer.Option(False, "--voxels", help="(.vxz) show the voxels as coloured cubes."),
    env: str = typer.Option("studio", "--env", help="Lighting: studio, sky, constant, or an .hdr/.exr/.npy file."),
    up: Optional[str] = typer.Option(None, "--up", help="Up axis of the file: y or z (default: y for .glb/.gltf/"
                                                        ".obj, z for .stl/.ply/.vxz)."),
    ssao: bool = typer.Option(True, "--ssao/--no-ssao", help="Screen-space ambient occlusion."),
    fps: int = typer.Option(15, "--fps", help="Frames per second of videos."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    allow_outside_refs: bool = typer.Option(False, "--allow-outside-refs", help="Follow buffer, image and material "
                                            "references that leave the asset's folder (trusted files only)."),
    max_voxels: int = typer.Option(DEFAULT_MAX_VOXELS, "--max-voxels", help="(.vxz) refuse files with more voxels."),
) -> None:
    """Render previews. A still shows one shaded view unless --panel and/or --grid (stacked) are given; a
    video turns the object around once (PBR panels per frame with --panel)."""
    import time

    start = time.perf_counter()
    suffix = output.suffix.lower()
    try:
        input_file(source, ASSET_SUFFIXES + (".vxz",))
        output_file(output, IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if voxels and source.suffix.lower() != ".vxz":
            raise ValueError(f"{source}: --voxels needs a .vxz file")
        if not 16 <= resolution <= 4096:
            raise ValueError(f"--resolution must be in [16, 4096], got {resolution}")
        if views is None:
            views = 48 if suffix in VIDEO_SUFFIXES else 8
        if not 1 <= views <= 1000:
            raise ValueError(f"--views must be in [1, 1000], got {views}")
        device = compute_device(device)
        from omnivox import preview
        from omnivox.render.environment import resolve_environment

        if voxels:
            image = _voxel_image(source, views, resolution, up or "z", max_voxels)
            preview.save_image(image, output)
        else:
            progress = progress_bar()
            progress("render", 0, 3)  # loading (and extracting a .vxz surface), rendering, writing
            item = preview.load_preview_source(source, up=up, device=device, allow_outside=allow_outside_refs,
                                               max_voxels=max_voxels)
            environment = resolve_environment(env, device=device)
            progress("render", 1, 3)
            if suffix in VIDEO_SUFFIXES:
                frames = preview.render_turntable(item, views, resolution, panel=panel, environment=environment,
                                                  ssao=ssao, batch=4, progress=progress_bar())
                preview.save_video(frames, output, fps=fps)
            else:
                parts = []
                if panel:
                    parts.append(preview.render_panel(item, resolution, environment, ssao=ssao))
                if grid:
                    parts.append(preview.multiview_grid(item, views, resolution // 2 if panel else resolution,
                                                        environment=environment, ssao=ssao))
                if not parts:
                    parts.append(preview.render_panel(item, resolution, environment, ssao=ssao)[:resolution,
                                                                                                :resolution])
                progress("render", 2, 3)
                preview.save_image(_stack(parts), output)
            progress("render", 3, 3)
    except (ValueError, TypeError, OSError, ImportError, MemoryError) as error:
        raise fail("render", error) from error
    typer.echo(f"{source} -> {output} ({time.perf_counter() - start:.2f} s)")


def _voxel_image(source: Path, views: int, resolution: int, up: str, max_voxels: int = DEFAULT_MAX_VOXELS):
    from omnivox.ovoxel.asset import infer_resolution
    from omnivox.ovoxel.io.vxz import read_vxz
    from omnivox.preview import render_voxel_preview

    if source.suffix.lower() != ".vxz":
        raise ValueError(f"{source}: --voxels needs a .vxz file")
    coords, attributes = read_vxz(source, max_voxels=max_voxels)
    if len(coords) == 0:
        raise ValueError(f"{source}: the file holds no voxels")
    if "base_color" not in attributes:
        raise ValueError(f"{source}: no base_color attribute (has {sorted(attributes)})")
    if up not in ("y", "z"):
        raise ValueError(f"--up must be y or z, got {up!r}")
    colors = attributes["base_color"].astype("float32") / 255
    grid = infer_resolution(int(coords.max()))
    if up == "y":  # the same rotation as the shaded path, on voxel indices
        from omnivox.assets.frames import y_up_to_z_up_voxels

        coords = y_up_to_z_up_voxels(coords, grid)
    return render_voxel_preview(coords, colors, grid, resolution, views=min(views, 8))


def _stack(parts):
    """Stack images vertically, padding narrower ones with white on the right."""
    import numpy as np

    width = max(p.shape[1] for p in parts)
    padded = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in parts]
    return np.concatenate(padded, 0)
