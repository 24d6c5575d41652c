"""Package attributes that import their submodule on first use (PEP 562).

``import torch`` and ``import numba`` take one to several seconds, more on a cold disk. A package that re-exports
names from heavy submodules would make every ``import omnivox.<package>.<light module>`` pay for them (Python
runs the package's ``__init__`` first), so `omnivox info` on a header or an argument error of any command would
wait for torch. The packages list their public names here instead; ``from omnivox.ovoxel import
mesh_to_dual_grid`` works as before and imports ``omnivox.ovoxel.dual_grid`` at that moment.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple


def lazy_exports(package: str, namespace: dict, exports: Dict[str, str]) -> Tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in ``package.<exports[name]>``.

    ``namespace`` is the package's ``globals()``; a name, once imported, is stored there so later lookups are
    plain attribute reads.
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
