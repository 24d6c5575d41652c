"""The datasets the trainers read, by the class names of the released experiment JSONs (spec training.md 1.10,
2.1, 2.5, 3.5, 4.4, 4.5). Each reads exactly what ``omnivox data`` writes (see `omnivox.data.layout`).

=====================================  =======================================================================
class                                  one sample (``__getitem__``) -> collated pack (``collate_fn``)
=====================================  =======================================================================
`FlexiDualGridDataset`                 shape VAE: ``vertices`` (N, 3) float in [0, 1], ``intersected`` (N, 3)
                                       bool -> two `SparseTensor`s on the same coords; ``mesh`` when asked
`SparseVoxelPbrDataset`                material VAE: ``x`` (N, 6) float in [-1, 1] (base_color, metallic,
                                       roughness, alpha; ``u8 / 255 * 2 - 1``) -> `SparseTensor`
`ImageConditionedSparseStructureLatent`  SS flow: ``x_0`` (8, 16, 16, 16) float, ``cond`` (3, S, S) image
`ImageConditionedSLatShape`            shape flow: ``x_0`` normalised latent -> `SparseTensor`, ``cond``
`ImageConditionedSLatPbr`              texture flow: ``x_0`` (PBR latent), ``concat_cond`` (shape latent on the
                                       same coords), ``cond``
=====================================  =======================================================================

Roots (the trainer's ``--data_dir``): a JSON string or dict ``{"<name>": {"base": ROOT, "<role>": "<dir>"}}``
(spec 4.5; role dirs relative to ``base`` or absolute), or simply a dataset root path, in which case every
role takes the toolkit's default folder for the resolution. Roles: ``dual_grid``, ``mesh_dump``, ``pbr_voxel``,
``shape_latent``, ``pbr_latent``, ``ss_latent``, ``render_cond``; ``base`` itself (the index table with
``local_path``, ``num_faces``, texture counts, ``aesthetic_score``) is always read when it has a table.
Several dataset keys are concatenated.

Filters (spec 4.4) are applied once, at construction: the stage's done flag, size limits
(``max_active_voxels`` / ``max_tokens`` / ``max_num_faces``) and ``cond_rendered``. Decision on the aesthetic
filter: ``min_aesthetic_score`` applies only when the tables have an ``aesthetic_score`` column (our index
cannot compute one); when the column exists, rows without a score are dropped as the reference's NaN
comparison does. ``loads`` holds each sample's voxel/token count for token-balanced samplers.

Batching: ``collate_fn(batch, split_size=None)`` returns one pack, or, with ``split_size=k``, a list of ``k``
packs whose total loads are balanced greedily (largest sample to the lightest pack), as the reference's
``batch_split`` does. Sparse fields become `SparseTensor`s with batch-major coords ``(b, x, y, z)``.

Decision on unreadable samples (the reference prints and returns a *random* other sample): a sample that
fails to load with ``OSError``/``ValueError``/``KeyError`` is logged and replaced by the next index
(deterministic), and ``num_bad_samples`` counts them in this process. Other exceptions propagate.

Randomness (which condition view is used) comes from ``seed``, the sample index and a per-instance draw
counter mixed with ``torch.initial_seed()``, so DataLoader workers and epochs differ but a run is reproducible
given the DataLoader's seed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from omnivox.data import layout
from omnivox.data.metadata import Row, as_bool, as_float, has_table, union_tables
from omnivox.ovoxel.packing import PBR_ATTRIBUTES, require_attributes, stack_attributes
from omnivox.sparse import SparseTensor

logger = logging.getLogger(__name__)

Roots = Union[str, os.PathLike, Mapping[str, Mapping[str, str]]]
_MAX_SUBSTITUTIONS = 16


# ------------------------------------------------------------------------------------------------- roots
@dataclass(frozen=True)
class Instance:
    """One sample: its key and the folders each role reads it from."""

    sha256: str
    dirs: Mapping[str, Path]
    row: Mapping[str, str]


def parse_roots(roots: Roots, default_roles: Mapping[str, str]) -> List[Tuple[str, Path, Dict[str, Path]]]:
    """``--data_dir`` -> [(dataset name, base, {role: folder})]; missing roles get their default folders."""
    if isinstance(roots, (str, os.PathLike)) and not str(roots).lstrip().startswith("{"):
        spec = {Path(roots).name or "data": {"base": str(roots)}}
    elif isinstance(roots, str):
        try:
            spec = json.loads(roots)
        except json.JSONDecodeError as error:
            raise ValueError(f"data_dir is neither a folder nor valid JSON: {error}") from error
    else:
        spec = roots
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"data_dir must map dataset names to {{'base': ROOT, role: dir}}, got {spec!r}")
    parsed = []
    for name, entry in spec.items():
        if not isinstance(entry, Mapping) or "base" not in entry:
            raise ValueError(f"data_dir[{name!r}] must be a mapping with a 'base' folder, got {entry!r}")
        base = Path(entry["base"])
        if not base.is_dir():
            raise FileNotFoundError(f"data_dir[{name!r}]: base folder {base} does not exist")
        dirs = {role: base / entry.get(role, default) for role, default in default_roles.items()}
        parsed.append((name, base, dirs))
    return parsed


def _check_extra_args(cls_name: str, extra: Mapping[str, object]) -> None:
    # The released JSONs also carry decoder checkpoints used only to visualise snapshots; accept those names,
    # refuse anything else so a misspelled filter does not vanish silently.
    unknown = [k for k in extra if not (k.startswith("pretrained_") or k.endswith(("_dec", "_dec_path", "_dec_ckpt")))]
    if unknown:
        raise TypeError(f"{cls_name}: unexpected arguments {unknown}")


# ---------------------------------------------------------------------------------------------- filters
def _passes(row: Row, flags: Sequence[str], limits: Mapping[str, Optional[float]],
            min_aesthetic_score: Optional[float], has_aesthetic: bool) -> bool:
    if not all(as_bool(row.get(flag)) for flag in flags):
        return False
    for column, limit in limits.items():
        if limit is None:
            continue
        value = as_float(row.get(column))
        if value is None and column.startswith("num_faces"):
            continue  # face counts are optional (an index without stats); sizes of outputs are not
        if value is None or value > limit:
            return False
    if min_aesthetic_score is not None and has_aesthetic:
        score = as_float(row.get("aesthetic_score"))
        if score is None or score < min_aesthetic_score:
            return False
    return True


def _balanced_groups(loads: Sequence[float], count: int) -> List[List[int]]:
    """Greedy longest-processing-time partition of sample indices into ``count`` groups (none empty if possible)."""
    groups: List[List[int]] = [[] for _ in range(count)]
    totals = [0.0] * count
    for i in sorted(range(len(loads)), key=lambda i: -loads[i]):
        target = min(range(count), key=lambda g: (len(groups[g]) > 0, totals[g]))
        groups[target].append(i)
        totals[target] += loads[i]
    return [sorted(g) for g in groups if g]


def _sparse(coords: Sequence[torch.Tensor], feats: Sequence[torch.Tensor]) -> SparseTensor:
    return SparseTensor.from_batch_list(list(coords), list(feats))


# -------------------------------------------------------------------------------------------------- base
class _ToolkitDataset(Dataset):
    """Shared machinery: roots -> filtered instances, robust loading, balanced collation."""

    roles: Tuple[str, ...] = ()
    flags: Tuple[str, ...] = ()
    load_column: Optional[str] = None

    def __init__(self, roots: Roots, default_roles: Mapping[str, str], limits: Mapping[str, Optional[float]],
                 min_aesthetic_score: Optional[float], extra_flags: Sequence[str] = (),
                 require_columns: Sequence[Tuple[str, float]] = (), seed: int = 0) -> None:
        self.seed = int(seed)
        self._draws = 0
        self.num_bad_samples = 0
        self.instances: List[Instance] = []
        flags = tuple(self.flags) + tuple(extra_flags)
        for _name, base, dirs in parse_roots(roots, default_roles):
            table_dirs = ([base] if has_table(base) else []) + [
                dirs[role] for role in self.roles if role in dirs]
            columns, table = union_tables(table_dirs)
            has_aesthetic = "aesthetic_score" in columns
            for sha, row in table.items():
                if not _passes(row, flags, limits, min_aesthetic_score, has_aesthetic):
                    continue
                if any((as_float(row.get(c)) or 0) <= threshold for c, threshold in require_columns):
                    continue
                self.instances.append(Instance(sha, dirs, dict(row, local_path=_resolve(base, row))))
        self.loads = [self._load_of(inst) for inst in self.instances]

    def _load_of(self, instance: Instance) -> float:
        value = as_float(instance.row.get(self.load_column)) if self.load_column else None
        return value if value is not None else 1.0

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> dict:
        if not self.instances:
            raise IndexError(f"{type(self).__name__} is empty")
        for attempt in range(_MAX_SUBSTITUTIONS):
            i = (index + attempt) % len(self.instances)
            try:
                return self.get_instance(self.instances[i], i)
            except (OSError, ValueError, KeyError) as error:
                self.num_bad_samples += 1
                logger.warning("%s: skipping %s: %s", type(self).__name__, self.instances[i].sha256, error)
        raise RuntimeError(f"{type(self).__name__}: {_MAX_SUBSTITUTIONS} consecutive samples from {index} failed")

    def get_instance(self, instance: Instance, index: int) -> dict:
        raise NotImplementedError

    def _rng(self, index: int) -> np.random.Generator:
        self._draws += 1
        return np.random.default_rng([self.seed, index, torch.initial_seed() % (2**63), self._draws])

    # Subclasses say how one pack is built from a list of samples.
    @staticmethod
    def _collate_pack(batch: Sequence[dict]) -> dict:
        raise NotImplementedError

    @classmethod
    def sample_load(cls, sample: dict) -> float:
        return 1.0

    @classmethod
    def collate_fn(cls, batch: Sequence[dict], split_size: Optional[int] = None):
        """Collate samples into one pack, or into ``split_size`` load-balanced packs (a list)."""
        if not batch:
            raise ValueError(f"{cls.__name__}.collate_fn: empty batch")
        if split_size is None:
            return cls._collate_pack(batch)
        if split_size < 1:
            raise ValueError(f"{cls.__name__}.collate_fn: split_size must be >= 1, got {split_size}")
        groups = _balanced_groups([cls.sample_load(s) for s in batch], split_size)
        return [cls._collate_pack([batch[i] for i in group]) for group in groups]


def _resolve(base: Path, row: Mapping[str, str]) -> str:
    path = row.get("local_path", "")
    if not path:
        return ""
    return str(path if os.path.isabs(path) else base / path)


def read_geometry(path: Path) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A shape O-Voxel file -> (coords (N, 3) int32, vertices (N, 3) float32, intersected (N, 3) bool).

    Shared with `omnivox.data.encode`, so latents are encoded from exactly what the VAE trained on."""
    from omnivox.ovoxel.io import read_vxz
    from omnivox.ovoxel.packing import unpack_geometry

    coords, attrs = read_vxz(path)
    local, flags = unpack_geometry(attrs)
    return torch.from_numpy(coords.astype(np.int32)), torch.from_numpy(local), torch.from_numpy(flags)


