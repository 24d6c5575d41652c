"""Mesh -> flexible dual grid against the reference's own outputs (issue 20).

../shared/reference/ovoxel/ holds, for a few dev assets, the exact inputs the reference's CPU converter received and
what it returned (its README says how they were made). Voxel set, voxel order and flags must be identical; dual
vertices are compared per voxel, in voxel units, and after the uint8 packing of spec ovoxel.md 1.4.

Targets of the issue, on every file: bit-equal on >= 99% of voxels, p99 <= 0.005 voxel, p99.9 <= 0.3 voxel, packed
bytes identical on >= 99.9%. The CPU paths reproduce the reference's float32 arithmetic and are held to exact
equality; the CUDA run of the torch path is held to the issue's targets (its kernels run the same operations one
torch op at a time, so it is expected to be exact too, but that has to be shown on a GPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivox.ovoxel import Grid, mesh_to_dual_grid
from omnivox.ovoxel.packing import pack_geometry

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "ovoxel"
WEIGHTS = dict(face_weight=1.0, boundary_weight=0.2, regularization_weight=1e-2)  # the reference's call


def _entries() -> list[dict]:
    index = REFERENCE / "index.json"
    return json.loads(index.read_text()) if index.is_file() else []


def _ids() -> list[str]:
    return [e["file"] for e in _entries()] or ["<no reference data>"]


@pytest.fixture
def case(request):
    if not REFERENCE.is_dir():
        pytest.skip(f"reference outputs not found at {REFERENCE}")
    entry = next(e for e in _entries() if e["file"] == request.param)
    with np.load(REFERENCE / entry["file"]) as data:
        ref = {k: data[k] for k in data.files}
    return entry, ref


def parity(entry: dict, ref: dict, coords, dual, flags) -> dict:
    """Compare one conversion with the reference's; returns per-voxel dual vertex statistics."""
    coords, dual, flags = (x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
                           for x in (coords, dual, flags))
    assert len(coords) == entry["voxels"] == len(ref["coords"])
    # Same voxels in the same order, same flags.
    assert np.array_equal(coords, ref["coords"].astype(np.int32))
    assert np.array_equal(flags, ref["intersected"])
    grid = Grid.make(entry["resolution"])
    err = np.abs(dual - ref["dual_vertices"]).max(1) / grid.voxel_size.max()  # voxel units
    packed = pack_geometry(coords, dual, flags, grid)["vertices"]
    packed_ref = pack_geometry(ref["coords"], ref["dual_vertices"], ref["intersected"], grid)["vertices"]
    return {
        "bit_equal": float((dual == ref["dual_vertices"]).all(1).mean()),
        "p99": float(np.quantile(err, 0.99)),
        "p999": float(np.quantile(err, 0.999)),
        "max": float(err.max()),
        "packed_equal": float((packed == packed_ref).all(1).mean()),
    }


def assert_issue_targets(stats: dict) -> None:
    assert stats["bit_equal"] >= 0.99, stats
    assert stats["p99"] <= 0.005, stats
    assert stats["p999"] <= 0.3, stats
    assert stats["packed_equal"] >= 0.999, stats


def run(ref: dict, entry: dict, **kwargs):
    return mesh_to_dual_grid(ref["vertices"], ref["faces"], entry["resolution"], **WEIGHTS, **kwargs)


@pytest.mark.parametrize("case", _ids(), indirect=True)
def test_cpu_numba_equals_reference(case):
    entry, ref = case
    stats = parity(entry, ref, *run(ref, entry, backend="numba"))
    assert stats["bit_equal"] == 1.0 and stats["max"] == 0.0, stats


@pytest.mark.parametrize("case", _ids(), indirect=True)
def test_torch_on_cpu_equals_reference(case):
    entry, ref = case
    stats = parity(entry, ref, *run(ref, entry, backend="torch", device="cpu"))
    assert stats["bit_equal"] == 1.0 and stats["max"] == 0.0, stats


@pytest.mark.gpu
@pytest.mark.parametrize("case", _ids(), indirect=True)
def test_torch_on_cuda_meets_the_reference_targets(case):
    entry, ref = case
    v, f = torch.from_numpy(ref["vertices"]).cuda(), torch.from_numpy(ref["faces"].astype(np.int64)).cuda()
    out = mesh_to_dual_grid(v, f, entry["resolution"], **WEIGHTS)
    assert out[1].is_cuda
    stats = parity(entry, ref, *out)
    print(entry["file"], stats)  # shown with -s: the measured numbers for design.md
    assert_issue_targets(stats)


def test_a_one_ulp_change_is_detected():
    """The comparison itself can fail: perturbing one dual vertex by one ulp is seen (guards against vacuous
    passes, e.g. comparing an array with itself)."""
    entries = _entries()
    if not entries:
        pytest.skip(f"reference outputs not found at {REFERENCE}")
    entry = min(entries, key=lambda e: e["voxels"])
    with np.load(REFERENCE / entry["file"]) as data:
        ref = {k: data[k] for k in data.files}
    dual = ref["dual_vertices"].copy()
    dual[0, 0] = np.nextafter(dual[0, 0], np.float32(np.inf))
    stats = parity(entry, ref, ref["coords"].astype(np.int32), dual, ref["intersected"])
    assert stats["bit_equal"] == 1.0 - 1.0 / len(dual) and stats["max"] > 0


@pytest.mark.parametrize("case", ["stanford-bunny_256.npz" if "stanford-bunny_256.npz" in _ids() else _ids()[0]],
                         indirect=True)
def test_cpu_numba_parallel_kernels_equal_reference(case, monkeypatch):
    """Small meshes run the numba kernels on one thread; forcing the parallel versions (two-pass scan and face
    term, chunked solve on every thread) must not change a bit."""
    from omnivox.ovoxel import dual_grid

    monkeypatch.setattr(dual_grid, "PARALLEL_MIN_TRIANGLES", 0)
    monkeypatch.setattr(dual_grid, "PARALLEL_MIN_CROSSINGS", 0)
    entry, ref = case
    stats = parity(entry, ref, *run(ref, entry, backend="numba"))
    assert stats["bit_equal"] == 1.0 and stats["max"] == 0.0, stats
