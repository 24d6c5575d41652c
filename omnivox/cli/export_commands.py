"""`omnivox export`: an O-Voxel `.vxz` file (geometry + PBR attributes) -> a textured `.glb`.

``--profile game`` writes a game-ready file instead (`omnivox.ovoxel.game`): a triangle budget, a baked normal map
and occlusion, optional levels of detail (``MSFT_lod``) and a watertight surface, and ``<name>.report.json`` beside
it (docs/game_export.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omnivox.cli.main import app
from omnivox.cli import checks
from omnivox.cli.checks import DEFAULT_MAX_VOXELS, compute_device, fail, input_file, output_file
from omnivox.cli.progress import progress_bar


@app.command("export")
def export_glb(
    context: typer.Context,
    source: Path = typer.Argument(..., help="Input O-Voxel .vxz file with geometry and material attributes."),
    output: Path = typer.Argument(..., help="Output .glb file."),
    resolution: Optional[int] = typer.Option(
        None, "--resolution", "-r", help="Grid resolution of the file (default: smallest power of two holding it)."),
    texture_size: int = typer.Option(2048, "--texture-size", "-t", help="Side of the square textures."),
    # Defaults are export.DEFAULT_FACE_BUDGET and DEFAULT_SURFACE_TOLERANCE (literal here: importing export.py
    # loads torch; tests/cli checks that they agree).
    decimation_target: int = typer.Option(200_000, "--faces", help="At most this many faces (0: no budget)."),
    tolerance: float = typer.Option(0.5, "--tolerance", help="Then fewer faces while the surface stays within "
                                                             "this many voxels (0: keep the budget's faces)."),
    fill_holes: bool = typer.Option(True, "--fill-holes/--no-fill-holes", help="Close small boundary loops."),
    image_format: str = typer.Option("png", "--image-format", help="Texture images: png or webp."),
    alpha_mode: str = typer.Option("auto", "--alpha-mode", help="auto, OPAQUE, MASK or BLEND."),
    uv: str = typer.Option("voxel", "--uv", help="UV atlas: voxel (axis-projected charts, fast) or xatlas."),
    device: Optional[str] = typer.Option(None, help="Where to bake textures: cpu or cuda (default: cuda when "
                                                    "available)."),
    max_voxels: int = typer.Option(DEFAULT_MAX_VOXELS, "--max-voxels", help="Refuse files with more voxels."),
    profile: str = typer.Option("plain", "--profile", help="plain (as above) or game: a triangle budget (--faces, "
                                                           "default 20000 here), baked normal map and occlusion, "
                                                           "a validity report beside the file."),
    lods: int = checks.LODS_OPTION,
    watertight: bool = checks.WATERTIGHT_OPTION,
    normal_map: bool = checks.NORMAL_MAP_OPTION,
    occlusion: bool = checks.OCCLUSION_OPTION,
) -> None:
    """Extract the surface, unwrap it, bake base colour / metallic-roughness / alpha textures and write a GLB."""
    import time

    start = time.perf_counter()
    try:
        input_file(source, (".vxz",))
        output_file(output, (".glb",))
        if image_format not in ("png", "webp"):  # omnivox.ovoxel.export.IMAGE_FORMATS
            raise ValueError(f"--image-format must be png or webp, got {image_format!r}")
        if alpha_mode not in ("auto", "OPAQUE", "MASK", "BLEND"):  # omnivox.ovoxel.export.ALPHA_MODES
            raise ValueError(f"--alpha-mode must be auto, OPAQUE, MASK or BLEND, got {alpha_mode!r}")
        if uv not in ("voxel", "xatlas"):  # the values of omnivox.ovoxel.export.UvMethod
            raise ValueError(f"--uv must be voxel or xatlas, got {uv!r}")
        # --faces left at the plain default means "the game profile's budget".
        faces_given = context.get_parameter_source("decimation_target").name != "DEFAULT"
        game_profile = checks.game_profile(profile, faces=decimation_target if faces_given else None, lods=lods,
                                           watertight=watertight, normal_map=normal_map, occlusion=occlusion,
                                           texture_size=texture_size)
        game = game_profile is not None
        if game and uv != "voxel":
            raise ValueError("--profile game lays out its atlas with the voxel method (leave out --uv)")
        from omnivox.ovoxel.io.vxz import check_vxz_limits, read_vxz_info
        from omnivox.ovoxel.packing import require_attributes

        header = read_vxz_info(source)  # the header alone: a wrong file fails before torch loads
        check_vxz_limits(header, max_voxels=max_voxels, source=str(source))
        require_attributes([name for name, _ in header["attr"]], str(source), hint="; write it with `omnivox convert`")
        if header["num_voxel"] == 0:
            raise ValueError(f"{source}: the file holds no voxels")
        from omnivox.ovoxel.asset import OVoxel
        from omnivox.ovoxel.export import UvMethod, bake_glb, save_glb

        device = compute_device(device)
        asset = OVoxel.from_vxz(source, resolution, max_voxels=max_voxels)
        coords, grid_size = asset.coords.numpy(), asset.resolution
        if game:
            from omnivox.ovoxel.game import export_game, report_path

            exported = export_game(asset.vertices.numpy(), asset.faces.numpy(), coords, asset.attribute_matrix(),
                                   asset.grid, profile=game_profile, fill_holes=fill_holes, image_format=image_format,
                                   alpha_mode=alpha_mode, device=device, progress=progress_bar())
            game_report = exported.save(output)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as error:
        raise fail("export", error) from error
    if game:
        typer.echo(f"{source} -> {output}: game profile, {len(coords)} voxels at {grid_size}^3 "
                   f"({time.perf_counter() - start:.2f} s)\n{game_report.summary()}\n"
                   f"  report: {report_path(output)}")
        return
    try:
        mesh, report = bake_glb(asset.vertices.numpy(), asset.faces.numpy(), coords, asset.attribute_matrix(),
                                asset.grid, texture_size=texture_size,
                                decimation_target=decimation_target or None, fill_holes=fill_holes,
                                surface_tolerance=tolerance or None,
                                image_format=image_format, alpha_mode=alpha_mode, device=device,
                                progress=progress_bar(), uv_method=UvMethod(uv))
        save_glb(mesh, output)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as error:
        raise fail("export", error) from error
    typer.echo(
        f"{source} -> {output}: {len(coords)} voxels at {grid_size}^3, {report.faces} faces, "
        f"{texture_size}^2 {image_format} textures, alphaMode {report.alpha_mode}"
        f"{', double-sided' if report.double_sided else ''} ({time.perf_counter() - start:.2f} s)"
    )