def read_pbr_features(path: Path, attrs: Sequence[str] = PBR_ATTRIBUTES) -> Tuple[torch.Tensor, torch.Tensor]:
    """A material O-Voxel file -> (coords (N, 3) int32, x (N, C) float32 in [-1, 1], ``attrs`` in channel order).

    Shared with `omnivox.data.encode`, so latents are encoded from exactly what the VAE trained on."""
    from omnivox.ovoxel.io import read_vxz

    coords, values = read_vxz(path)
    require_attributes(values, str(path), attrs)
    stacked = stack_attributes(values, len(coords), attrs)
    x = torch.from_numpy(stacked.astype(np.float32)) / 255 * 2 - 1
    return torch.from_numpy(coords.astype(np.int32)), x


def _read_mesh_dump(instance: Instance) -> Dict[str, torch.Tensor]:
    path = instance.dirs["mesh_dump"] / f"{instance.sha256}.npz"
    with np.load(path, allow_pickle=False) as dump:
        vertices, faces = dump["vertices"], dump["faces"]
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{path}: bad mesh shapes vertices {vertices.shape}, faces {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"{path}: face indices out of range")
    return {"vertices": torch.from_numpy(vertices.astype(np.float32)), "faces": torch.from_numpy(faces.astype(np.int64))}


