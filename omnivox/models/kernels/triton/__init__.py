"""Triton kernels of the flow block (`block.py`); imported only when they run (CUDA, or TRITON_INTERPRET=1)."""
