"""A run's state (`RunState`), and saving its intermediates and resuming from them (safetensors + JSON; never
pickle).

A folder written by ``run(..., save_intermediates=DIR)``::

    run.json                     pipeline type, seed, number of samples, resolution, which stages exist,
                                 and for several views the multi-view mode
    condition.safetensors        cond_512 (V, T, C) [+ cond_1024], one row per view
    sparse_structure.safetensors coords (N, 4) int32 on the sparse-structure grid
    shape_latent.safetensors     coords (N, 4) int32 on the latent grid, feats (N, 32) denormalised
    material_latent.safetensors  feats (N, 32) denormalised, rows of the shape latent
    sample_K.vxz                 the decoded O-Voxel of sample K

Each safetensors file also holds ``rng_state``, the generator state right after the stage, so resuming draws the
same noise as the uninterrupted run. ``resume_from`` accepts the folder (continue after the latest stage in it),
one of the files (continue after that stage, ignoring later ones) or a ``.vxz`` file (no sampling at all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from omnivox.ovoxel.asset import OVoxel
from omnivox.pipelines.config import read_bounded_json
from omnivox.pipelines.samplers import MULTIVIEW_MODES
from omnivox.pipelines.types import PIPELINE_TYPES

FILES = {"condition": "condition.safetensors", "sparse_structure": "sparse_structure.safetensors",
         "shape_latent": "shape_latent.safetensors", "material_latent": "material_latent.safetensors"}
ORDER = ("condition", "sparse_structure", "shape_latent", "material_latent")
MAX_TOKENS = 1 << 24


@dataclass
class RunState:
    """What an image-to-3D run has produced so far (and what `IntermediateWriter` writes)."""

    pipeline_type: str
    seed: int
    num_samples: int
    cond_512: Optional[torch.Tensor] = None
    cond_1024: Optional[torch.Tensor] = None
    ss_coords: Optional[torch.Tensor] = None          # (N, 4) int32 on the SS grid
    ss_resolution: Optional[int] = None
    shape_coords: Optional[torch.Tensor] = None       # (N, 4) int32 on the latent grid
    shape_feats: Optional[torch.Tensor] = None        # (N, 32) denormalised
    resolution: Optional[int] = None                  # O-Voxel resolution of the decoded result
    tex_feats: Optional[torch.Tensor] = None          # (N, 32) denormalised, rows of shape_coords
    rng_state: Optional[torch.Tensor] = None
    generated: Optional[list] = None
    multiview_mode: Optional[str] = None              # of a run with several views (None: one view)


class IntermediateWriter:
    """Writes each stage of a `RunState` as it completes."""

    def __init__(self, folder: Union[str, Path], state: RunState) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.stages: list = []

    def _save(self, stage: str, tensors: dict, generator: torch.Generator) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None}
        tensors["rng_state"] = generator.get_state()
        save_file(tensors, str(self.folder / FILES[stage]), metadata={"stage": stage})
        if stage not in self.stages:
            self.stages.append(stage)
        self._write_run()

    def _write_run(self, samples: int = 0) -> None:
        s = self.state
        data = {"pipeline_type": s.pipeline_type, "seed": s.seed, "num_samples": s.num_samples,
                "ss_resolution": s.ss_resolution, "resolution": s.resolution, "stages": self.stages,
                "samples": [f"sample_{k}.vxz" for k in range(samples)]}
        if s.multiview_mode is not None:
            data["multiview_mode"] = s.multiview_mode
        (self.folder / "run.json").write_text(json.dumps(data, indent=2))

    def condition(self, generator) -> None:
        self._save("condition", {"cond_512": self.state.cond_512, "cond_1024": self.state.cond_1024}, generator)

    def sparse_structure(self, generator) -> None:
        self._save("sparse_structure", {"coords": self.state.ss_coords}, generator)

    def shape_latent(self, generator) -> None:
        self._save("shape_latent", {"coords": self.state.shape_coords, "feats": self.state.shape_feats}, generator)

    def material_latent(self, generator) -> None:
        self._save("material_latent", {"feats": self.state.tex_feats}, generator)

    def generated(self, results: list) -> None:
        for k, asset in enumerate(results):
            asset.save_vxz(self.folder / f"sample_{k}.vxz")
        self._write_run(len(results))


def _read_run(folder: Path) -> dict:
    path = folder / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no run.json (not a folder written by save_intermediates)")
    data = read_bounded_json(path, "a run description")
    if not isinstance(data, dict) or data.get("pipeline_type") not in PIPELINE_TYPES:
        raise ValueError(f"{path}: pipeline_type must be one of {PIPELINE_TYPES}")
    for key in ("seed", "num_samples"):
        if not isinstance(data.get(key), int):
            raise ValueError(f"{path}: {key!r} must be an int")
    if data.get("multiview_mode") not in (None, *MULTIVIEW_MODES):
        raise ValueError(f"{path}: multiview_mode must be one of {MULTIVIEW_MODES}, got {data['multiview_mode']!r}")
    return data


def _load_tensors(path: Path, expected: dict) -> dict:
    """Read a safetensors file and check the named tensors' dtypes and ranks."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    for name, (dtype, rank) in expected.items():
        if name not in tensors:
            raise ValueError(f"{path}: missing tensor {name!r} (has {sorted(tensors)})")
        t = tensors[name]
        if t.dtype != dtype or t.dim() != rank or t.shape[0] > MAX_TOKENS:
            raise ValueError(f"{path}: tensor {name!r} must be a rank-{rank} {dtype} tensor, got "
                             f"{tuple(t.shape)} {t.dtype}")
    return tensors