def _read_latent(path: Path, what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    with np.load(path, allow_pickle=False) as data:
        if "coords" not in data or "feats" not in data:
            raise ValueError(f"{path}: a {what} latent needs 'coords' and 'feats', found {sorted(data.files)}")
        coords, feats = data["coords"], data["feats"]
    if coords.ndim != 2 or coords.shape[1] != 3 or feats.ndim != 2 or len(feats) != len(coords):
        raise ValueError(f"{path}: bad latent shapes coords {coords.shape}, feats {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{path}: latent has non-finite values")
    return torch.from_numpy(coords.astype(np.int32)), torch.from_numpy(feats.astype(np.float32))


def _normalization(stats: Optional[Mapping[str, Sequence[float]]], name: str):
    if stats is None:
        return None
    if "mean" not in stats or "std" not in stats:
        raise ValueError(f"{name} must have 'mean' and 'std', got keys {sorted(stats)}")
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32)
    if mean.shape != std.shape or mean.dim() != 1 or not bool((std > 0).all()):
        raise ValueError(f"{name}: mean and std must be equal-length vectors with std > 0")
    return mean, std


# ------------------------------------------------------------------------------------------ VAE datasets
class FlexiDualGridDataset(_ToolkitDataset):
    """Shape O-Voxels for the shape SC-VAE (spec 2.1), read from ``dual_grid_<R>/<sha>.vxz``.

    Args:
        roots: ``--data_dir`` (see the module docstring).
        resolution: O-Voxel resolution R (selects ``dual_grid_<R>``).
        max_active_voxels: drop assets with more voxels (``dual_grid_size``).
        max_num_faces: drop assets with more triangles (``num_faces`` of the index, when known).
        min_aesthetic_score: see the module docstring.
        with_mesh: also return the normalised triangles from ``mesh_dumps/<sha>.npz`` under ``mesh``
            (``vertices`` (V, 3) float32 in [-0.5, 0.5], ``faces`` (F, 3) int64) for the render losses; on by
            default as in the reference (its released configs rely on it), and then assets without a mesh
            dump are filtered out.
        seed: unused here (kept for a uniform signature).

    Sample: ``coords`` (N, 3) int32, ``vertices`` (N, 3) float32 in [0, 1], ``intersected`` (N, 3) bool.
    Pack: ``vertices`` / ``intersected`` `SparseTensor`s on the same coords (+ ``mesh``: list of dicts).
    """

    roles = ("dual_grid", "mesh_dump")
    flags = ("dual_grid_converted",)
    load_column = "dual_grid_size"

    def __init__(self, roots: Roots, resolution: int = 256, max_active_voxels: Optional[float] = 1_000_000,
                 max_num_faces: Optional[float] = None, min_aesthetic_score: Optional[float] = None,
                 with_mesh: bool = True, seed: int = 0, **extra) -> None:
        _check_extra_args(type(self).__name__, extra)
        self.resolution, self.with_mesh = int(resolution), bool(with_mesh)
        roles = {"dual_grid": layout.dual_grid_dir(resolution), "mesh_dump": layout.MESH_DUMPS}
        limits = {"dual_grid_size": max_active_voxels, "num_faces": max_num_faces}
        super().__init__(roots, roles, limits, min_aesthetic_score, seed=seed,
                         extra_flags=("mesh_dumped",) if self.with_mesh else ())

    def get_instance(self, instance: Instance, index: int) -> dict:
        coords, local, flags = read_geometry(instance.dirs["dual_grid"] / f"{instance.sha256}.vxz")
        if coords.numel() and int(coords.max()) >= self.resolution:
            raise ValueError(f"{instance.sha256}: voxel index {int(coords.max())} outside resolution {self.resolution}")
        sample = {"coords": coords, "vertices": local, "intersected": flags}
        if self.with_mesh:
            sample["mesh"] = _read_mesh_dump(instance)
        return sample

    @classmethod
    def sample_load(cls, sample: dict) -> float:
        return float(len(sample["coords"]))

    @staticmethod
    def _collate_pack(batch: Sequence[dict]) -> dict:
        coords = [s["coords"] for s in batch]
        vertices = _sparse(coords, [s["vertices"] for s in batch])
        pack = {"vertices": vertices, "intersected": vertices.replace(torch.cat([s["intersected"] for s in batch]))}
        if "mesh" in batch[0]:
            pack["mesh"] = [s["mesh"] for s in batch]
        return pack


