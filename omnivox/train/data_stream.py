"""The training batch stream: a resumable, rank-aware order over the dataset (spec training.md 1.10).

Order. Epoch ``e`` visits ``randperm(len(dataset))`` drawn from a generator seeded with ``seed + e``; the last
incomplete global batch is dropped. Global batch ``k`` is the permutation's slice ``[k*B, (k+1)*B)``; process
``r`` takes its share of it: the contiguous slice ``[r*b, (r+1)*b)``, or, when the dataset has per-sample
``loads`` (token counts), a greedy longest-processing-time partition into equal-size groups so every process
gets a similar token total (the reference's ``BalancedResumableSampler``). The process's share is then cut into
``batch_split`` micro-batches, in order, or balanced by load in the same greedy way.

Cursor. The state is ``(epoch, batches consumed in the epoch)`` and is advanced only when the trainer takes a
batch, never by a worker prefetching ahead. This fixes the reference's cursor, which counted prefetched batches
and so skipped data on resume (spec 1.14). Resuming rebuilds the loader at the saved cursor.

Collation. A dataset with ``collate_fn(samples, split_size)`` (the reference's signature) collates a process's
share itself and may return one dict (split here along dim 0) or a list of micro-batch dicts. Otherwise
`collate_samples` collates each micro-batch: tensors are stacked, per-sample `SparseTensor` values are packed
into one batch, numbers become tensors, anything else is listed.

Randomness inside ``__getitem__`` (e.g. picking a condition view) comes from the DataLoader worker's generator,
which is seeded from ``(seed, epoch, cursor)`` when a loader starts. A run resumed mid-epoch starts its loader
at another cursor, so such draws repeat exactly only with ``num_workers=0`` (the trainer checkpoints the
process's global RNG states) or when the dataset derives them from the sample index.
"""

from __future__ import annotations

import heapq
from typing import Optional, Sequence

import torch

from omnivox.sparse.tensor import SparseTensor


def balanced_groups(indices: Sequence[int], loads: Sequence[float], num_groups: int) -> list:
    """Split ``indices`` into ``num_groups`` equal-size groups with similar total load (greedy LPT).

    Items are taken heaviest first and each goes to the lightest group that still has room, so the largest
    group total exceeds the mean by at most one item's load. Within a group the original order is kept.
    """
    if len(indices) % num_groups:
        raise ValueError(f"{len(indices)} items cannot be split into {num_groups} equal groups")
    size = len(indices) // num_groups
    order = sorted(range(len(indices)), key=lambda i: (-loads[indices[i]], i))
    heap = [(0.0, g) for g in range(num_groups)]
    members: list = [[] for _ in range(num_groups)]
    full = []
    for i in order:
        total, g = heapq.heappop(heap)
        members[g].append(i)
        if len(members[g]) < size:
            heapq.heappush(heap, (total + loads[indices[i]], g))
        else:
            full.append(g)
    return [[indices[i] for i in sorted(group)] for group in members]


def collate_samples(samples: Sequence[dict]) -> dict:
    """Collate dataset samples (dicts) into one batch dict; see the module docstring for the rules."""
    if not samples:
        raise ValueError("cannot collate an empty micro-batch")
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        first = values[0]
        if isinstance(first, SparseTensor):
            coords = [v.coords[:, 1:] for v in values]
            batch[key] = SparseTensor.from_batch_list(coords, [v.feats for v in values], scale=first.scale)
        elif isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = list(values)
    return batch


def split_batch(batch: dict, parts: int) -> list:
    """Split a collated dict along dim 0 into ``parts`` equal micro-batches (tensors and lists only)."""
    if parts == 1:
        return [batch]
    out = [dict() for _ in range(parts)]
    for key, value in batch.items():
        if isinstance(value, SparseTensor):
            raise ValueError(f"batch key {key!r} is a SparseTensor: sparse datasets must collate micro-batches "
                             "themselves (collate_fn(samples, split_size) returning a list)")
        if isinstance(value, (torch.Tensor, list)):
            if len(value) % parts:
                raise ValueError(f"batch key {key!r} has {len(value)} rows, not divisible by {parts}")
            step = len(value) // parts
            for j in range(parts):
                out[j][key] = value[j * step:(j + 1) * step]
        else:
            for j in range(parts):
                out[j][key] = value
    return out


