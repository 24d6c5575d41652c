"""Triton kernels of `omnivox.ovoxel` (imported only when the Triton backend runs)."""
