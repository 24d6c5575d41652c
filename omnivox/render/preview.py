"""Deprecated: the previews moved to `omnivox.preview` (this module forwards to it for one release).

`omnivox.render` is pure rendering (cameras, rasterization, shading); the previews read O-Voxels and asset files,
which sit above it.
"""

from __future__ import annotations

import warnings


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    from omnivox import preview

    value = getattr(preview, name)  # AttributeError for names preview does not have
    warnings.warn(f"omnivox.render.preview is deprecated; use omnivox.preview.{name}", DeprecationWarning,
                  stacklevel=2)
    return value


def __dir__():
    from omnivox import preview

    return dir(preview)