class SparseVoxelPbrDataset(_ToolkitDataset):
    """Material O-Voxels for the texture SC-VAE (spec 2.5), read from ``pbr_voxels_<R>/<sha>.vxz``.

    Args:
        roots, resolution, max_active_voxels, max_num_faces, min_aesthetic_score: as `FlexiDualGridDataset`
            (the size column is ``num_pbr_voxels``).
        attrs: attribute names, in channel order (default base_color, metallic, roughness, alpha = 6 ch).
        with_mesh: also return the normalised triangles (``mesh_dumps/<sha>.npz``, as `FlexiDualGridDataset`)
            under ``mesh``. Decision: geometry only, not the textured mesh the reference rebuilds, because our
            material render loss samples the ground-truth voxels on the ground-truth geometry
            (`omnivox.train.vae_trainers`); assets without a mesh dump are then filtered out.

    Sample: ``coords`` (N, 3) int32, ``x`` (N, C) float32 in [-1, 1]. Pack: ``x`` `SparseTensor` (+ ``mesh``).
    """

    roles = ("pbr_voxel", "mesh_dump")
    flags = ("pbr_voxelized",)
    load_column = "num_pbr_voxels"

    def __init__(self, roots: Roots, resolution: int = 256, max_active_voxels: Optional[float] = 1_000_000,
                 max_num_faces: Optional[float] = None, min_aesthetic_score: Optional[float] = None,
                 attrs: Sequence[str] = PBR_ATTRIBUTES, with_mesh: bool = False, seed: int = 0, **extra) -> None:
        _check_extra_args(type(self).__name__, extra)
        self.resolution, self.attrs, self.with_mesh = int(resolution), tuple(attrs), bool(with_mesh)
        roles = {"pbr_voxel": layout.pbr_voxels_dir(resolution), "mesh_dump": layout.MESH_DUMPS}
        limits = {"num_pbr_voxels": max_active_voxels, "num_faces": max_num_faces}
        super().__init__(roots, roles, limits, min_aesthetic_score, seed=seed,
                         extra_flags=("mesh_dumped",) if self.with_mesh else ())

    def get_instance(self, instance: Instance, index: int) -> dict:
        coords, x = read_pbr_features(instance.dirs["pbr_voxel"] / f"{instance.sha256}.vxz", self.attrs)
        sample = {"coords": coords, "x": x}
        if self.with_mesh:
            sample["mesh"] = _read_mesh_dump(instance)
        return sample

    @classmethod
    def sample_load(cls, sample: dict) -> float:
        return float(len(sample["coords"]))

    @staticmethod
    def _collate_pack(batch: Sequence[dict]) -> dict:
        pack = {"x": _sparse([s["coords"] for s in batch], [s["x"] for s in batch])}
        if "mesh" in batch[0]:
            pack["mesh"] = [s["mesh"] for s in batch]
        return pack


