"""Deprecated (kept for one release): the fused flow-block kernels moved to `omnivox.models.kernels.triton.block`
(their PyTorch references: `omnivox.models.kernels.reference`)."""

import warnings

from omnivox.models.kernels.triton.block import RMS_ROWS_PER_PROGRAM, gated_add, layer_norm, rms_norm_rope  # noqa: F401

warnings.warn("omnivox.models.triton_block moved to omnivox.models.kernels.triton.block", DeprecationWarning,
              stacklevel=2)
