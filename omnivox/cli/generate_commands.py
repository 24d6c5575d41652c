"""`omnivox generate` (image(s) -> textured GLB; ``--multiview``: several views of one object -> one GLB) and
`omnivox texture` (mesh + image(s) -> textured GLB)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omnivox.cli.main import app
from omnivox.cli import checks
from omnivox.cli.checks import (ASSET_SUFFIXES, IMAGE_SUFFIXES, fail, game_profile, input_file, output_file,
                                output_folder, weights_folder)
from omnivox.cli.progress import progress_bar
from omnivox.pipelines.types import PIPELINE_TYPES as PIPELINE_CHOICES  # standard library only: no torch


def _images_of(source: Path) -> list:
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return images
    return [input_file(source, IMAGE_SUFFIXES, "image")]


def _objects_of(sources: list, multiview: bool) -> list:
    """``(name, views)`` of each object to generate; the name's stem names its output in a folder.

    Without ``--multiview`` every image (given, or in a given folder) is its own object. With it, the given
    images are views of one object, named after the first; one folder gives one object from its images, or,
    when it holds subfolders of images (a folder of folders), one object per subfolder named after it.
    """
    if not multiview:
        return [(image, [image]) for source in sources for image in _images_of(source)]
    if len(sources) == 1 and sources[0].is_dir():
        folder = sources[0]
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
        if subfolders:
            loose = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            if loose:
                raise ValueError(f"{folder}: --multiview takes a folder of images (one object) or a folder of "
                                 f"folders (one object each), not both; move {', '.join(sorted(loose)[:3])} "
                                 "into a subfolder")
            return [(sub, _images_of(sub)) for sub in subfolders]
        return [(folder, _images_of(folder))]
    folders = [str(s) for s in sources if s.is_dir()]
    if folders:
        raise ValueError(f"--multiview takes image files or one folder, got the folder(s) {', '.join(folders)} "
                         "among other inputs")
    return [(sources[0], [input_file(source, IMAGE_SUFFIXES, "image") for source in sources])]


def _outputs(names: list, output: Path, samples: int, several: bool) -> list:
    """One output path per (object, sample), checked before any work.

    ``-o OUT.glb`` (one object): ``OUT.glb``, or ``OUT_0.glb ... OUT_{n-1}.glb`` for ``n`` samples.
    ``-o FOLDER``: ``FOLDER/NAME.glb``, or ``FOLDER/NAME_k.glb`` for ``n`` samples (NAME: the image's, or the
    views' folder's, stem); ``several`` objects (a folder, several images, a folder of view folders) need it.
    """
    if output.suffix.lower() == ".glb":
        if several:
            raise ValueError(f"{output}: with several objects (a folder of images, several images without "
                             "--multiview, or a folder of view folders) -o must be a folder")
        output_file(output, (".glb",))
        if samples == 1:
            return [[output]]
        return [[output.with_name(f"{output.stem}_{k}.glb") for k in range(samples)]]
    output_folder(output)
    stems = [name.stem for name in names]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(f"two inputs would both write {output}/{repeated[0]}.glb; give them different names")
    return [[output / (f"{stem}.glb" if samples == 1 else f"{stem}_{k}.glb") for k in range(samples)]
            for stem in stems]


def _resumed_samples(resume: Path) -> int:
    """How many assets resuming from ``resume`` gives: one for a ``.vxz`` file, else the run's ``num_samples``.

    Reads ``run.json`` (written by ``--save-intermediates``) without the pipeline, which checks it fully later.
    """
    import json

    if not resume.exists():
        raise FileNotFoundError(f"--resume {resume}: no such file or folder")
    if resume.suffix.lower() == ".vxz" and resume.is_file():
        return 1
    folder = resume if resume.is_dir() else resume.parent
    try:
        run = json.loads((folder / "run.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no run.json (not a folder written by --save-intermediates)") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder / 'run.json'}: not readable ({error})") from None
    count = run.get("num_samples") if isinstance(run, dict) else None
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{folder / 'run.json'}: 'num_samples' must be a positive int, got {count!r}")
    return count


def _check_memory(max_memory: Optional[str]) -> None:
    if max_memory is not None:
        from omnivox.pipelines.memory import parse_memory  # plain Python: no torch

        parse_memory(max_memory)


def write_preview(glb: Path, video: Path, frames: int = 48, resolution: int = 256) -> None:
    """Render a turntable video of ``glb`` with ``omnivox.render``."""
    try:
        from omnivox.preview import load_preview_source, render_turntable, save_video
    except ImportError as error:
        raise ValueError(f"--preview needs omnivox.render (not available here: {error})") from error
    source = load_preview_source(glb)
    save_video(render_turntable(source, num_frames=frames, resolution=resolution), video)


@app.command("generate")
def generate(
    context: typer.Context,
    sources: list[Path] = typer.Argument(..., help="Images (RGBA with alpha, or RGB with --background-model) or "
                                                    "a folder of images (models are loaded once); with "
                                                    "--multiview, the views of one object, or a folder of "
                                                    "view folders (one object each)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Weights folder with pipeline.json "
                                                               "(e.g. a download of microsoft/TRELLIS.2-4B)."),
    output: Path = typer.Option(..., "--output", "-o", help="OUT.glb (OUT_0.glb, OUT_1.glb ... with --samples N), "
                                                             "or a folder (FOLDER/IMAGE.glb; needed for a folder "
                                                             "of images)."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="512, 1024, 1024_cascade (default) or "
                                                                    "1536_cascade."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (same seed, same result)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples per image (default 1; with --resume, "
                                                                   "the resumed run's count)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="GPU memory budget, e.g. 16GB."),
    weights_dtype: Optional[str] = typer.Option(None, "--weights-dtype", help="int8 or fp8: the flow models' "
                                                "and DINOv3's weights in 8 bits (half their memory; fp8 needs "
                                                "an RTX 40xx, L4, H100 or newer)."),
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
    faces: int = typer.Option(200_000, "--faces", help="At most this many faces (0: no budget)."),
    tolerance: float = typer.Option(0.5, "--tolerance", help="Then fewer faces while the surface stays within "
                                                             "this many voxels (0: keep the budget's faces)."),
    profile: str = typer.Option("plain", "--profile", help="plain, or game: a triangle budget (--faces, default "
                                                           "20000 here), baked normal map and occlusion, a "
                                                           "validity report beside each file (docs/game_export.md)."),
    lods: int = checks.LODS_OPTION,
    watertight: bool = checks.WATERTIGHT_OPTION,
    normal_map: bool = checks.NORMAL_MAP_OPTION,
    occlusion: bool = checks.OCCLUSION_OPTION,
    multiview: bool = typer.Option(False, "--multiview", help="The images are views of one object (front, side, "
                                                              "back ...): one asset conditioned on all of them."),
    multiview_mode: Optional[str] = typer.Option(None, "--multiview-mode",
                                                 help="stochastic (default: views take turns per step, the cost "
                                                      "of one image) or multidiffusion (every step averages all "
                                                      "views; order-independent; about V times the flow cost)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a turntable video (.mp4)."),
    show_plan: bool = typer.Option(False, "--show-plan", help="Print the memory plan."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Generate textured 3D assets (GLB) from images with TRELLIS.2."""
    import time

    start = time.perf_counter()
    try:
        if pipeline is not None and pipeline not in PIPELINE_CHOICES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINE_CHOICES)}, got {pipeline!r}")
        if samples is not None and samples < 1:
            raise ValueError(f"--samples must be >= 1, got {samples}")
        if multiview_mode is not None:
            if not multiview:
                raise ValueError("--multiview-mode needs --multiview (the images are views of one object)")
            from omnivox.pipelines.samplers import check_multiview_mode

            check_multiview_mode(multiview_mode)
        resuming_without_image = resume is not None and [str(s) for s in sources] == ["-"]
        if resuming_without_image:
            objects = [(Path("resumed"), None)]
        else:
            objects = _objects_of(sources, multiview)
        several = len(objects) > 1 or (not multiview and any(s.is_dir() for s in sources)
                                       and not resuming_without_image)
        if several and (resume is not None or save_intermediates is not None):
            raise ValueError("--resume and --save-intermediates take one object, not a folder or several images")
        if resume is not None:
            resumed = _resumed_samples(resume)
            if samples is not None and samples != resumed:
                raise ValueError(f"--samples {samples}: the run resumed from {resume} has {resumed} sample(s)")
            samples = resumed
        samples = samples or 1
        targets = _outputs([name for name, _ in objects], output, samples, several)
        if preview is not None and (len(objects) > 1 or samples > 1):
            raise ValueError("--preview renders one asset; use it with one object and one sample")
        if preview is not None:
            output_file(preview, (".mp4", ".gif"), "--preview video")
        if save_intermediates is not None:
            output_folder(save_intermediates, "--save-intermediates")
        weights_folder(weights, "pipeline.json")
        if background_model is not None:
            input_file(background_model, (".onnx",), "--background-model")
        if image_encoder is not None and not image_encoder.is_dir():
            raise FileNotFoundError(f"--image-encoder {image_encoder}: no such folder")
        _check_memory(max_memory)
        faces_given = context.get_parameter_source("faces").name != "DEFAULT"
        export_profile = game_profile(profile, faces=faces if faces_given else None, lods=lods,
                                      watertight=watertight, normal_map=normal_map, occlusion=occlusion,
                                      texture_size=texture_size)
        from omnivox.pipelines.image_to_3d import ImageTo3DPipeline

        pipe = ImageTo3DPipeline.from_pretrained(weights, device=device, max_memory=max_memory,
                                                 background_model=background_model, image_encoder=image_encoder,
                                                 weights_dtype=weights_dtype)
        callback = None if quiet else progress_bar()
        for (name, views), paths in zip(objects, targets):
            assets = pipe.run(images=views, multiview_mode=multiview_mode, seed=seed, pipeline_type=pipeline,
                              num_samples=samples, callback=callback, save_intermediates=save_intermediates,
                              resume_from=resume)
            if show_plan and assets.plan is not None:
                typer.echo(str(assets.plan))
            if len(assets) != len(paths):  # an internal invariant: _resumed_samples reads the same run.json
                raise RuntimeError(f"the pipeline returned {len(assets)} assets for {len(paths)} outputs")
            for asset, path in zip(assets, paths):
                if export_profile is None:
                    asset.to_glb(path, decimation_target=faces or None, surface_tolerance=tolerance or None,
                                 texture_size=texture_size, device=pipe.device, progress=callback)
                else:  # the game-ready file and its report beside it
                    asset.to_glb(path, profile=export_profile, device=pipe.device, progress=callback)
                what = resume if views is None else views[0] if len(views) == 1 else f"{name} ({len(views)} views)"
                typer.echo(f"{what} -> {path}: {len(asset.coords)} voxels at "
                           f"{asset.resolution}^3, {len(asset.faces)} faces before export")
        if preview is not None:
            write_preview(targets[0][0], preview)
            typer.echo(f"preview -> {preview}")
    except (ValueError, TypeError, OSError, RuntimeError, KeyError) as error:
        raise fail("generate", error) from error
    typer.echo(f"done in {time.perf_counter() - start:.1f} s")