# ----------------------------------------------------------------------------------------- flow datasets
def load_condition_image(view_dir: Path, rng: np.random.Generator, image_size: int) -> torch.Tensor:
    """One random rendered view as the trainers see it (spec 3.4): (3, S, S) float32 in [0, 1].

    Crop: the square of side ``max(w, h)`` centred on the bounding box of ``alpha > 0`` (no padding or jitter;
    parts outside the image read as transparent), resized with Lanczos, RGB premultiplied by alpha.
    """
    from PIL import Image

    frames = _view_files(view_dir)
    path = frames[int(rng.integers(len(frames)))]
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    ys, xs = np.nonzero(alpha > 0)
    if len(xs) == 0:
        raise ValueError(f"{path}: the view is fully transparent")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = (int(round(cx - side / 2)), int(round(cy - side / 2)))
    box = (box[0], box[1], box[0] + side, box[1] + side)
    crop = rgba.crop(box).resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(crop).astype(np.float32) / 255).permute(2, 0, 1)
    return pixels[:3] * pixels[3:4]


def _view_files(view_dir: Path) -> List[Path]:
    transforms = view_dir / "transforms.json"
    if transforms.is_file():
        with open(transforms, encoding="utf-8") as handle:
            frames = json.load(handle).get("frames", [])
        names = [f["file_path"] for f in frames if isinstance(f, dict) and isinstance(f.get("file_path"), str)]
        unsafe = [n for n in names if Path(n).name != n or n in ("", ".", "..")]
        if unsafe:
            raise ValueError(f"{transforms}: file_path must name a file in its folder, got {unsafe[0]!r}")
        files = [view_dir / name for name in names]
    else:
        files = sorted(view_dir.glob("*.png"))
    if not files:
        raise ValueError(f"{view_dir}: no condition views")
    return files


