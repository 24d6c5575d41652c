"""Triton kernels of `omnivox.render` (imported only when the Triton backend runs)."""
