"""omnivox: TRELLIS.2 (native and compact structured latents for 3D generation) in Python + PyTorch.

Subpackages, bottom floor first (a package imports only those below it: docs/layout.md, tests/test_layout.py):
    assets     Scene / Material / Texture and their loaders; axis frames, texture addressing
    sparse     sparse tensors, submanifold convolution, attention
    ovoxel     the O-Voxel format: mesh <-> flexible dual grid, materials, files, export; the `OVoxel` asset
    models     the TRELLIS.2 networks and strict checkpoint loading
    render     cameras, rasterization, G-buffers, PBR shading (pure rendering)
    pipelines  samplers, `ImageTo3DPipeline`, `TexturingPipeline`
    preview    PBR panels, grids and turntables of assets and O-Voxel files
    data       the data toolkit and the trainers' datasets
    app        the web app and service
    train      the trainers
    cli        the `omnivox` command
"""

import os as _os

__version__ = "0.1.0"

# numba caches compiled kernels beside their source by default, i.e. inside the installed package. A later
# `pip install -e .` removes the package but not those cache folders, which then shadow the editable install (every
# command failed with "No module named omnivox.ovoxel.io.compression" after the README's two set-up commands). A
# per-user cache outside the package avoids that and survives reinstalls. Set before any omnivox module imports
# numba; a caller's own NUMBA_CACHE_DIR wins.
_os.environ.setdefault("NUMBA_CACHE_DIR", _os.path.join(_os.environ.get("XDG_CACHE_HOME") or
                                                        _os.path.expanduser("~/.cache"), "omnivox", "numba"))
