"""Every Triton kernels package keeps its PyTorch references beside it, with the launchers' signatures.

The rule of the code base (docs/layout.md, gsplat's pattern): a package with GPU kernels has ``kernels/reference.py``
holding ``NAME_reference`` functions, and each Triton launcher ``NAME`` (or ``NAME_triton``) in ``kernels/triton/``
takes the same arguments in the same order (plus tuning knobs with defaults), so the CPU path and the tests can
call either. The packages' own tests compare the values (``tests/sparse/kernels``,
``tests/models/test_block_kernels.py``, ``tests/models/test_flow_block_reference.py``,
``tests/models/test_quantize.py``, ``tests/render``, ``tests/ovoxel``); this test keeps the structure from rotting as
kernels are added.

``omnivox.ovoxel.kernels`` holds one Triton kernel with its reference (the point-triangle distance) and, beside them,
numba (CPU) and PyTorch (GPU) versions of whole conversion stages, which are checked against the reference
implementation's own outputs (``tests/ovoxel/test_reference_parity.py``) instead of against each other.
"""

import importlib
import inspect
import pkgutil

import pytest

pytest.importorskip("triton")

KERNEL_PACKAGES = (
    "omnivox.sparse.kernels", "omnivox.models.kernels", "omnivox.render.kernels", "omnivox.ovoxel.kernels")


def _public_functions(module):
    return {name: value for name, value in vars(module).items()
            if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_")}


def _launchers(package: str) -> dict:
    triton_package = importlib.import_module(f"{package}.triton")
    found = {}
    for info in pkgutil.iter_modules(triton_package.__path__):
        found.update(_public_functions(importlib.import_module(f"{package}.triton.{info.name}")))
    return found


@pytest.mark.parametrize("package", KERNEL_PACKAGES)
def test_each_launcher_has_a_same_signature_reference(package):
    references = {name[:-len("_reference")]: f for name, f in
                  _public_functions(importlib.import_module(f"{package}.reference")).items()
                  if name.endswith("_reference")}
    launchers = _launchers(package)
    pairs = 0
    for name, reference in references.items():
        launcher = launchers.get(name) or launchers.get(f"{name}_triton")
        if launcher is None:
            continue  # a reference that is itself the only path (e.g. the neighbour map), used on every device
        pairs += 1
        ours = list(inspect.signature(launcher).parameters.values())
        theirs = list(inspect.signature(reference).parameters.values())
        what = f"{launcher.__module__}.{launcher.__name__} vs {reference.__module__}.{reference.__name__}"
        # Same arguments in the same order (a launcher may take a richer object for one, as the sparse conv takes
        # the cached NeighborMap for its table), and extra launcher parameters are tuning knobs with defaults.
        assert len(ours) >= len(theirs), f"{what}: the launcher takes fewer arguments"
        assert [p.kind for p in ours[:len(theirs)]] == [p.kind for p in theirs], f"{what}: argument kinds differ"
        assert all(p.default is not inspect.Parameter.empty for p in ours[len(theirs):]), (
            f"{what}: extra launcher arguments need defaults")
        differing = [(a.name, b.name) for a, b in zip(ours, theirs) if a.name != b.name]
        assert len(differing) <= 1, f"{what}: argument names differ: {differing}"
    assert pairs >= 1, f"{package}: no launcher/reference pair found"
    # Launchers named after a reference-less op are helpers of a launcher (tiling, schedules), never a second path.
    orphans = [name for name in launchers if name.endswith("_triton")
               and name[:-len("_triton")] not in references and not _is_helper(launchers[name], launchers)]
    assert not orphans, f"{package}: Triton launchers without a PyTorch reference: {orphans}"


def _is_helper(function, launchers) -> bool:
    """Called by another launcher of the same module (an internal stage such as a weight-gradient pass)."""
    source = {name: inspect.getsource(f) for name, f in launchers.items() if f is not function}
    return any(f"{function.__name__}(" in text for text in source.values())