def load_intermediates(source: Union[str, Path]) -> RunState:
    """A `RunState` holding every stage up to the latest one in ``source`` (see the module docstring)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"resume_from: {source} not found")
    folder = source if source.is_dir() else source.parent
    run = _read_run(folder)
    state = RunState(run["pipeline_type"], run["seed"], run["num_samples"])
    state.ss_resolution, state.resolution = run.get("ss_resolution"), run.get("resolution")
    state.multiview_mode = run.get("multiview_mode")
    if source.suffix == ".vxz":
        if not state.resolution:
            raise ValueError(f"{folder}/run.json has no resolution for {source.name}")
        state.generated = [OVoxel.from_vxz(source, int(state.resolution))]
        return state
    if source.is_dir():
        last = max((ORDER.index(s) for s in run.get("stages", []) if s in ORDER and (folder / FILES[s]).is_file()),
                   default=-1)
    else:
        names = {v: k for k, v in FILES.items()}
        if source.name not in names:
            raise ValueError(f"resume_from: {source.name} is not an intermediate ({', '.join(FILES.values())} or a "
                             ".vxz)")
        last = ORDER.index(names[source.name])
    if last < 0:
        raise ValueError(f"{folder}: no intermediate stage to resume from")
    t = _load_tensors(folder / FILES["condition"], {"cond_512": (torch.float32, 3)})  # every stage needs it
    state.cond_512, state.cond_1024 = t["cond_512"], t.get("cond_1024")
    if state.cond_1024 is not None and state.cond_1024.shape[0] != state.cond_512.shape[0]:
        raise ValueError(f"{folder / FILES['condition']}: cond_512 has {state.cond_512.shape[0]} view(s), cond_1024 "
                         f"{state.cond_1024.shape[0]}")
    rng = t["rng_state"]
    if last >= 1:
        t = _load_tensors(folder / FILES["sparse_structure"], {"coords": (torch.int32, 2)})
        state.ss_coords, rng = t["coords"], t["rng_state"]
    if last >= 2:
        t = _load_tensors(folder / FILES["shape_latent"], {"coords": (torch.int32, 2), "feats": (torch.float32, 2)})
        state.shape_coords, state.shape_feats, rng = t["coords"], t["feats"], t["rng_state"]
        if len(state.shape_coords) != len(state.shape_feats) or state.shape_coords.shape[1] != 4:
            raise ValueError(f"{folder / FILES['shape_latent']}: coords and feats disagree")
    if last >= 3:
        t = _load_tensors(folder / FILES["material_latent"], {"feats": (torch.float32, 2)})
        state.tex_feats, rng = t["feats"], t["rng_state"]
        if len(state.tex_feats) != len(state.shape_coords):
            raise ValueError(f"{folder / FILES['material_latent']}: {len(state.tex_feats)} rows, the shape latent "
                             f"has {len(state.shape_coords)}")
    state.rng_state = rng
    return state
