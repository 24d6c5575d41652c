"""A closed, manifold, outward-facing surface from the O-Voxel occupancy (game export's ``watertight`` option).

The occupancy is the set of active voxels, pooled onto at most ``WATERTIGHT_GRID`` cells per axis, with enclosed
empty space filled (a solid for printing and physics). Its boundary -- the cell faces between a solid and an empty
cell -- is a closed surface, but it pinches where two solid cells touch only along an edge or at a corner. A binary
volume without such "critical configurations" is *well-composed*, and the boundary of a well-composed volume is a
2-manifold (Latecki, "3D well-composed pictures", 1997); `make_well_composed` removes them by filling, which only
adds cells, so it ends. The boundary quads, split into triangles and wound from solid to empty, then form a closed,
manifold, consistently outward surface by construction. Taubin smoothing moves vertices without changing
connectivity, so the staircase softens and nothing else changes. Decimation to the face budget can break
manifoldness (edge collapses are not checked against the link condition), so the result is checked
(`closed_manifold_problems`); where collapses pressed two sheets together along edges, `split_pinches` cuts them
apart again; where that fails, slightly smaller budgets are tried (another collapse order), then the occupancy is
pooled onto fewer cells until the undecimated boundary fits the budget.
"""

from __future__ import annotations

import numpy as np

from omnivox.ovoxel import meshops
from omnivox.ovoxel.grid import Grid

WATERTIGHT_GRID = 256
# Cells per axis below which the grid is not coarsened any further (an error then asks for a larger budget).
MIN_WATERTIGHT_GRID = 8
TAUBIN_ITERATIONS = 10
# Shares of the face budget tried, in turn, before the solid is rebuilt on fewer cells.
DECIMATION_RETRIES = (1.0, 0.9, 0.8)


def solid_occupancy(coords, resolution, cells: int) -> np.ndarray:
    """(G0, G1, G2) bool: active voxels pooled onto ``min(cells, resolution)`` cells per axis, enclosed space
    filled, padded by one empty cell on every side."""
    from scipy import ndimage

    resolution = np.broadcast_to(np.asarray(resolution, dtype=np.int64), (3,))
    size = np.minimum(resolution, int(cells))
    c = np.asarray(coords, dtype=np.int64) * size // resolution
    grid = np.zeros(tuple(size + 2), dtype=bool)
    grid[c[:, 0] + 1, c[:, 1] + 1, c[:, 2] + 1] = True
    return ndimage.binary_fill_holes(grid)


def _fill_critical_squares(grid: np.ndarray) -> bool:
    """Fill every 2x2 square (in any axis plane) holding exactly two diagonal cells; whether any was."""
    changed = False
    for axis in range(3):
        a, b = [d for d in range(3) if d != axis]
        index = {}
        for da in (0, 1):
            for db in (0, 1):
                s = [slice(None)] * 3
                s[a] = slice(da, grid.shape[a] - 1 + da)
                s[b] = slice(db, grid.shape[b] - 1 + db)
                index[da, db] = tuple(s)
        p00, p11, p01, p10 = (grid[index[k]] for k in ((0, 0), (1, 1), (0, 1), (1, 0)))
        critical = (p00 & p11 & ~p01 & ~p10) | (p01 & p10 & ~p00 & ~p11)
        if critical.any():
            changed = True
            for key in index:
                grid[index[key]] |= critical
    return changed


def _fill_critical_cubes(grid: np.ndarray) -> bool:
    """Fill every 2x2x2 block whose cells (or empty cells) are exactly two opposite corners; whether any was."""
    views = {}
    for corner in np.ndindex(2, 2, 2):
        views[corner] = tuple(slice(d, n - 1 + d) for d, n in zip(corner, grid.shape))
    cells = {k: grid[v] for k, v in views.items()}
    count = sum(c.astype(np.uint8) for c in cells.values())
    critical = np.zeros_like(count, dtype=bool)
    for corner in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)):
        opposite = tuple(1 - d for d in corner)
        pair = cells[corner] & cells[opposite]
        neither = ~cells[corner] & ~cells[opposite]
        critical |= ((count == 2) & pair) | ((count == 6) & neither)
    if not critical.any():
        return False
    for view in views.values():
        grid[view] |= critical
    return True


