"""`omnivox generate` (image(s) -> textured GLB) and `omnivox texture` (mesh + image -> textured GLB)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omnivox.cli import app

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PIPELINE_CHOICES = ("512", "1024", "1024_cascade", "1536_cascade")


def _progress_bar():
    """A ``callback(stage, step, total)`` drawing one tqdm bar per sampling stage."""
    from tqdm import tqdm

    bars = {}

    def callback(stage: str, step: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, leave=False, unit="step")
        bars[stage].update(1)
        if step == total:
            bars.pop(stage).close()

    return callback


def _images_of(source: Path) -> list:
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return images
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found")
    return [source]


def _outputs(images: list, output: Path, samples: int, folder_input: bool) -> list:
    """One output path per (image, sample)."""
    if folder_input or samples > 1 or output.suffix.lower() != ".glb":
        if output.suffix.lower() == ".glb" and folder_input:
            raise ValueError(f"{output}: with a folder of images, -o must be a folder")
        return [[output / (f"{img.stem}.glb" if samples == 1 else f"{img.stem}_{k}.glb") for k in range(samples)]
                for img in images]
    return [[output]]


def write_preview(glb: Path, video: Path, frames: int = 48, resolution: int = 256) -> None:
    """Render a turntable video of ``glb`` with ``omnivox.render``."""
    try:
        from omnivox.render.preview import load_preview_source, render_turntable, save_video
    except ImportError as error:
        raise ValueError(f"--preview needs omnivox.render (not available here: {error})") from error
    source = load_preview_source(glb)
    save_video(render_turntable(source, num_frames=frames, resolution=resolution), video)


@app.command("generate")
def generate(
    source: Path = typer.Argument(..., help="An image (RGBA with alpha, or RGB with --background-model), or a "
                                              "folder of images (models are loaded once)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Weights folder with pipeline.json "
                                                               "(e.g. a download of microsoft/TRELLIS.2-4B)."),
    output: Path = typer.Option(..., "--output", "-o", help="OUT.glb, or a folder (for a folder of images or "
                                                             "--samples > 1)."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="512, 1024, 1024_cascade (default) or "
                                                                    "1536_cascade."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (same seed, same result)."),
    samples: int = typer.Option(1, "--samples", help="Samples per image."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="GPU memory budget, e.g. 16GB."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cpu (default: cuda when available)."),
    background_model: Optional[Path] = typer.Option(None, "--background-model",
                                                    help="BiRefNet / RMBG-2.0 .onnx for RGB images."),
    image_encoder: Optional[Path] = typer.Option(None, "--image-encoder", help="DINOv3 folder, if not beside the "
                                                                               "weights."),
    save_intermediates: Optional[Path] = typer.Option(None, "--save-intermediates",
                                                      help="Folder for condition, structure, latents, .vxz."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Resume from a --save-intermediates folder or "
                                                                  "file (IMAGE may then be omitted with '-')."),
    texture_size: int = typer.Option(2048, "--texture-size", help="Side of the baked textures."),
    faces: int = typer.Option(500_000, "--faces", help="Decimate to this many faces (0: keep all)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a turntable video (.mp4)."),
    show_plan: bool = typer.Option(False, "--show-plan", help="Print the memory plan."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Generate textured 3D assets (GLB) from images with TRELLIS.2."""
    import time

    from omnivox.pipelines.image_to_3d import ImageTo3DPipeline

    start = time.perf_counter()
    try:
        if pipeline is not None and pipeline not in PIPELINE_CHOICES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINE_CHOICES)}, got {pipeline!r}")
        if samples < 1:
            raise ValueError(f"--samples must be >= 1, got {samples}")
        resuming_without_image = resume is not None and str(source) == "-"
        images = [None] if resuming_without_image else _images_of(source)
        folder_input = not resuming_without_image and source.is_dir()
        if folder_input and (resume is not None or save_intermediates is not None):
            raise ValueError("--resume and --save-intermediates take one image, not a folder")
        names = [Path("resumed")] if resuming_without_image else images
        targets = _outputs(names, output, samples, folder_input)
        if preview is not None and (len(images) > 1 or samples > 1):
            raise ValueError("--preview renders one asset; use it with one image and one sample")
        pipe = ImageTo3DPipeline.from_pretrained(weights, device=device, max_memory=max_memory,
                                                 background_model=background_model, image_encoder=image_encoder)
        callback = None if quiet else _progress_bar()
        for image, paths in zip(images, targets):
            assets = pipe.run(image, seed=seed, pipeline_type=pipeline, num_samples=samples, callback=callback,
                              save_intermediates=save_intermediates, resume_from=resume)
            if show_plan and pipe.last_plan is not None:
                typer.echo(str(pipe.last_plan))
            for asset, path in zip(assets, paths):
                asset.to_glb(path, decimation_target=faces or None, texture_size=texture_size)
                typer.echo(f"{image if image is not None else resume} -> {path}: {len(asset.coords)} voxels at "
                           f"{asset.resolution}^3, {len(asset.faces)} faces before export")
        if preview is not None:
            write_preview(targets[0][0], preview)
            typer.echo(f"preview -> {preview}")
    except (ValueError, TypeError, OSError, RuntimeError, KeyError) as error:
        typer.echo(f"omnivox generate: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"done in {time.perf_counter() - start:.1f} s")


@app.command("texture")
def texture(
    mesh: Path = typer.Argument(..., help="Mesh to texture (.glb, .gltf, .obj, .ply, .stl)."),
    image: Path = typer.Argument(..., help="Reference image (RGBA, or RGB with --background-model)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Weights folder with texturing_pipeline.json."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .glb."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    resolution: int = typer.Option(1024, "--resolution", help="O-Voxel grid of the shape encoding (512, 1024 ...)."),
    texture_size: int = typer.Option(2048, "--texture-size", help="Side of the baked textures."),
    keep_uvs: bool = typer.Option(True, "--keep-uvs/--unwrap", help="Bake into the mesh's own UVs when present."),
    up_axis: str = typer.Option("y", "--up", help="Up axis of the mesh file: y (glTF) or z."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="GPU memory budget, e.g. 16GB."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cpu."),
    background_model: Optional[Path] = typer.Option(None, "--background-model", help=".onnx for RGB images."),
    image_encoder: Optional[Path] = typer.Option(None, "--image-encoder", help="DINOv3 folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Paint a PBR material onto an existing mesh from an image with TRELLIS.2."""
    import time

    from omnivox.ovoxel.export import save_glb
    from omnivox.pipelines.texturing import TexturingPipeline

    start = time.perf_counter()
    try:
        if output.suffix.lower() != ".glb":
            raise ValueError(f"{output}: the output must end in .glb")
        pipe = TexturingPipeline.from_pretrained(weights, device=device, max_memory=max_memory,
                                                 background_model=background_model, image_encoder=image_encoder)
        result = pipe.run(mesh, image, seed=seed, resolution=resolution, texture_size=texture_size,
                          keep_uvs=keep_uvs, up_axis=up_axis, callback=None if quiet else _progress_bar())
        save_glb(result, output)
    except (ValueError, TypeError, OSError, RuntimeError, KeyError) as error:
        typer.echo(f"omnivox texture: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"{mesh} + {image} -> {output}: {len(result.faces)} faces, {texture_size}^2 textures "
               f"({time.perf_counter() - start:.1f} s)")
