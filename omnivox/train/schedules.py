"""Learning-rate schedules as pure functions of the step, and the flow time-step distributions.

A schedule here is a factor ``f(step)`` multiplied into the optimiser's base learning rate, recomputed from the
step before every optimiser step. Nothing is stateful, so a resumed run needs only the step to continue exactly.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch


def constant(step: int) -> float:
    return 1.0


def linear_warmup(warmup_steps: int) -> Callable[[int], float]:
    """The reference's ``LinearWarmupLRScheduler``: ``(step + 1) / warmup_steps`` until the warm-up ends, then 1."""
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be positive, got {warmup_steps}")
    return lambda step: min(1.0, (step + 1) / warmup_steps)


def warmup_cosine(warmup_steps: int, total_steps: int, final_factor: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up, then a cosine decay from 1 to ``final_factor`` at ``total_steps``."""
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_lr_schedule(spec: Optional[dict]) -> Callable[[int], float]:
    """The factor function a ``trainer.args.lr_scheduler`` value describes (None: constant)."""
    if spec is None:
        return constant
    args = spec.get("args", {})
    if spec["name"] == "LinearWarmupLRScheduler":
        return linear_warmup(**args)
    if spec["name"] == "CosineLRScheduler":
        return warmup_cosine(**args)
    raise ValueError(f"trainer.args.lr_scheduler.name {spec['name']!r} is unknown; use "
                     "'LinearWarmupLRScheduler' or 'CosineLRScheduler'")


# ------------------------------------------------------------------------------------ flow time steps
def sample_timesteps(schedule: dict, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """Draw ``n`` flow times ``t`` in ``[0, 1]`` (spec training.md 3.2); ``(n,) float32``.

    ``{"name": "uniform"}``: ``U(0, 1)``. ``{"name": "logitNormal", "args": {"mean": m, "std": s}}``:
    ``sigmoid(N(m, s^2))`` (the SS flow uses m = s = 1).
    """
    name, args = schedule["name"], schedule.get("args", {})
    device = device if device is not None else generator.device
    if name == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if name == "logitNormal":
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(z * float(args.get("std", 1.0)) + float(args.get("mean", 0.0)))
    raise ValueError(f"t_schedule name {name!r} is unknown; use 'uniform' or 'logitNormal'")