class _ImageConditioned(_ToolkitDataset):
    def _check_image_size(self, image_size: int) -> None:
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"{type(self).__name__}: image_size must be an int >= 16, got {image_size!r}")

    def _cond(self, instance: Instance, index: int) -> torch.Tensor:
        return load_condition_image(instance.dirs["render_cond"] / instance.sha256, self._rng(index), self.image_size)


class ImageConditionedSparseStructureLatent(_ImageConditioned):
    """SS flow data (spec 3.5 stage 1): ``ss_latents/<enc>_64/<sha>.npz['z']`` + a condition view.

    Args:
        roots: ``--data_dir``.
        min_aesthetic_score: see the module docstring.
        image_size: side of the condition image (512; 1024 for fine-tuning).
        encoder_name: default folder name of the SS latents (``ss_latents/<encoder_name>_64``).
        normalization: optional ``{"mean": [8], "std": [8]}`` per channel (the released config has none).

    Sample / pack: ``x_0`` (8, 16, 16, 16) float32 (stacked), ``cond`` (3, S, S) float32 (stacked).
    """

    roles = ("ss_latent", "render_cond")
    flags = ("ss_latent_encoded", "cond_rendered")

    def __init__(self, roots: Roots, min_aesthetic_score: Optional[float] = None, image_size: int = 512,
                 encoder_name: str = layout.DEFAULT_SS_ENCODER, normalization: Optional[Mapping] = None,
                 seed: int = 0, **extra) -> None:
        _check_extra_args(type(self).__name__, extra)
        self._check_image_size(image_size)
        self.image_size = image_size
        self.normalization = _normalization(normalization, "normalization")
        roles = {"ss_latent": layout.ss_latents_dir(encoder_name), "render_cond": layout.RENDERS_COND}
        super().__init__(roots, roles, {}, min_aesthetic_score, seed=seed)

    def get_instance(self, instance: Instance, index: int) -> dict:
        path = instance.dirs["ss_latent"] / f"{instance.sha256}.npz"
        with np.load(path, allow_pickle=False) as data:
            if "z" not in data:
                raise ValueError(f"{path}: no 'z' array (found {sorted(data.files)})")
            z = torch.from_numpy(data["z"].astype(np.float32))
        if z.dim() != 4:
            raise ValueError(f"{path}: 'z' must be (C, D, H, W), got {tuple(z.shape)}")
        if self.normalization is not None:
            mean, std = self.normalization
            z = (z - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
        return {"x_0": z, "cond": self._cond(instance, index)}

    @staticmethod
    def _collate_pack(batch: Sequence[dict]) -> dict:
        return {"x_0": torch.stack([s["x_0"] for s in batch]), "cond": torch.stack([s["cond"] for s in batch])}


class ImageConditionedSLatShape(_ImageConditioned):
    """Shape flow data (spec 3.5 stage 2): ``shape_latents/<enc>_<R>/<sha>.npz`` + a condition view.

    Args:
        roots: ``--data_dir``.
        resolution: O-Voxel resolution the latents were encoded at (latent grid R/16).
        max_tokens: drop assets with more latent tokens (``shape_latent_tokens``).
        min_aesthetic_score: see the module docstring.
        image_size: side of the condition image.
        normalization: ``{"mean": [C], "std": [C]}``; features become ``(feats - mean) / std``.
        encoder_name: default latent folder (``shape_latents/<encoder_name>_<R>``).

    Sample: ``coords`` (L, 3) int32, ``x_0`` (L, C) float32, ``cond`` (3, S, S).
    Pack: ``x_0`` `SparseTensor`, ``cond`` (B, 3, S, S).
    """

    roles = ("shape_latent", "render_cond")
    flags = ("shape_latent_encoded", "cond_rendered")
    load_column = "shape_latent_tokens"

    def __init__(self, roots: Roots, resolution: int = 512, max_tokens: Optional[int] = 32768,
                 min_aesthetic_score: Optional[float] = None, image_size: int = 512,
                 normalization: Optional[Mapping] = None, encoder_name: str = layout.DEFAULT_SHAPE_ENCODER,
                 seed: int = 0, **extra) -> None:
        _check_extra_args(type(self).__name__, extra)
        self._check_image_size(image_size)
        self.resolution, self.image_size = int(resolution), image_size
        self.normalization = _normalization(normalization, "normalization")
        roles = {"shape_latent": layout.shape_latents_dir(encoder_name, resolution),
                 "render_cond": layout.RENDERS_COND}
        super().__init__(roots, roles, {"shape_latent_tokens": max_tokens}, min_aesthetic_score, seed=seed)

    def _latent(self, instance: Instance, role: str, stats) -> Tuple[torch.Tensor, torch.Tensor]:
        coords, feats = _read_latent(instance.dirs[role] / f"{instance.sha256}.npz", role)
        if stats is not None:
            mean, std = stats
            if feats.shape[1] != len(mean):
                raise ValueError(f"{instance.sha256}: {role} has {feats.shape[1]} channels, stats have {len(mean)}")
            feats = (feats - mean) / std
        return coords, feats

    def get_instance(self, instance: Instance, index: int) -> dict:
        coords, feats = self._latent(instance, "shape_latent", self.normalization)
        return {"coords": coords, "x_0": feats, "cond": self._cond(instance, index)}

    @classmethod
    def sample_load(cls, sample: dict) -> float:
        return float(len(sample["coords"]))

    @staticmethod
    def _collate_pack(batch: Sequence[dict]) -> dict:
        return {"x_0": _sparse([s["coords"] for s in batch], [s["x_0"] for s in batch]),
                "cond": torch.stack([s["cond"] for s in batch])}


class ImageConditionedSLatPbr(ImageConditionedSLatShape):
    """Texture flow data (spec 3.5 stage 3): PBR latent + shape latent of the same asset + a condition view.

    Args:
        roots, resolution, max_tokens, min_aesthetic_score, image_size: as `ImageConditionedSLatShape`
            (the token column is ``pbr_latent_tokens``).
        pbr_slat_normalization / shape_slat_normalization: ``{"mean", "std"}`` of each latent.
        full_pbr: keep only assets with at least one base colour, metallic and roughness texture
            (index columns ``num_basecolor_tex`` / ``num_metallic_tex`` / ``num_roughness_tex``).
        shape_encoder_name / pbr_encoder_name: default latent folders.

    Sample: ``coords`` (L, 3), ``x_0`` (L, C) PBR latent, ``concat_cond`` (L, C') shape latent, ``cond``.
    Raises ValueError (sample skipped) if the two latents' coordinates differ. Pack: ``x_0`` and
    ``concat_cond`` `SparseTensor`s on the same coords, ``cond`` (B, 3, S, S).
    """

    roles = ("shape_latent", "pbr_latent", "render_cond")
    flags = ("pbr_latent_encoded", "shape_latent_encoded", "cond_rendered")
    load_column = "pbr_latent_tokens"

    def __init__(self, roots: Roots, resolution: int = 512, max_tokens: Optional[int] = 32768,
                 min_aesthetic_score: Optional[float] = None, image_size: int = 512,
                 pbr_slat_normalization: Optional[Mapping] = None, shape_slat_normalization: Optional[Mapping] = None,
                 full_pbr: bool = False, shape_encoder_name: str = layout.DEFAULT_SHAPE_ENCODER,
                 pbr_encoder_name: str = layout.DEFAULT_PBR_ENCODER, seed: int = 0, **extra) -> None:
        _check_extra_args(type(self).__name__, extra)
        self._check_image_size(image_size)
        self.resolution, self.image_size = int(resolution), image_size
        self.pbr_normalization = _normalization(pbr_slat_normalization, "pbr_slat_normalization")
        self.shape_normalization = _normalization(shape_slat_normalization, "shape_slat_normalization")
        roles = {"shape_latent": layout.shape_latents_dir(shape_encoder_name, resolution),
                 "pbr_latent": layout.pbr_latents_dir(pbr_encoder_name, resolution),
                 "render_cond": layout.RENDERS_COND}
        required = [("num_basecolor_tex", 0), ("num_metallic_tex", 0), ("num_roughness_tex", 0)] if full_pbr else []
        _ToolkitDataset.__init__(self, roots, roles, {"pbr_latent_tokens": max_tokens}, min_aesthetic_score,
                                 require_columns=required, seed=seed)

    def get_instance(self, instance: Instance, index: int) -> dict:
        coords, x0 = self._latent(instance, "pbr_latent", self.pbr_normalization)
        shape_coords, concat = self._latent(instance, "shape_latent", self.shape_normalization)
        if not torch.equal(coords, shape_coords):
            raise ValueError(f"{instance.sha256}: PBR and shape latents have different coordinates")
        return {"coords": coords, "x_0": x0, "concat_cond": concat, "cond": self._cond(instance, index)}

    @staticmethod
    def _collate_pack(batch: Sequence[dict]) -> dict:
        x0 = _sparse([s["coords"] for s in batch], [s["x_0"] for s in batch])
        return {"x_0": x0, "concat_cond": x0.replace(torch.cat([s["concat_cond"] for s in batch])),
                "cond": torch.stack([s["cond"] for s in batch])}


DATASET_CLASSES: Dict[str, type] = {
    "FlexiDualGridDataset": FlexiDualGridDataset,
    "SparseVoxelPbrDataset": SparseVoxelPbrDataset,
    "ImageConditionedSparseStructureLatent": ImageConditionedSparseStructureLatent,
    "ImageConditionedSLatShape": ImageConditionedSLatShape,
    "ImageConditionedSLatPbr": ImageConditionedSLatPbr,
}
"""The experiment JSON's ``dataset.name`` -> class (the one place where that string becomes a class)."""