def make_well_composed(grid: np.ndarray) -> np.ndarray:
    """A copy of the bool volume with cells added until no critical configuration is left (its boundary is then a
    2-manifold). The outer layer must be empty and stays so unless the volume touches it."""
    grid = grid.copy()
    while _fill_critical_squares(grid) | _fill_critical_cubes(grid):
        pass
    return grid


def boundary_surface(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell faces between solid and empty cells as triangles wound outwards (from solid to empty).

    Returns:
        vertices (V, 3) float64 in lattice units of ``grid`` (cell (i, j, k) spans i..i+1 per axis), faces (F, 3)
        int64.
    """
    shape = np.array(grid.shape)
    lattice = shape + 1
    quads = []
    for axis in range(3):
        b, c = (axis + 1) % 3, (axis + 2) % 3
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        here, there = grid[tuple(lo)], grid[tuple(hi)]
        for sign, mask in ((1, here & ~there), (-1, ~here & there)):
            cell = np.argwhere(mask)  # the face lies at lattice coordinate cell[axis] + 1
            base = cell.copy()
            base[:, axis] += 1
            corners = []
            for db, dc in ((0, 0), (1, 0), (1, 1), (0, 1)):  # counter-clockwise about +axis (b x c = axis)
                p = base.copy()
                p[:, b] += db
                p[:, c] += dc
                corners.append(p)
            if sign < 0:
                corners = corners[::-1]
            quads.append(np.stack(corners, axis=1))
    quads = np.concatenate(quads) if quads else np.zeros((0, 4, 3), np.int64)
    keys = (quads[..., 0] * lattice[1] + quads[..., 1]) * lattice[2] + quads[..., 2]
    unique, inverse = np.unique(keys.reshape(-1), return_inverse=True)
    quad_index = inverse.reshape(-1, 4)
    faces = np.concatenate([quad_index[:, [0, 1, 2]], quad_index[:, [0, 2, 3]]]).astype(np.int64)
    vertices = np.stack([unique // (lattice[1] * lattice[2]), (unique // lattice[2]) % lattice[1],
                         unique % lattice[2]], axis=1).astype(np.float64)
    return vertices, faces


def closed_manifold_problems(vertices: np.ndarray, faces: np.ndarray) -> dict:
    """Counts of what keeps a triangle mesh from being closed, manifold and consistently wound.

    Keys: ``boundary_edges`` (one face), ``non_manifold_edges`` (more than two), ``non_manifold_vertices`` (more
    than one fan of faces), ``inconsistent_edges`` (two faces running the same way), ``degenerate_faces``
    (repeated index or zero area). All zero means closed, manifold and oriented.
    """
    out = dict(boundary_edges=0, non_manifold_edges=0, non_manifold_vertices=0, inconsistent_edges=0,
               degenerate_faces=0)
    if len(faces) == 0:
        return out
    faces = np.asarray(faces, dtype=np.int64)
    order, edge_of, face_count = meshops.edge_table(faces)
    out["boundary_edges"] = int((face_count == 1).sum())
    out["non_manifold_edges"] = int((face_count > 2).sum())
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])
    area = meshops.face_areas(vertices, faces)
    scale = float(np.ptp(vertices, axis=0).max()) if len(vertices) else 1.0
    out["degenerate_faces"] = int((repeated | (area <= 1e-14 * max(scale, 1e-30) ** 2)).sum())
    # Pairs of half-edges on two-face edges.
    sorted_edges = edge_of[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_edges[1:] != sorted_edges[:-1]
    pair = np.flatnonzero(first & (face_count[sorted_edges] == 2))
    h1, h2 = order[pair], order[pair + 1]
    start = faces.reshape(-1)
    out["inconsistent_edges"] = int((start[h1] == start[h2]).sum())
    # Fans: corners (3f + c) around one vertex joined across each two-face edge they share.
    f1, c1, f2, c2 = h1 // 3, h1 % 3, h2 // 3, h2 % 3
    same = start[h1] == start[h2]
    # h1 runs a -> b; corner of a in f1 is c1 and of b is c1 + 1; in f2 the corner of a is c2 + 1 unless wound alike.
    a2 = np.where(same, 3 * f2 + c2, 3 * f2 + (c2 + 1) % 3)
    b2 = np.where(same, 3 * f2 + (c2 + 1) % 3, 3 * f2 + c2)
    links = np.concatenate([np.stack([3 * f1 + c1, a2], 1), np.stack([3 * f1 + (c1 + 1) % 3, b2], 1)])
    fan = meshops.connected_components(3 * len(faces), links)
    vertex_fans = np.unique(np.stack([start, fan], 1), axis=0)
    fans_per_vertex = np.bincount(vertex_fans[:, 0], minlength=int(faces.max()) + 1)
    out["non_manifold_vertices"] = int((fans_per_vertex > 1).sum())
    return out


def _pair_half_edges(vertices: np.ndarray, faces: np.ndarray, order: np.ndarray, edge_of: np.ndarray,
                     face_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) half-edge pairs that form the manifold edges after cutting: the two half-edges of every
    two-face edge, and around an edge with more faces each face paired with its neighbour across the solid behind
    it, where the geometry says so (so parts that touch along an edge separate, not cross)."""
    start = faces.reshape(-1)
    sorted_edges = edge_of[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_edges[1:] != sorted_edges[:-1]
    pair = np.flatnonzero(first & (face_count[sorted_edges] == 2))
    a_side, b_side = order[pair], order[pair + 1]
    forward, backward = [np.where(start[a_side] < start[b_side], a_side, b_side)], []
    backward.append(np.where(start[a_side] < start[b_side], b_side, a_side))
    v = np.asarray(vertices, dtype=np.float64)
    for group_start in np.flatnonzero(first & (face_count[sorted_edges] > 2)):
        half = order[group_start:group_start + face_count[sorted_edges[group_start]]]
        face, corner = half // 3, half % 3
        tail, head = faces[face, corner], faces[face, (corner + 1) % 3]
        low, high = np.minimum(tail, head)[0], np.maximum(tail, head)[0]
        axis = v[high] - v[low]
        axis /= max(np.linalg.norm(axis), 1e-300)
        wing = v[faces[face, (corner + 2) % 3]] - v[low]
        wing -= np.outer(wing @ axis, axis)
        reference = wing[0] / max(np.linalg.norm(wing[0]), 1e-300)
        angle = np.arctan2(wing @ np.cross(axis, reference), wing @ reference)
        normal = np.cross(v[faces[face, 1]] - v[faces[face, 0]], v[faces[face, 2]] - v[faces[face, 0]])
        turn = np.sign(np.einsum("ij,ij->i", normal, np.cross(axis, wing)))  # +1: outside lies at larger angles
        ring = np.argsort(angle)
        # Pair neighbours around the edge (pairs never cross): ring[2i + offset] with ring[2i + 1 + offset]. Of
        # the two offsets, take one whose pairs run opposite ways, preferring pairs that enclose solid between them
        # (as the two faces of an ordinary edge do), so each touching part keeps its own edge.
        best, best_score = None, -1
        for offset in (0, 1):
            left = ring[(np.arange(0, len(ring), 2) + offset) % len(ring)]
            right = ring[(np.arange(1, len(ring), 2) + offset) % len(ring)]
            if (tail[left] != head[right]).any():
                continue
            score = int((turn[left] < 0).sum() + (turn[right] > 0).sum())  # left's inside (solid) faces right
            if score > best_score:
                best, best_score = (left, right), score
        if best is None:
            raise ValueError("split_pinches: the faces around an edge do not alternate in direction")
        partner = np.empty(len(ring), np.int64)
        partner[best[0]], partner[best[1]] = best[1], best[0]
        is_forward = tail < head
        forward.append(half[is_forward])
        backward.append(half[partner[is_forward]])
    return np.concatenate(forward), np.concatenate(backward)


def split_pinches(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make a closed, consistently wound mesh manifold by cutting it where sheets touch.

    Half-edges are paired into edges (`_pair_half_edges`: around an edge with four or more faces, each face with
    its neighbour across the solid behind it), corners are joined only across those pairs, and every vertex gets
    one copy per fan of corners so joined. Each edge then has exactly two faces and each vertex one fan: a closed
    2-manifold with the same faces and winding. Copies of a split vertex move a thousandth of the median edge
    towards their own faces, so that a checker merging vertices by position does not pinch them together again.

    Returns the input unchanged when nothing is pinched; raises ValueError where the faces around an edge do not
    alternate in direction (the mesh is not consistently wound there).
    """
    faces = np.asarray(faces, dtype=np.int64)
    order, edge_of, face_count = meshops.edge_table(faces)
    if (face_count == 1).any():
        raise ValueError("split_pinches: the mesh has boundary edges")
    forward, backward = _pair_half_edges(vertices, faces, order, edge_of, face_count)
    start = faces.reshape(-1)
    f1, c1, f2, c2 = forward // 3, forward % 3, backward // 3, backward % 3  # forward runs a -> b, backward b -> a
    links = np.concatenate([np.stack([3 * f1 + c1, 3 * f2 + (c2 + 1) % 3], 1),
                            np.stack([3 * f1 + (c1 + 1) % 3, 3 * f2 + c2], 1)])
    fan = meshops.connected_components(3 * len(faces), links)  # corner -> fan, numbered from 0
    fan_vertex = np.zeros(int(fan.max()) + 1, np.int64)
    fan_vertex[fan] = start
    copies = np.bincount(fan_vertex, minlength=len(vertices))
    if len(fan_vertex) == len(np.unique(start)) and (copies <= 1).all():
        return vertices, faces  # nothing pinched
    new_vertices = np.asarray(vertices, dtype=np.float64)[fan_vertex]
    split = copies[fan_vertex] > 1
    centroid = new_vertices[fan.reshape(-1, 3)].mean(axis=1)
    toward = np.zeros_like(new_vertices)
    np.add.at(toward, fan, np.repeat(centroid, 3, axis=0))
    toward = toward / np.bincount(fan, minlength=len(new_vertices))[:, None] - new_vertices
    length = np.linalg.norm(toward, axis=1, keepdims=True)
    step = 1e-3 * meshops.median_edge_length(vertices, faces)
    new_vertices[split] += (toward / np.maximum(length, 1e-30) * step)[split]
    return new_vertices.astype(np.asarray(vertices).dtype), fan.reshape(-1, 3)


def _taubin(vertices: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Taubin lambda/mu smoothing with uniform weights (connectivity untouched, little shrinkage)."""
    import scipy.sparse as sp

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n = len(vertices)
    adjacency = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    degree = np.asarray(adjacency.sum(axis=1)).reshape(-1)
    average = sp.diags(1.0 / np.maximum(degree, 1)) @ adjacency
    v = vertices.copy()
    for _ in range(iterations):
        for weight in (0.5, -0.53):
            v = v + weight * (average @ v - v)
    return v


def watertight_surface(coords, grid: Grid, target_faces: int, cells: int = WATERTIGHT_GRID,
                       smoothing: int = TAUBIN_ITERATIONS) -> tuple[np.ndarray, np.ndarray, int]:
    """A closed, manifold, outward surface of the voxels' solid with at most about ``target_faces`` faces.

    Returns:
        vertices (V, 3) float32 world units, faces (F, 3) int64, and the cells per axis it was built on.

    Raises:
        ValueError: no voxels, or no closed manifold surface within the budget (a budget below a few dozen faces).
    """
    coords = np.asarray(coords, dtype=np.int64)
    if len(coords) == 0:
        raise ValueError("watertight: there are no voxels")
    resolution = np.asarray(grid.resolution, dtype=np.int64)
    size = int(min(int(cells), int(resolution.max())))
    while True:
        solid = make_well_composed(solid_occupancy(coords, resolution, size))
        lattice_v, faces = boundary_surface(solid)
        pooled = np.minimum(resolution, size)
        cell = (grid.hi - grid.lo).astype(np.float64) / pooled
        world = grid.lo.astype(np.float64) + (lattice_v - 1.0) * cell
        world = _taubin(world, faces, smoothing) if smoothing else world
        decimate = len(faces) > target_faces
        # Another target gives another collapse order: one of a few usually keeps the surface manifold.
        for share in (DECIMATION_RETRIES if decimate else (1.0,)):
            v, f = meshops.decimate(world, faces, int(target_faces * share)) if decimate else (world, faces)
            v, f = meshops.compact(v, f)
            problems = closed_manifold_problems(v, f)
            if (problems["non_manifold_edges"] or problems["non_manifold_vertices"]) and not (
                    problems["boundary_edges"] or problems["inconsistent_edges"] or problems["degenerate_faces"]):
                try:
                    v, f = split_pinches(v, f)  # collapses pressed two sheets together: cut them apart
                    problems = closed_manifold_problems(v, f)
                except ValueError:
                    pass  # not a clean touch of sheets: the next try or fewer cells
            if not any(problems.values()):
                return v.astype(np.float32), f, size
        if size <= MIN_WATERTIGHT_GRID:
            raise ValueError(f"watertight: no closed manifold surface of at most {target_faces} faces "
                             "(raise the face budget)")
        size = max(MIN_WATERTIGHT_GRID, size // 2)
