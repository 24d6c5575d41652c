"""The allowed import directions (docs/layout.md), checked on every import statement of `omnivox/`.

Module tops and function bodies alike: most cross-package imports are lazy (inside functions, to keep start-up
fast), so a check of module tops alone would miss most of the graph.
"""

import ast
from collections import defaultdict
from pathlib import Path

import omnivox

PACKAGE = Path(omnivox.__file__).resolve().parent

# package -> the omnivox packages it may import (docs/layout.md). "omnivox" is the root (__init__, _lazy): anyone.
ALLOWED = {
    "assets": set(),
    "sparse": set(),
    "ovoxel": {"assets"},
    "models": {"sparse"},
    "render": {"assets"},
    "pipelines": {"assets", "sparse", "ovoxel", "models"},
    "preview": {"assets", "ovoxel", "render"},
    "data": {"assets", "sparse", "ovoxel", "models", "render"},
    "demo": {"assets", "ovoxel", "render", "preview"},
    "app": {"assets", "sparse", "ovoxel", "models", "render", "pipelines", "preview"},
    "train": {"assets", "sparse", "ovoxel", "models", "render", "data"},
    "cli": {"assets", "sparse", "ovoxel", "models", "render", "pipelines", "preview", "data", "demo", "app",
            "train"},
}

# Deprecated modules that forward an old name to its new home for one release (and so may point up).
FORWARDERS = {"omnivox/render/preview.py": {"preview"}, "omnivox/models/cuda_graphs.py": {"pipelines"}}


def _package(module: str) -> str:
    """``omnivox.ovoxel.io.vxz`` -> ``ovoxel``; ``omnivox`` and ``omnivox._lazy`` -> ``omnivox``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1].startswith("_"):
        return "omnivox"
    return parts[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(code: str, module: str, is_package: bool = False):
    """Every omnivox module an ``import`` or ``from ... import`` anywhere in ``code`` (the source of ``module``)
    names, with its line."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from omnivox import preview` names the submodule, not the root package.
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "omnivox" else [base]
        else:
            continue
        for name in names:
            if name == "omnivox" or name.startswith("omnivox."):
                yield name, node.lineno


def _edges():
    edges = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _package(_module_name(path))
        for name, line in _imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py"):
            target = _package(name)
            if target not in (source, "omnivox"):
                edges[(source, target)].append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return edges


def test_every_package_is_in_the_table():
    on_disk = {_package(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {"omnivox"}
    assert on_disk == set(ALLOWED), "add the package to docs/layout.md and ALLOWED"


def test_imports_point_only_down_the_allowed_arrows():
    wrong = []
    for (source, target), places in sorted(_edges().items()):
        if target in ALLOWED[source]:
            continue
        places = [p for p in places if target not in FORWARDERS.get(p.rsplit(":", 1)[0], set())]
        if places:
            wrong.append(f"{source} -> {target}: {', '.join(places)}")
    assert not wrong, "imports against docs/layout.md:\n" + "\n".join(wrong)


def test_the_allowed_arrows_have_no_cycle():
    state = {}

    def visit(package, path):
        if state.get(package) == "open":
            raise AssertionError(f"cycle: {' -> '.join(path + [package])}")
        if state.get(package) == "done":
            return
        state[package] = "open"
        for target in sorted(ALLOWED[package]):
            visit(target, path + [package])
        state[package] = "done"

    for package in sorted(ALLOWED):
        visit(package, [])


def test_the_checker_sees_lazy_and_relative_imports():
    """The parser is what makes the other tests meaningful: an upward import inside a function is caught."""
    code = ("import omnivox.assets.frames\n"
            "def f():\n    from omnivox.pipelines import samplers\n    from omnivox import preview\n"
            "    from . import rasterize\n    from ..ovoxel.asset import OVoxel\n")
    names = [name for name, _ in _imported_modules(code, "omnivox.render.cameras")]
    assert names == ["omnivox.assets.frames", "omnivox.pipelines", "omnivox.preview", "omnivox.render",
                     "omnivox.ovoxel.asset"]
    assert [_package(n) for n in names] == ["assets", "pipelines", "preview", "render", "ovoxel"]
