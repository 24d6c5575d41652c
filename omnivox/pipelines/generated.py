"""Deprecated: the generated asset is `omnivox.ovoxel.asset.OVoxel` (this module's names stay for one release).

``Generated`` -> ``OVoxel``, ``ATTRIBUTE_NAMES`` -> ``PBR_ATTRIBUTES``, ``ATTRIBUTE_SLICES`` -> ``PBR_SLICES``;
``unoriented_mesh`` and ``orient_mesh`` moved unchanged.
"""

from __future__ import annotations

import warnings

_MOVED = {"Generated": "OVoxel", "ATTRIBUTE_NAMES": "PBR_ATTRIBUTES", "ATTRIBUTE_SLICES": "PBR_SLICES",
          "unoriented_mesh": "unoriented_mesh", "orient_mesh": "orient_mesh"}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from omnivox.ovoxel import asset

    warnings.warn(f"omnivox.pipelines.generated.{name} is deprecated; use omnivox.ovoxel.asset.{_MOVED[name]}",
                  DeprecationWarning, stacklevel=2)
    return getattr(asset, _MOVED[name])


def __dir__():
    return sorted(_MOVED)
