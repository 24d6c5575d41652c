"""Checks of command-line paths, run before a command imports torch or numba (seconds on a cold machine).

Each check raises ValueError or FileNotFoundError with a one-line message naming the path; the commands print it
as ``omnivox COMMAND: MESSAGE`` and exit with code 1 before doing any work. Only the standard library is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import typer

# What `omnivox.assets.load_asset` reads (tests/cli checks the two lists agree; importing omnivox.assets here
# would load torch).
ASSET_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")
# omnivox.ovoxel.io.vxz.DEFAULT_MAX_VOXELS (tests/assets/test_untrusted.py checks they agree).
DEFAULT_MAX_VOXELS = 2**27
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _kinds(suffixes: Sequence[str]) -> str:
    return suffixes[0] if len(suffixes) == 1 else "one of " + ", ".join(suffixes)


def input_file(path: Path, suffixes: Sequence[str], what: str = "input") -> Path:
    """``path`` is an existing file (not a folder) whose suffix is one of ``suffixes``."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; the {what} must be a file ({_kinds(suffixes)})")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: the {what} must be {_kinds(suffixes)}")
    return path


def output_file(path: Path, suffixes: Sequence[str], what: str = "output") -> Path:
    """``path`` can be written as a file: a suffix in ``suffixes``, not a folder, no file where a folder must be."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; the {what} must be a file path ({_kinds(suffixes)})")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: the {what} must be {_kinds(suffixes)}")
    _parents_can_be_folders(path)
    return path


def output_folder(path: Path, what: str = "output") -> Path:
    """``path`` is an existing folder or can be created as one."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; the {what} must be a folder")
    _parents_can_be_folders(path)
    return path


def weights_folder(path: Path, config_name: str) -> Path:
    """``path`` is a folder holding ``config_name`` (``pipeline.json`` or ``texturing_pipeline.json``)."""
    if not path.is_dir():
        raise FileNotFoundError(f"weights folder {path} not found" if not path.exists() else
                                f"--weights {path} is a file; it must be the weights folder holding {config_name}")
    if not (path / config_name).is_file():
        raise FileNotFoundError(f"{path} is not a weights folder (no {config_name} in it)")
    return path


def _parents_can_be_folders(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{path}: {parent} is a file, not a folder")
            return


def require_extra(extra: str, modules: Sequence[str], command: str) -> None:
    """Exit with the install command when the optional dependencies of ``extra`` are missing."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        typer.echo(f"error: omnivox {command} needs the '{extra}' extra (missing: {', '.join(missing)}); "
                   f"install it with: pip install 'omnivox[{extra}]'", err=True)
        raise typer.Exit(2)


def fail(command: str, error: Exception) -> typer.Exit:
    """Print ``omnivox COMMAND: message`` on stderr; returns the ``Exit(1)`` to raise."""
    message = str(error)
    if isinstance(error, KeyError):  # str() of a KeyError is the quoted key only
        message = f"missing key {message}"
    typer.echo(f"omnivox {command}: {message}", err=True)
    return typer.Exit(code=1)


def compute_device(device: Optional[str]) -> str:
    """``--device``: ``cpu``, ``cuda`` (checked to exist) or None for CUDA when there is one, as `generate` does.

    Imports torch, so call it after the light checks.
    """
    if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available")
    return device


# The game profile's options, one definition for `export`, `generate` and `texture` (each command words its own
# --profile and --faces, whose defaults differ).
LODS_OPTION = typer.Option(0, "--lods", help="game: coarser levels of detail after the first (MSFT_lod).")
WATERTIGHT_OPTION = typer.Option(False, "--watertight", help="game: a closed, manifold, outward surface.")
NORMAL_MAP_OPTION = typer.Option(True, "--normal-map/--no-normal-map", help="game: bake a normal map.")
OCCLUSION_OPTION = typer.Option(True, "--occlusion/--no-occlusion", help="game: bake ambient occlusion (ORM).")


def game_profile(profile: str, *, faces: Optional[int], lods: int, watertight: bool, normal_map: bool,
                 occlusion: bool, texture_size: int):
    """The ``--profile`` options as an ``omnivox.ovoxel.game.GameProfile`` (``profile == "game"``) or None
    (``"plain"``); a one-line error for a bad profile or game options given without it. ``faces`` None keeps the
    game profile's own budget (the commands' ``--faces`` default is the plain export's)."""
    if profile not in ("plain", "game"):
        raise ValueError(f"--profile must be plain or game, got {profile!r}")
    if profile == "plain":
        extras = [name for name, used in (("--lods", lods != 0), ("--watertight", watertight),
                                          ("--no-normal-map", not normal_map), ("--no-occlusion", not occlusion))
                  if used]
        if extras:
            raise ValueError(f"{', '.join(extras)} only apply with --profile game")
        return None
    from omnivox.ovoxel.game import GameProfile  # numpy/torch: only when the game profile is asked for

    budget = {} if faces is None else {"faces": faces}
    return GameProfile(**budget, lods=lods, watertight=watertight, normal_map=normal_map, occlusion=occlusion,
                       texture_size=texture_size)
