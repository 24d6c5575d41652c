"""Sparse voxel tensors and the operations the SC-VAEs and sparse flow transformers run on them."""
