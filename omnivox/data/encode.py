"""`encode`: O-Voxels -> shape / material latents with SC-VAE encoder checkpoints (spec training.md 4.2-8/9).

For resolution R and an encoder checkpoint ``.../NAME`` (``NAME.json`` + ``NAME.safetensors``, official
layout, loaded with `omnivox.models.from_pretrained`):

* shape: ``dual_grid_<R>/<sha>.vxz`` -> `FlexiDualGridVaeEncoder` -> posterior mean ->
  ``shape_latents/NAME_<R>/<sha>.npz`` (``feats`` float32 (L, C), ``coords`` uint8 (L, 3) on the R/16 grid);
  records ``shape_latent_encoded``, ``shape_latent_tokens``, ``shape_latent_error``;
* material: ``pbr_voxels_<R>/<sha>.vxz`` (``u8 / 255 * 2 - 1``) -> `SparseUnetVaeEncoder` ->
  ``pbr_latents/NAME_<R>/<sha>.npz``; records ``pbr_latent_encoded``, ``pbr_latent_tokens``,
  ``pbr_latent_error``.

Both latents of an asset come from the same voxels, so they share coordinates (the texture flow dataset
checks this). Non-finite inputs or outputs are recorded as failures, as the reference skips them. Assets are
encoded one at a time (no padding waste; the sparse engine handles any size); the encoders of one call run as
one stage (`LatentEncodings`), every model loaded once. On a CPU the checkpoint's fp16 blocks run in float32
(``use_fp16`` off); on CUDA as stored. With several devices, one process per device takes an independent share
of this rank's assets (`omnivox.data.runner.run_per_device`).

* sparse structure: ``dual_grid_<R>/<sha>.vxz`` -> 64^3 occupancy (voxel coordinates ``// (R / 64)``) ->
  `SparseStructureEncoder` -> posterior mean -> ``ss_latents/NAME_64/<sha>.npz['z']`` (float32 ``(8, 16, 16,
  16)``); records ``ss_latent_encoded``, ``ss_occupied_voxels``, ``ss_latent_error``. The reference builds the
  occupancy from the coordinates of the 1024 shape latents; those are the 1024 dual-grid voxels divided by 16,
  which is the same set, so no shape encoder is needed and any resolution that 64 divides works.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from omnivox.data import layout
from omnivox.data.convert import stage_status
from omnivox.data.datasets import read_geometry, read_pbr_features
from omnivox.data.metadata import RecordWriter
from omnivox.data.runner import (Outcome, StageSummary, Task, atomic_write, in_shard, remove_stale_temps,
                                 run_per_device, run_stage, temp_tag)

SHAPE_COLUMNS = ["sha256", "shape_latent_encoded", "shape_latent_tokens", "shape_latent_error"]
PBR_COLUMNS = ["sha256", "pbr_latent_encoded", "pbr_latent_tokens", "pbr_latent_error"]
SS_COLUMNS = ["sha256", "ss_latent_encoded", "ss_occupied_voxels", "ss_latent_error"]
SS_RESOLUTION = 64
# On a Ray cluster each encode actor declares one core and half a GPU by default (two share a GPU: one reads
# and decodes its .vxz on the CPU while the other runs the encoder).
RAY_GPUS_PER_TASK = 0.5

if TYPE_CHECKING:
    from omnivox.data.ray_runner import RayCluster


def checkpoint_name(path: Path) -> str:
    """``.../NAME`` / ``NAME.json`` / ``NAME.safetensors`` -> ``NAME`` (names the output folder)."""
    path = Path(path)
    return path.stem if path.suffix in (".json", ".safetensors") else path.name


def load_encoder(path: Path, device: torch.device):
    from omnivox.models import FlexiDualGridVaeEncoder, SparseStructureEncoder, SparseUnetVaeEncoder, from_pretrained

    overrides = {"use_fp16": False} if device.type == "cpu" else None
    model = from_pretrained(path, device=device, config_overrides=overrides)
    if not isinstance(model, (FlexiDualGridVaeEncoder, SparseUnetVaeEncoder, SparseStructureEncoder)):
        raise ValueError(f"{path}: expected an SC-VAE or sparse-structure encoder checkpoint, "
                         f"got {type(model).__name__}")
    return model


def _save_latent(path: Path, coords: np.ndarray, feats: np.ndarray, tag: str) -> None:
    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            np.savez(handle, feats=feats.astype(np.float32), coords=coords.astype(np.uint8))

    atomic_write(path, write, tag)


@torch.no_grad()
def encode_shape(encoder, vxz_path: Path, device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """Posterior mean of one shape O-Voxel: (coords (L, 3) int, feats (L, C) float32)."""
    from omnivox.sparse import SparseTensor

    coords, local, flags = read_geometry(vxz_path)
    vertices = SparseTensor.from_batch_list([coords.to(device)], [local.to(device)])
    intersected = vertices.replace(flags.to(device))
    mean = encoder(vertices, intersected).mean
    return mean.coords[:, 1:].cpu().numpy(), mean.feats.float().cpu().numpy()


@torch.no_grad()
def encode_pbr(encoder, vxz_path: Path, device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """Posterior mean of one material O-Voxel: (coords (L, 3) int, feats (L, C) float32)."""
    from omnivox.sparse import SparseTensor

    coords, feats = read_pbr_features(vxz_path)
    x = SparseTensor.from_batch_list([coords.to(device)], [feats.to(device)])
    mean = encoder(x).mean
    return mean.coords[:, 1:].cpu().numpy(), mean.feats.float().cpu().numpy()


@torch.no_grad()
def encode_sparse_structure(encoder, vxz_path: Path, resolution: int, device: torch.device) -> Tuple[int, np.ndarray]:
    """Posterior mean of the 64^3 occupancy of one shape O-Voxel: (occupied cells, z (8, 16, 16, 16) float32)."""
    from omnivox.models import occupancy_grid
    from omnivox.ovoxel.io import read_vxz

    coords, _ = read_vxz(vxz_path)
    cells = np.unique(coords.astype(np.int64) // (resolution // SS_RESOLUTION), axis=0)
    occupancy = occupancy_grid(torch.from_numpy(cells).to(device), SS_RESOLUTION)
    return len(cells), encoder(occupancy).mean[0].float().cpu().numpy()


def _save_dense_latent(path: Path, z: np.ndarray, tag: str) -> None:
    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            np.savez(handle, z=z.astype(np.float32))

    atomic_write(path, write, tag)


@dataclass
class LatentEncoding:
    """The per-asset work of one encoder over one folder: ``work(task) -> Outcome`` for `run_stage`.

    Picklable (sent to Ray actors before the model is loaded); `load` reads the checkpoint once, on the
    process that encodes, and a pickled copy never carries the loaded model.
    """

    kind: str  # "shape", "pbr" or "ss"
    checkpoint: str
    root: str
    resolution: int
    source: str  # input folder under the root
    out: str  # output folder under the root
    flag: str
    tokens: str
    error_column: str
    device: str
    tag: str  # temp-file owner (`temp_tag`)
    encoder: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "encoder": None}

    def load(self) -> None:
        if self.encoder is None:
            self.encoder = load_encoder(Path(self.checkpoint), torch.device(self.device))

    def __call__(self, task: Task) -> Outcome:
        self.load()
        device = torch.device(self.device)
        root = Path(self.root)
        source = root / self.source / f"{task.key}.vxz"
        target = root / self.out / f"{task.key}.npz"
        if self.kind == "ss":
            cells, z = encode_sparse_structure(self.encoder, source, self.resolution, device)
            if not np.isfinite(z).all():
                raise ValueError("the encoder produced non-finite latents")
            _save_dense_latent(target, z, self.tag)
            return Outcome(task.key, rows={self.out: {"sha256": task.key, self.flag: True, self.tokens: cells,
                                                      self.error_column: ""}})
        encode = encode_shape if self.kind == "shape" else encode_pbr
        coords, feats = encode(self.encoder, source, device)
        if not np.isfinite(feats).all():
            raise ValueError("the encoder produced non-finite latents")
        if coords.size and coords.max() > 255:
            raise ValueError(f"latent coordinate {coords.max()} does not fit uint8")
        _save_latent(target, coords, feats, self.tag)
        return Outcome(task.key, rows={self.out: {"sha256": task.key, self.flag: True, self.tokens: len(coords),
                                                  self.error_column: ""}})


@dataclass
class LatentEncodings:
    """Several encoders' per-asset work as one stage: each task's payload names the output folder of its encoder.

    One stage instead of one per encoder, so a Ray run starts one pool of actors (each holding every encoder)
    per command rather than one per encoder: an actor's start-up (a fresh process importing torch, initialising
    CUDA and loading the checkpoints, about 6 s on an H100 host: docs/benchmarks/data.md) dominated short runs.
    """

    encodings: Dict[str, LatentEncoding]  # output folder -> its encoder's work

    def load(self) -> None:
        for encoding in self.encodings.values():
            encoding.load()

    def __call__(self, task: Task) -> Outcome:
        return self.encodings[task.payload["out"]](task)


def run_encode(root: Path, resolution: int, shape_encoder: Optional[Path] = None, pbr_encoder: Optional[Path] = None,
               ss_encoder: Optional[Path] = None, rank: int = 0, world_size: int = 1, devices: Sequence[str] = ("cpu",),
               retry_failed: bool = False, progress: bool = True,
               device_slot: Tuple[int, int] = (0, 1), ray: Optional["RayCluster"] = None) -> StageSummary:
    """Encode this shard's converted assets; see the module docstring.

    Args:
        root: dataset root.
        resolution: O-Voxel resolution to read (``dual_grid_<R>`` / ``pbr_voxels_<R>``); R/16 must be <= 256.
        shape_encoder / pbr_encoder / ss_encoder: checkpoint paths (at least one); the sparse-structure
            latents need a resolution that 64 divides (the reference uses 1024).
        rank / world_size: this machine's shard.
        devices: one process per entry when several (e.g. ``["cuda:0", "cuda:1"]``).
        retry_failed: redo assets whose previous attempt failed.
        device_slot: internal (which share of the shard a per-device process takes).
        ray: encode on that Ray cluster instead (``devices`` unused): one pool of actors for every encoder of
            the call, each actor keeping them all loaded, one core and `RAY_GPUS_PER_TASK` GPU each unless the
            cluster options say otherwise (0 GPUs: on their CPU).
    """
    root = Path(root).resolve() if ray is not None else Path(root)  # workers on other nodes need absolute paths
    if shape_encoder is None and pbr_encoder is None and ss_encoder is None:
        raise ValueError("encode: give a shape, material or sparse-structure encoder (or several)")
    if ss_encoder is not None and resolution % SS_RESOLUTION:
        raise ValueError(f"encode: sparse-structure latents need a resolution that 64 divides, got {resolution}")
    if resolution % 16 or resolution // 16 > 256:
        raise ValueError(f"encode: resolution must be a multiple of 16 with R/16 <= 256, got {resolution}")
    kwargs = dict(root=root, resolution=resolution, shape_encoder=shape_encoder, pbr_encoder=pbr_encoder,
                  ss_encoder=ss_encoder, rank=rank, world_size=world_size, retry_failed=retry_failed, progress=progress)
    ray_stage = None
    if ray is not None:
        from omnivox.data.ray_runner import RayStage, TaskResources

        resources = ray.resources(TaskResources(num_cpus=1.0, num_gpus=RAY_GPUS_PER_TASK))
        ray_stage = RayStage(ray, resources, keep_work_loaded=True)
        devices = ["cuda" if resources.num_gpus else "cpu"]  # inside an actor, Ray's CUDA_VISIBLE_DEVICES picks it
        shape_encoder, pbr_encoder, ss_encoder = (None if path is None else Path(path).resolve()
                                                  for path in (shape_encoder, pbr_encoder, ss_encoder))
    elif len(devices) > 1:
        return run_per_device(run_encode, kwargs, list(devices))
    device = torch.device(devices[0])
    tag = temp_tag(rank, device_slot)

    jobs: List[Tuple[str, Path, str, str, list]] = []  # (kind, checkpoint, input folder, output folder, columns)
    if shape_encoder is not None:
        out = layout.shape_latents_dir(checkpoint_name(shape_encoder), resolution)
        jobs.append(("shape", Path(shape_encoder), layout.dual_grid_dir(resolution), out, SHAPE_COLUMNS))
    if pbr_encoder is not None:
        out = layout.pbr_latents_dir(checkpoint_name(pbr_encoder), resolution)
        jobs.append(("pbr", Path(pbr_encoder), layout.pbr_voxels_dir(resolution), out, PBR_COLUMNS))
    if ss_encoder is not None:
        out = layout.ss_latents_dir(checkpoint_name(ss_encoder), SS_RESOLUTION)
        jobs.append(("ss", Path(ss_encoder), layout.dual_grid_dir(resolution), out, SS_COLUMNS))

    summary = StageSummary()
    tasks: List[Task] = []
    encodings: Dict[str, LatentEncoding] = {}
    columns_of: Dict[str, list] = {}
    for kind, checkpoint, source, out, columns in jobs:
        flag, tokens, error_column = columns[1:]
        source_flag = "pbr_voxelized" if kind == "pbr" else "dual_grid_converted"
        source_error = "pbr_voxels_error" if kind == "pbr" else "dual_grid_error"
        available = [sha for sha, state in stage_status(root, source, source_flag, source_error, ".vxz").items()
                     if state == "done"]
        remove_stale_temps([root / out], tag)
        status = stage_status(root, out, flag, error_column, ".npz")
        job_tasks = []
        for sha in sorted(available):
            if not in_shard(sha, rank, world_size) or not in_shard(sha, *device_slot, salt="device"):
                continue
            summary.total += 1
            state = status.get(sha)
            if state == "done" or (state == "failed" and not retry_failed):
                summary.skipped += 1
                continue
            job_tasks.append(Task(sha, payload={"out": out}))
        if not job_tasks:
            continue
        tasks += job_tasks
        encodings[out] = LatentEncoding(kind, str(checkpoint), str(root), resolution, source, out, flag, tokens,
                                        error_column, str(device), tag)
        columns_of[out] = columns
    if not tasks:
        return summary
    # Every encoder's assets in one stage: in-process the models stay loaded and the device does the parallel
    # work; on Ray one pool of actors, each holding every encoder, serves them all.
    work = LatentEncodings(encodings)
    if ray_stage is None:
        work.load()  # a bad checkpoint stops the stage here instead of failing every asset
    writers = {out: RecordWriter(root / out, columns, rank) for out, columns in columns_of.items()}

    def failure_rows(task: Task, error: str) -> Dict[str, dict]:
        encoding = encodings[task.payload["out"]]
        return {encoding.out: {"sha256": task.key, encoding.flag: False, encoding.error_column: error}}

    if ray_stage is not None:
        checkpoints = {str(Path(encoding.checkpoint).parent) for encoding in encodings.values()}
        ray_stage = replace(ray_stage, must_see=[str(root), *sorted(checkpoints)])
    kinds = "+".join(encoding.kind for encoding in encodings.values())
    result = run_stage(tasks, work, writers, failure_rows, workers=0, desc=f"encode {kinds} {resolution}",
                       progress=progress, ray=ray_stage)
    summary.done += result.done
    summary.failed += result.failed
    return summary
