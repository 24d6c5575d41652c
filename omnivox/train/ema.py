"""Exponential moving averages of the trainable weights (spec training.md 1.8).

For each rate ``rho``: ``ema <- rho * ema + (1 - rho) * w`` after every optimiser step (also after a step
skipped for non-finite gradients, as in the reference), with no bias correction and no warm-up. The averages
start from the weights the run starts from (fresh, fine-tuned or resumed). They are kept in float32 whatever
dtype the model runs in, and the released weights are the average.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


class EMA:
    """Float32 moving averages of a list of parameters, one copy per rate.

    Args:
        params: the (float32 master) parameters to average, in a fixed order.
        rates: the decay rates ``rho``, each in ``[0, 1)``.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> ema = EMA([p], [0.5])
        >>> with torch.no_grad():
        ...     _ = p.fill_(3.0)
        >>> ema.update([p]); ema.shadows[0.5][0].tolist()
        [2.0, 2.0]
    """

    def __init__(self, params: Sequence[torch.Tensor], rates: Iterable[float]) -> None:
        self.rates = [float(r) for r in rates]
        for rate in self.rates:
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.shadows = {rate: [p.detach().float().clone() for p in params] for rate in self.rates}

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor]) -> None:
        """One step of every average toward the current ``params``."""
        values = [p.detach().float() for p in params]
        for rate, shadow in self.shadows.items():
            # lerp_(w, 1 - rho) = ema + (1 - rho)(w - ema) = rho*ema + (1 - rho)*w
            torch._foreach_lerp_(shadow, values, 1.0 - rate)

    @torch.no_grad()
    def load(self, rate: float, tensors: Sequence[torch.Tensor]) -> None:
        """Replace the average of ``rate`` (same order and shapes as the parameters)."""
        shadow = self.shadows[rate]
        if len(tensors) != len(shadow):
            raise ValueError(f"EMA {rate}: {len(tensors)} tensors for {len(shadow)} parameters")
        for dst, src in zip(shadow, tensors):
            dst.copy_(src)