@app.command("texture")
def texture(
    context: typer.Context,
    mesh: Path = typer.Argument(..., help="Mesh to texture (.glb, .gltf, .obj, .ply, .stl)."),
    images: list[Path] = typer.Argument(..., help="Reference image (RGBA, or RGB with --background-model); "
                                                   "several: views of the object, all used (--multiview-mode)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Weights folder with texturing_pipeline.json."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .glb."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    resolution: int = typer.Option(1024, "--resolution", help="O-Voxel grid of the shape encoding (512, 1024 ...)."),
    texture_size: int = typer.Option(2048, "--texture-size", help="Side of the baked textures."),
    keep_uvs: bool = typer.Option(True, "--keep-uvs/--unwrap", help="Bake into the mesh's own UVs when present."),
    faces: Optional[int] = typer.Option(None, "--faces", help="game: triangle budget (default 20000); plain: at "
                                                              "most this many faces where the mesh is unwrapped."),
    profile: str = typer.Option("plain", "--profile", help="plain, or game: the mesh decimated to a triangle "
                                                           "budget (--faces) in a new atlas, a normal map baked "
                                                           "from the full mesh, occlusion, a validity report "
                                                           "beside the file (docs/game_export.md)."),
    lods: int = checks.LODS_OPTION,
    watertight: bool = checks.WATERTIGHT_OPTION,
    normal_map: bool = checks.NORMAL_MAP_OPTION,
    occlusion: bool = checks.OCCLUSION_OPTION,
    up_axis: Optional[str] = typer.Option(None, "--up", help="Up axis of the mesh file: y or z (default: y for "
                                                             ".glb/.gltf/.obj, z for .stl/.ply)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="GPU memory budget, e.g. 16GB."),
    weights_dtype: Optional[str] = typer.Option(None, "--weights-dtype", help="int8 or fp8: the flow models' "
                                                "and DINOv3's weights in 8 bits (half their memory; fp8 needs "
                                                "an RTX 40xx, L4, H100 or newer)."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cpu."),
    background_model: Optional[Path] = typer.Option(None, "--background-model", help=".onnx for RGB images."),
    image_encoder: Optional[Path] = typer.Option(None, "--image-encoder", help="DINOv3 folder."),
    multiview_mode: Optional[str] = typer.Option(None, "--multiview-mode",
                                                 help="With several images: stochastic (default) or "
                                                      "multidiffusion (see omnivox generate --multiview)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Paint a PBR material onto an existing mesh from an image (or several views) with TRELLIS.2."""
    import time

    start = time.perf_counter()
    try:
        input_file(mesh, ASSET_SUFFIXES, "mesh")
        for image in images:
            input_file(image, IMAGE_SUFFIXES, "image")
        if multiview_mode is not None:
            from omnivox.pipelines.samplers import check_multiview_mode

            check_multiview_mode(multiview_mode)
        output_file(output, (".glb",))
        weights_folder(weights, "texturing_pipeline.json")
        if background_model is not None:
            input_file(background_model, (".onnx",), "--background-model")
        if image_encoder is not None and not image_encoder.is_dir():
            raise FileNotFoundError(f"--image-encoder {image_encoder}: no such folder")
        _check_memory(max_memory)
        if faces is not None and faces < 1:
            raise ValueError(f"--faces must be >= 1, got {faces}")
        export_profile = game_profile(profile, faces=faces, lods=lods, watertight=watertight, normal_map=normal_map,
                                      occlusion=occlusion, texture_size=texture_size)
        if export_profile is not None and context.get_parameter_source("keep_uvs").name != "DEFAULT" and keep_uvs:
            raise ValueError("--profile game decimates the mesh and lays out a new atlas: the mesh's UVs cannot be "
                             "kept (leave out --keep-uvs)")
        from omnivox.ovoxel.export import save_glb
        from omnivox.pipelines.texturing import TexturingPipeline

        pipe = TexturingPipeline.from_pretrained(weights, device=device, max_memory=max_memory,
                                                 background_model=background_model, image_encoder=image_encoder,
                                                 weights_dtype=weights_dtype)
        result = pipe.run(mesh, images=images, multiview_mode=multiview_mode, seed=seed, resolution=resolution,
                          texture_size=texture_size, keep_uvs=keep_uvs,
                          decimation_target=faces if export_profile is None else None, up_axis=up_axis,
                          callback=None if quiet else progress_bar(), profile=export_profile)
        if export_profile is None:
            save_glb(result, output)
        else:  # the game-ready file and its report beside it
            game_report = result.save(output)
    except (ValueError, TypeError, OSError, RuntimeError, KeyError, MemoryError) as error:
        raise fail("texture", error) from error
    shown = images[0] if len(images) == 1 else f"{len(images)} views"
    if export_profile is None:
        typer.echo(f"{mesh} + {shown} -> {output}: {len(result.faces)} faces, {texture_size}^2 textures "
                   f"({time.perf_counter() - start:.1f} s)")
        return
    from omnivox.ovoxel.game import report_path

    typer.echo(f"{mesh} + {shown} -> {output}: game profile ({time.perf_counter() - start:.1f} s)\n"
               f"{game_report.summary()}\n  report: {report_path(output)}")
