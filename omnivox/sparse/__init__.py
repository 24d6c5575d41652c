"""Sparse voxel tensors and the operations the SC-VAEs and sparse flow transformers run on them.

* `SparseTensor` (`tensor.py`): packed ``(N, 4) int32`` coordinates and ``(N, C)`` features.
* `functional` : submanifold 3x3x3 convolution, space-to-channel / channel-to-space, norms, activations.
* `attention`  : variable-length self/cross attention, 3-D RoPE, multi-head RMSNorm.
* `modules`    : ``nn.Module`` wrappers with checkpoint parameter layouts.
* `DownsampleMap`, `NeighborMap` (`maps.py`): explicit index maps.

Kernels (`kernels/`) are internal: PyTorch references that also serve as the CPU path, and Triton kernels
for CUDA, chosen by a ``backend=`` argument. Importing this package does not import Triton.
"""

from omnivox.sparse import attention, functional, modules
from omnivox.sparse.maps import DownsampleMap, NeighborMap
from omnivox.sparse.tensor import SparseTensor

__all__ = ["SparseTensor", "DownsampleMap", "NeighborMap", "functional", "attention", "modules"]
