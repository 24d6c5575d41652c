"""Gradient clipping: a fixed norm, or the adaptive clipper of the reference (spec training.md 1.7).

`AdaptiveGradClipper` clips the total gradient norm at a threshold ``tau``. It starts at ``max_norm``; it keeps
the last ``buffer_size`` finite pre-clip norms, and once that buffer is full ``tau`` becomes
``min(percentile(buffer, clip_percentile), max_norm)``. Released configs: ``max_norm=1``, ``clip_percentile=95``.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import numpy as np
import torch


class AdaptiveGradClipper:
    """Clip at the running percentile of recent gradient norms, capped at ``max_norm``.

    Args:
        max_norm: upper bound of the threshold (None: unbounded until the buffer is full).
        clip_percentile: percentile of the buffered norms used as threshold once the buffer is full.
        buffer_size: how many recent finite norms to keep.
    """

    def __init__(self, max_norm: Optional[float] = None, clip_percentile: float = 95.0,
                 buffer_size: int = 1000) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        if not 0 <= clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in [0, 100], got {clip_percentile}")
        self.max_norm = max_norm
        self.clip_percentile = float(clip_percentile)
        self.buffer = np.zeros(buffer_size, dtype=np.float64)
        self.buffer_ptr = 0
        self.buffer_length = 0
        self.threshold = math.inf if max_norm is None else float(max_norm)

    def __call__(self, params: Iterable[torch.Tensor]) -> float:
        """Clip the gradients of ``params`` in place at the current threshold; return the pre-clip norm."""
        norm = float(torch.nn.utils.clip_grad_norm_(list(params), self.threshold))
        if math.isfinite(norm):
            self.buffer[self.buffer_ptr] = norm
            self.buffer_ptr = (self.buffer_ptr + 1) % len(self.buffer)
            self.buffer_length = min(self.buffer_length + 1, len(self.buffer))
            if self.buffer_length == len(self.buffer):
                cap = math.inf if self.max_norm is None else self.max_norm
                self.threshold = min(float(np.percentile(self.buffer, self.clip_percentile)), cap)
        return norm

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.tolist(), "buffer_ptr": self.buffer_ptr,
                "buffer_length": self.buffer_length, "threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        buffer = np.asarray(state["buffer"], dtype=np.float64)
        if buffer.shape != self.buffer.shape:
            raise ValueError(f"grad clipper buffer has {buffer.size} entries, expected {self.buffer.size}")
        self.buffer[:] = buffer
        self.buffer_ptr, self.buffer_length = int(state["buffer_ptr"]), int(state["buffer_length"])
        self.threshold = float(state["threshold"])


class NormClipper:
    """Plain clipping of the total gradient norm at ``max_norm`` (``grad_clip`` given as a number)."""

    def __init__(self, max_norm: float) -> None:
        self.threshold = float(max_norm)

    def __call__(self, params: Iterable[torch.Tensor]) -> float:
        return float(torch.nn.utils.clip_grad_norm_(list(params), self.threshold))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_grad_clipper(spec: Union[None, float, dict]):
    """The clipper a ``trainer.args.grad_clip`` value describes (None: no clipping)."""
    if spec is None:
        return None
    if isinstance(spec, (int, float)):
        return NormClipper(spec)
    if spec["name"] != "AdaptiveGradClipper":
        raise ValueError(f"trainer.args.grad_clip.name {spec['name']!r} is unknown; use a number or "
                         "'AdaptiveGradClipper'")
    return AdaptiveGradClipper(**spec.get("args", {}))
