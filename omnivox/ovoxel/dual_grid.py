"""Triangle mesh <-> flexible dual grid (the geometry half of O-Voxel).

Public, validated entry points. The arithmetic lives in ``kernels/``: ``scan_numba`` (CPU) and ``scan_torch``
(vectorized PyTorch, CUDA or CPU). Both reproduce the reference's float32 arithmetic, its Eigen QR solve included: on
the reference's own outputs (tests/ovoxel/test_reference_parity.py) both CPU paths give identical voxels, order, flags
and dual vertices, bit for bit (design.md, "Parity with the reference").

Decisions on the reference's quirks (spec ovoxel.md section 12), all tested in tests/ovoxel/test_dual_grid.py:

1. ``face_weight`` is an on/off switch in the reference (the weight is never applied). We keep that: any value > 0
   adds the unweighted face term, 0 disables it, so results match the reference for every caller.
2. The regulariser is scaled by the voxel's crossing count, as in the reference (matching its dual vertices).
5. Boundary edges are found by vertex index, as in the reference; ``weld=True`` merges coincident vertex positions
   first, so UV/normal seams of unwelded meshes do not count as boundaries.
6. Crossings are clipped asymmetrically at ``lo``/``hi`` and lattice lines on the box faces are never scanned, as in
   the reference: a mesh partly outside the box is clipped; surfaces lying exactly on the ``hi`` faces are lost. Keep
   meshes strictly inside (``omnivox.assets`` normalises with a 0.99999 margin).
7. Pin-holes from floating-point ties on shared triangle edges are reproduced (the same voxel set as the reference);
   the GLB exporter's hole filling closes them.
8. The defaults are the values every reference caller passes (1.0, 0.2, 1e-2), not its function-signature defaults.
9. ``aabb`` always has an explicit default (the unit box); there is no broken auto-fit.
15. Files store local dual vertices ``v / voxel_size - ijk`` (not ``v * G - ijk``), correct for any box.
"""

from __future__ import annotations

import threading
from typing import Union

import numpy as np
import torch

from omnivox._backend import NUMBA_BACKENDS, resolve_backend
from omnivox.ovoxel.grid import AABB, UNIT_AABB, Grid, Resolution
from omnivox.ovoxel.scan import Crossings, numba_threads, scan_triangles

ArrayLike = Union[np.ndarray, torch.Tensor]

# Upper bound on lattice-edge crossings, so a pathological input fails with a message instead of exhausting memory.
MAX_CROSSINGS = 400_000_000


