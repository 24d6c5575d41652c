"""Mixed precision: bf16 / fp16 autocast, fp16 loss scaling, float32 master weights (spec training.md 1.6).

Modes (``trainer.args.mix_precision_mode`` and ``mix_precision_dtype``):

* ``"amp"``: parameters stay float32 and the forward pass runs under ``torch.autocast(dtype)``. Used by every
  flow config with bfloat16.
* ``"inflat_all"``: the model holds some parameters in a low-precision dtype (the VAEs' ``use_fp16`` blocks,
  or a flow model built with ``dtype="bfloat16"``). The optimiser owns a float32 *master* copy of each such
  parameter; after a successful step the masters are rounded back into the model. float32 parameters are
  their own masters (no copy).
* ``None``: plain float32.

Loss scaling (any mode with float16): the loss is multiplied by ``2 ** log_scale`` before backward (start 20).
If every gradient is finite the step is taken and ``log_scale += fp16_scale_growth`` (doubles every 1000 good
steps at 1e-3); otherwise the step is skipped and ``log_scale -= 1``. A ``log_scale`` below 0 means the run
diverged: `DivergenceError`, which the trainer turns into a final save and a stop (spec 1.6).

Decision: the reference uses ``torch.GradScaler`` for amp-fp16 and its own log-scale for inflat_all; here one
scaler serves both, so there is one rule, and its whole state (one float) is checkpointed as JSON. bfloat16 and
float32 never scale; non-finite gradients then only skip the step (with a warning).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional, Sequence

import torch

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class DivergenceError(RuntimeError):
    """The fp16 loss scale fell below 1 (log2 scale < 0): the run diverged."""


class MixedPrecision:
    """Autocast, loss scaling and master weights for one set of trainable parameters.

    Args:
        mode: ``"amp"``, ``"inflat_all"`` or None.
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        params: the model's trainable parameters, in a fixed order.
        device_type: ``"cuda"`` or ``"cpu"``, for autocast.
        scale_growth: log2 growth of the loss scale per good fp16 step.
    """

    def __init__(self, mode: Optional[str], dtype: str, params: Sequence[torch.nn.Parameter], device_type: str,
                 scale_growth: float = 1e-3, initial_log_scale: float = 20.0) -> None:
        if mode not in ("amp", "inflat_all", None):
            raise ValueError(f"mode must be 'amp', 'inflat_all' or None, got {mode!r}")
        self.mode, self.dtype, self.device_type = mode, _DTYPES[dtype], device_type
        self.params = list(params)
        self.scale_growth = float(scale_growth)
        self.use_scaling = mode is not None and self.dtype == torch.float16
        self.log_scale = float(initial_log_scale) if self.use_scaling else 0.0
        # float32 parameters are their own masters; others get a float32 copy owned by the optimiser.
        self.master_params = [p if p.dtype == torch.float32 else
                              torch.nn.Parameter(p.detach().float().clone()) for p in self.params]

    # ------------------------------------------------------------------------------------------ forward
    def autocast(self):
        """The context for the forward pass and loss."""
        if self.mode == "amp" and self.dtype != torch.float32:
            return torch.autocast(self.device_type, dtype=self.dtype)
        return contextlib.nullcontext()

    @property
    def loss_scale(self) -> float:
        return 2.0 ** self.log_scale if self.use_scaling else 1.0

    # ----------------------------------------------------------------------------------------- backward
    @torch.no_grad()
    def unscale_to_master(self) -> bool:
        """Divide the gradients by the loss scale into the masters' ``.grad``; True when all are finite."""
        inv = 1.0 / self.loss_scale
        flags = []
        for p, m in zip(self.params, self.master_params):
            if p.grad is None:
                m.grad = None
                continue
            if m is p:
                if inv != 1.0:
                    p.grad.mul_(inv)
            else:
                m.grad = p.grad.float().mul_(inv)
            flags.append(torch.isfinite(m.grad).all())
        return bool(torch.stack(flags).all()) if flags else True

    @torch.no_grad()
    def after_step(self, stepped: bool) -> None:
        """Round the masters back into the model (after a step) and update the loss scale."""
        if stepped:
            for p, m in zip(self.params, self.master_params):
                if m is not p:
                    p.copy_(m)
        if self.use_scaling:
            self.log_scale += self.scale_growth if stepped else -1.0
            if self.log_scale < 0:
                raise DivergenceError(f"fp16 loss scale fell to 2^{self.log_scale:.3f} < 1: the run diverged")
        elif not stepped:
            logger.warning("non-finite gradients: optimiser step skipped")

    def state_dict(self) -> dict:
        return {"log_scale": self.log_scale} if self.use_scaling else {}

    def load_state_dict(self, state: dict) -> None:
        if self.use_scaling and "log_scale" in state:
            value = float(state["log_scale"])
            if not math.isfinite(value):
                raise ValueError(f"log_scale {value} in the checkpoint is not finite")
            self.log_scale = value