class _Collate:
    """Picklable collate for the DataLoader: a process's share of a global batch -> micro-batch dicts."""

    def __init__(self, dataset, parts: int, loads: Optional[Sequence[float]]) -> None:
        self.dataset, self.parts, self.loads = dataset, parts, loads

    def __call__(self, items: list) -> list:
        indices = [index for index, _ in items]
        samples = [sample for _, sample in items]
        collate_fn = getattr(self.dataset, "collate_fn", None)
        if collate_fn is not None:
            result = collate_fn(samples, split_size=self.parts)
            micro = result if isinstance(result, list) else split_batch(result, self.parts)
            return micro
        if self.loads is not None and self.parts > 1:
            position = {index: i for i, index in enumerate(indices)}
            groups = balanced_groups(indices, self.loads, self.parts)
            return [collate_samples([samples[position[i]] for i in group]) for group in groups]
        step = len(samples) // self.parts
        return [collate_samples(samples[j * step:(j + 1) * step]) for j in range(self.parts)]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


class BatchStream:
    """Endless, resumable stream of this process's micro-batches.

    Args:
        dataset: a map-style dataset of samples; optional attributes ``loads`` (per-sample token counts) and
            ``collate_fn(samples, split_size)``.
        global_batch: samples per optimiser step over all processes.
        rank, world_size: this process and the number of processes.
        batch_split: micro-batches per step.
        seed: seed of the epoch permutations.
        num_workers: DataLoader workers.
        pin_memory: pin host batches (for CUDA training).
    """

    def __init__(self, dataset, global_batch: int, rank: int, world_size: int, batch_split: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        if len(dataset) < global_batch:
            raise ValueError(f"the dataset has {len(dataset)} samples, fewer than one global batch of "
                             f"{global_batch}")
        if global_batch % world_size or (global_batch // world_size) % batch_split:
            raise ValueError(f"global batch {global_batch} does not split into {world_size} processes x "
                             f"{batch_split} micro-batches")
        self.dataset, self.global_batch = dataset, global_batch
        self.rank, self.world_size, self.batch_split, self.seed = rank, world_size, batch_split, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        loads = getattr(dataset, "loads", None)
        self.loads = None if loads is None else [float(x) for x in loads]
        self.batches_per_epoch = len(dataset) // global_batch
        self.epoch, self.position = 0, 0
        self._iterator = None

    def epoch_order(self, epoch: int) -> list:
        """The dataset indices visited in ``epoch`` (all processes), in order."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def share(self, global_indices: list) -> list:
        """This process's part of one global batch."""
        if self.loads is not None and self.world_size > 1:
            return balanced_groups(global_indices, self.loads, self.world_size)[self.rank]
        per = len(global_indices) // self.world_size
        return global_indices[self.rank * per:(self.rank + 1) * per]

    def _start(self) -> None:
        order = self.epoch_order(self.epoch)
        batches = [self.share(order[k * self.global_batch:(k + 1) * self.global_batch])
                   for k in range(self.position, self.batches_per_epoch)]
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.position)) % 2**62)
        loader = torch.utils.data.DataLoader(
            _Indexed(self.dataset), batch_sampler=batches, num_workers=self.num_workers,
            collate_fn=_Collate(self.dataset, self.batch_split, self.loads), pin_memory=self.pin_memory,
            generator=generator, prefetch_factor=2 if self.num_workers else None,
            worker_init_fn=_seed_worker if self.num_workers else None)
        self._iterator = iter(loader)

    def next(self) -> list:
        """The next step's micro-batches (list of dicts, host memory); advances the cursor."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._start()
        micro = next(self._iterator)
        self.position += 1
        return micro

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None


def move_to_device(value, device: torch.device, non_blocking: bool = False):
    """Recursively move tensors, `SparseTensor`s, dicts and lists to ``device``."""
    if isinstance(value, (torch.Tensor, SparseTensor)):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, list):
        return [move_to_device(v, device, non_blocking) for v in value]
    return value


def first_samples_batch(dataset, count: int, device: torch.device) -> dict:
    """The first ``count`` samples of ``dataset`` as one batch on ``device`` (the trainers' snapshot inputs),
    collated by the dataset's ``collate_fn`` when it has one, else by `collate_samples`."""
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    collate = getattr(dataset, "collate_fn", None)
    return move_to_device(collate(samples) if collate is not None else collate_samples(samples), device)


def _seed_worker(worker_id: int) -> None:
    """Seed a loader worker's numpy and Python generators from its torch seed (which the loader derives from the
    stream's seeded generator), so datasets drawing from either are reproducible too."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
