"""Activation checkpointing of transformer blocks, and the elastic memory controller (spec training.md 1.9).

`set_checkpointed_blocks(model, n)` makes the first ``n`` blocks of ``model.blocks`` recompute their
activations in the backward pass (``torch.utils.checkpoint``, non-reentrant), which is exact: outputs and
gradients are bit-identical to the plain run. Parameter names and the state dict do not change.

`LinearMemoryController` picks ``n`` per micro-batch from its token count. It models the peak memory of a
micro-batch as ``k * tokens * ratio + b`` (GiB), where ``ratio = 1 - n / num_blocks`` is the fraction of blocks
that keep their activations, refits ``(k, b)`` by least squares every ``update_every`` recorded micro-batches,
and then chooses the largest ratio whose prediction stays under ``target_ratio`` of the device memory.
Before the first fit it explores ratios in ``[0, max_ratio]``; ``max_ratio`` starts at ``max_mem_ratio_start``
and grows by 0.1 per refit. Decision: the reference checkpoints ``ceil((1 - r) * N) + 1`` blocks (one more than
asked, never fewer than one); here ``n = round((1 - r) * N)``, so ``r = 1`` checkpoints nothing and the ratio
reported is exactly the fraction kept. The policy and its fitted line are the same.
"""

from __future__ import annotations

import functools
import random
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(block: nn.Module, *args, **kwargs):
    return checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)


def set_checkpointed_blocks(model: nn.Module, count: int) -> int:
    """Checkpoint the first ``count`` of ``model.blocks`` (the rest run normally); returns the count used."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no 'blocks' ModuleList to checkpoint")
    count = max(0, min(int(count), len(blocks)))
    for i, block in enumerate(blocks):
        if i < count:
            # An instance attribute shadows the class's forward; nn.Module.__call__ (and its hooks) still run.
            block.forward = functools.partial(_checkpointed_forward, block)
        elif "forward" in block.__dict__:
            del block.forward
    return count


class LinearMemoryController:
    """Choose how many blocks to checkpoint so the predicted peak memory meets a budget.

    Args:
        num_blocks: blocks in the model.
        target_ratio: fraction of the device memory to plan for.
        max_mem_ratio_start: initial cap on the kept-activation ratio.
        buffer_size: how many (peak, tokens, ratio) records the fit uses.
        update_every: refit period, in recorded micro-batches.
        available_memory: device memory in GiB (None: the CUDA device's total, or the host's 64 GiB guess).
        seed: seed of the exploration draws.
    """

    def __init__(self, num_blocks: int, target_ratio: float = 0.75, max_mem_ratio_start: float = 0.1,
                 buffer_size: int = 1000, update_every: int = 500, available_memory: Optional[float] = None,
                 seed: int = 0) -> None:
        self.num_blocks, self.target_ratio = num_blocks, target_ratio
        self.max_ratio = min(1.0, max_mem_ratio_start)
        self.update_every = update_every
        self.available = available_memory
        self.k, self.b = 0.0, 0.0
        self.records: list = []
        self.buffer_size = buffer_size
        self._since_update = 0
        self._random = random.Random(seed)

    def ratio_for(self, tokens: int) -> float:
        """Kept-activation ratio for a micro-batch of ``tokens`` tokens."""
        if self.k <= 0:
            return self._random.uniform(0.0, self.max_ratio)
        available = self.available if self.available is not None else _device_memory_gib()
        ratio = (available * self.target_ratio - self.b) / (self.k * max(tokens, 1))
        return float(min(max(ratio, 0.0), self.max_ratio))

    def blocks_to_checkpoint(self, ratio: float) -> int:
        return round((1.0 - ratio) * self.num_blocks)

    def record(self, peak_gib: float, tokens: int, checkpointed: int) -> None:
        """Add one measured micro-batch; refit every ``update_every`` records."""
        kept = 1.0 - checkpointed / self.num_blocks
        self.records = (self.records + [(peak_gib, tokens * kept)])[-self.buffer_size:]
        self._since_update += 1
        if self._since_update >= self.update_every and len(self.records) >= 2:
            self._since_update = 0
            self.max_ratio = min(1.0, self.max_ratio + 0.1)
            peaks, xs = np.array(self.records).T
            if np.ptp(xs) > 0:
                self.k, self.b = (float(v) for v in np.polyfit(xs, peaks, 1))

    def state_dict(self) -> dict:
        return {"k": self.k, "b": self.b, "max_ratio": self.max_ratio}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.b, self.max_ratio = float(state["k"]), float(state["b"]), float(state["max_ratio"])


def _device_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    return 64.0