def _as_numpy_mesh(vertices: ArrayLike, faces: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    v = vertices.detach().cpu().numpy() if isinstance(vertices, torch.Tensor) else np.asarray(vertices)
    f = faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
    return v, f


def validate_mesh(vertices: ArrayLike, faces: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check a triangle mesh and return it as (V,3) float32 and (F,3) int64 numpy arrays.

    Raises:
        ValueError: empty mesh, wrong shapes (e.g. quads), NaN/inf coordinates, or face indices out of range.
    """
    v, f = _as_numpy_mesh(vertices, faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {tuple(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3) (triangles only; triangulate first), got {tuple(f.shape)}")
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise ValueError(f"the mesh is empty ({v.shape[0]} vertices, {f.shape[0]} faces)")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must hold integer vertex indices, got dtype {f.dtype}")
    if not np.issubdtype(v.dtype, np.floating) and not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"vertices must be numeric, got dtype {v.dtype}")
    v32 = v.astype(np.float32)
    if not np.isfinite(v32).all():
        bad = int((~np.isfinite(v32).all(axis=1)).sum())
        raise ValueError(f"vertices contain NaN or infinite coordinates ({bad} of {v.shape[0]} vertices)")
    f64 = f.astype(np.int64)
    if f64.min() < 0 or f64.max() >= v.shape[0]:
        raise ValueError(
            f"face indices out of range: found [{f64.min()}, {f64.max()}] for {v.shape[0]} vertices"
        )
    return v32, f64


def weld_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with bit-identical positions; returns (unique vertices, remapped faces)."""
    unique, inverse = np.unique(vertices, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)[faces]


def boundary_edges(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Edges used by exactly one face, by vertex index, as (E,2) int64 rows (s < e) in ascending order."""
    from omnivox.ovoxel.kernels.scan_numba import boundary_edge_keys

    single = np.sort(boundary_edge_keys(np.ascontiguousarray(faces, dtype=np.int64), num_vertices))
    return np.stack([single // num_vertices, single % num_vertices], axis=1)


def _check_weights(face_weight: float, boundary_weight: float, regularization_weight: float) -> None:
    for name, value in (
        ("face_weight", face_weight),
        ("boundary_weight", boundary_weight),
        ("regularization_weight", regularization_weight),
    ):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def mesh_to_dual_grid(
    vertices: ArrayLike,
    faces: ArrayLike,
    resolution: Resolution,
    aabb: AABB = UNIT_AABB,
    face_weight: float = 1.0,
    boundary_weight: float = 0.2,
    regularization_weight: float = 1e-2,
    weld: bool = False,
    device: Union[str, torch.device, None] = None,
    backend: str = "auto",
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Convert a triangle mesh into a flexible dual grid (spec ovoxel.md section 2).

    Every lattice edge the surface crosses activates the 4 voxels around it; each active voxel gets one dual vertex
    (the minimiser, inside its voxel, of a quadric error built from the crossed triangle planes, the planes of the
    triangles overlapping it, the open boundary edges through it and a pull towards the mean crossing point) and 3
    flags saying whether the edge it owns along x, y and z is crossed.

    Args:
        vertices: (V, 3) float, world units. numpy array or torch tensor.
        faces: (F, 3) integer vertex indices.
        resolution: cells per axis, an int or 3 ints.
        aabb: ((lo_x, lo_y, lo_z), (hi_x, hi_y, hi_z)). Geometry outside it is clipped.
        face_weight: > 0 adds the face term, 0 disables it (the reference ignores the value otherwise).
        boundary_weight: weight of the open-boundary line term.
        regularization_weight: weight of the pull to the mean crossing point (scaled by the crossing count).
        weld: merge coincident vertex positions before finding boundary edges.
        device: ``None`` picks the CPU (numba) path for numpy input and the tensor's device for torch input; a CUDA
            device runs the vectorized torch path on the GPU.
        backend: ``"auto"`` (numba on CPU, torch on GPU), ``"numba"`` (CPU only) or ``"torch"`` (any device). Both
            follow the reference's float32 arithmetic; on the CPU they agree bit for bit.

    Returns:
        coords: (N, 3) int32 voxel indices, in the reference's first-touch order.
        dual_vertices: (N, 3) float32 dual vertices in world units **relative to lo** (the reference's shifted frame);
            local coordinates in the voxel are ``dual_vertices / voxel_size - coords`` (see ``to_local``).
        intersected: (N, 3) bool, edge flags for the x, y and z edges owned by each voxel.
        The outputs are torch tensors (on the input's device, or ``device``) for torch input, numpy arrays otherwise.

    Raises:
        ValueError: empty mesh, NaN/inf coordinates, indices out of range, non-triangle faces, bad resolution or aabb,
            negative weights, or a mesh entirely outside the box.
    """
    is_torch = isinstance(vertices, torch.Tensor)
    target = torch.device(device) if device is not None else (vertices.device if is_torch else torch.device("cpu"))
    backend = resolve_backend(backend, NUMBA_BACKENDS, "numba", preferred=target.type == "cpu",
                              possible=target.type == "cpu", requirement=f"runs on the CPU only, but device is {target}")
    grid = Grid.make(resolution, aabb)
    _check_weights(face_weight, boundary_weight, regularization_weight)
    v, f = validate_mesh(vertices, faces)
    _check_overlaps_box(v, f, grid)

    if weld:  # merges bit-identical positions only: the triangles, and so the scan, stay the same
        v, f = weld_vertices(v, f)
    if backend == "numba":
        crossings = scan_triangles(shifted_triangles(v, f, grid), grid, threads=scan_threads(len(f)))
        coords, dual, flags = _dual_grid_numba(crossings, v, f, face_weight, boundary_weight, regularization_weight)
        if is_torch:
            return tuple(torch.from_numpy(x).to(target) for x in (coords, dual, flags))
        return coords, dual, flags

    coords, dual, flags = _dual_grid_torch(v, f, grid, target, face_weight, boundary_weight, regularization_weight)
    if is_torch:
        return coords, dual, flags
    return coords.cpu().numpy(), dual.cpu().numpy(), flags.cpu().numpy()


def shifted_triangles(vertices: np.ndarray, faces: np.ndarray, grid: Grid) -> np.ndarray:
    """(F, 3, 3) float32 triangles of a validated mesh (`validate_mesh`) in the shifted frame (world minus lo)."""
    return np.ascontiguousarray((vertices - grid.lo).astype(np.float32)[faces])


def dual_grid_from_crossings(
    crossings: Crossings,
    vertices: np.ndarray,
    faces: np.ndarray,
    face_weight: float = 1.0,
    boundary_weight: float = 0.2,
    regularization_weight: float = 1e-2,
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """`mesh_to_dual_grid` of a mesh already validated (`validate_mesh`, `_check_overlaps_box`) and scanned
    (`scan_triangles` of its `shifted_triangles`): the numba path for a numpy scan (numpy out), the torch path on
    the scan's device for a torch scan (tensors out). The same arithmetic, so the same bits, as `mesh_to_dual_grid`.
    """
    if crossings.on_torch:
        return _dual_grid_torch(vertices, faces, crossings.grid, crossings.tri.device, face_weight, boundary_weight,
                                regularization_weight, crossings)
    return _dual_grid_numba(crossings, vertices, faces, face_weight, boundary_weight, regularization_weight)


def _dual_grid_torch(v, f, grid, target, face_weight, boundary_weight, regularization_weight, crossings=None):
    from omnivox.ovoxel.kernels import scan_torch

    edges = boundary_edges(f, v.shape[0]) if boundary_weight > 0 else np.zeros((0, 2), np.int64)
    return scan_torch.mesh_to_dual_grid(
        torch.from_numpy(v).to(target), torch.from_numpy(f).to(target), torch.from_numpy(edges).to(target), grid,
        face_weight > 0, float(boundary_weight), float(regularization_weight), crossings,
    )


def _check_overlaps_box(v: np.ndarray, f: np.ndarray, grid: Grid) -> None:
    referenced = np.zeros(len(v), dtype=bool)
    referenced[f.reshape(-1)] = True
    used = v[referenced]
    lo, hi = used.min(axis=0), used.max(axis=0)
    if (hi < grid.lo).any() or (lo > grid.hi).any():
        raise ValueError(
            f"the mesh (bounds {lo.tolist()} .. {hi.tolist()}) lies entirely outside the grid box "
            f"{grid.lo.tolist()} .. {grid.hi.tolist()}; normalise it first (omnivox.assets normalises into the unit box)"
        )


# Below these sizes the numba kernels run on the calling thread alone. Waking the thread pool costs a fixed amount
# per parallel region (tens of ms on a 2-core machine whose other core is busy), more than the whole conversion of
# a small mesh takes on one core; above them the second core pays off (docs/benchmarks/geometry.md).
PARALLEL_MIN_TRIANGLES = 200_000
PARALLEL_MIN_CROSSINGS = 1_000_000


# Work arrays of the CPU path kept per thread between calls: a fresh multi-megabyte allocation costs a page fault
# per 4 KiB on first touch (reuse saved ~15% of a 130K-voxel conversion here). Arrays above the cap are not kept.
_WORK = threading.local()
_WORK_KEEP_MAX_VOXELS = 1 << 20  # ~75 MB of work arrays at most


def _work_arrays() -> tuple:
    work = getattr(_WORK, "arrays", None)
    if work is None:
        e = np.empty
        work = (e((0, 3), np.int32), e((0, 3), np.float32), e(0, np.float32), e(0, np.uint8), e((0, 10), np.float32),
                e(0, np.int32), e(0, np.int32))
    return work


def _keep_work_arrays(returned: tuple) -> None:
    old = _work_arrays()
    keep = tuple(r if len(r) > len(o) else o for r, o in zip(returned, old))
    if len(keep[0]) <= _WORK_KEEP_MAX_VOXELS:
        _WORK.arrays = keep


def scan_threads(num_triangles: int) -> int:
    """Threads for the numba scan of this many triangles (one below `PARALLEL_MIN_TRIANGLES`)."""
    import numba

    return numba.get_num_threads() if num_triangles >= PARALLEL_MIN_TRIANGLES else 1


def _dual_grid_numba(crossings, v, f, face_weight, boundary_weight, regularization_weight):
    import numba

    from omnivox.ovoxel.kernels import scan_numba as k

    grid = crossings.grid
    shifted = (v - grid.lo).astype(np.float32)
    triangles = crossings.triangles
    res, vs = grid.resolution, grid.voxel_size
    threads = numba.get_num_threads()
    tri, axis, owner, point = crossings.tri, crossings.axis, crossings.owner, crossings.point
    if tri.shape[0] > MAX_CROSSINGS:
        raise ValueError(f"the mesh crosses {tri.shape[0]} lattice edges at resolution {res.tolist()}; "
                         f"more than the supported {MAX_CROSSINGS}: lower the resolution")
    if tri.shape[0] == 0:
        return np.zeros((0, 3), np.int32), np.zeros((0, 3), np.float32), np.zeros((0, 3), bool)
    with numba_threads(threads if tri.shape[0] >= PARALLEL_MIN_CROSSINGS else 1):
        normals, quadrics = k.plane_quadrics(triangles)
        coords, psum, cnt, flags, Q, *index, work = k.accumulate_crossings(tri, axis, owner, point, quadrics,
                                                                          res, *_work_arrays())
        if face_weight > 0:
            k.face_term(triangles, normals, quadrics, vs, res, *index, Q, numba.get_num_threads() == 1)
        if boundary_weight > 0:
            edges = boundary_edges(f, v.shape[0])
            k.boundary_term(shifted, edges, boundary_weight, vs, res, *index, Q)
        dual = k.solve_dual_vertices(coords, psum, cnt, Q, regularization_weight, vs)
    intersected = ((flags[:, None] >> np.arange(3, dtype=np.uint8)) & 1).astype(bool)
    coords = coords.copy()  # the caller's own array, not a view of the work arrays
    _keep_work_arrays(work)
    return coords, dual, intersected


def to_local(coords: ArrayLike, dual_vertices: ArrayLike, voxel_size) -> ArrayLike:
    """Dual vertices in the shifted world frame -> local voxel coordinates ``v / voxel_size - coords`` in [0, 1]."""
    if isinstance(dual_vertices, torch.Tensor):
        vs = torch.as_tensor(np.asarray(voxel_size, np.float32), device=dual_vertices.device)
        return dual_vertices / vs - coords.to(dual_vertices.dtype)
    return dual_vertices / np.asarray(voxel_size, np.float32) - coords.astype(np.float32)
