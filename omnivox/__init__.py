"""omnivox: TRELLIS.2 (native and compact structured latents for 3D generation) in Python + PyTorch.

Subpackages:
    ovoxel   -- the O-Voxel format: mesh <-> flexible dual grid, materials, files, export
"""

__version__ = "0.1.0"
