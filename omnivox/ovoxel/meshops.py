"""Triangle-mesh clean-up used before texturing an extracted O-Voxel surface.

The surface that comes out of the flexible dual grid (spec ovoxel.md section 3) has one vertex per voxel, triangle
winding fixed by the quad axis (half the triangles face inwards), duplicate faces where thin sheets collapse,
non-manifold edges where sheets touch, tiny pin-holes from floating-point ties and occasional specks. The functions
here turn it into a mesh a glTF viewer shows correctly. Each takes and returns plain numpy arrays:
``vertices (V, 3) float`` and ``faces (F, 3) int64``.

Decisions (spec section 7 step 3 and quirk 14):

* Orientation is propagated face to face through *manifold* edges only (edges with exactly two faces); a
  non-manifold edge is where two sheets meet and says nothing about which side is outside. Each connected part is
  then flipped so that its signed volume about its own centroid is positive. For a closed part this is exactly
  "normals point outwards". For an open part (a leaf, a cup) the same rule gives the side whose normals mostly point
  away from the part's centre, a heuristic; the exporter marks the material double-sided whenever open parts remain.
* Hole filling closes small boundary loops with a centroid fan like the reference, but each fan triangle runs
  against the boundary edge it closes, so the patch has the winding of its neighbours (the reference follows vertex
  index order instead).
* There is no remeshing step, so no hidden inner offset shell is ever created (the reference's narrow-band remesh
  leaves one inside every closed part).
"""

from __future__ import annotations

import warnings
from typing import Optional

import numba
import numpy as np

from omnivox.ovoxel.forked import call_in_fork, fork_available
from omnivox.ovoxel.kernels import meshops_numba


# ----------------------------------------------------------------------------------------------------- graph helpers


@numba.njit(cache=True)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving keeps the trees shallow
        i = parent[i]
    return i


@numba.njit(cache=True)
def _union_find_labels(num_nodes, a, b):
    parent = np.arange(num_nodes)
    for k in range(a.shape[0]):
        ra = _find(parent, a[k])
        rb = _find(parent, b[k])
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    for i in range(num_nodes):
        parent[i] = _find(parent, i)
    return parent


def connected_components(num_nodes: int, pairs: np.ndarray) -> np.ndarray:
    """Label connected components of an undirected graph.

    Args:
        num_nodes: number of nodes.
        pairs: (E, 2) int64 node pairs (edges).

    Returns:
        (num_nodes,) int64 labels numbered 0..K-1 in order of each component's smallest node.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    roots = _union_find_labels(num_nodes, pairs[:, 0].copy(), pairs[:, 1].copy())
    # Roots are only ever hooked under smaller roots, so each root is its component's smallest node: numbering the
    # roots in index order gives the labels without sorting (np.unique took 0.5 s per 2.7M nodes).
    is_root = roots == np.arange(num_nodes)
    return (np.cumsum(is_root) - 1)[roots]


def edge_table(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group the half-edges of a triangle mesh by undirected edge.

    Half-edge ``3 * f + c`` runs from ``faces[f, c]`` to ``faces[f, (c + 1) % 3]``.

    Args:
        faces: (F, 3) int64.

    Returns:
        order: (3F,) int64 half-edge ids sorted by undirected edge, so the half-edges of one edge are contiguous.
        edge_of: (3F,) int64 undirected edge id of each half-edge.
        face_count: (E,) int64 number of half-edges (faces) on each undirected edge.
    """
    faces = np.ascontiguousarray(faces, np.int64).reshape(-1, 3)
    return meshops_numba.edge_table(faces, int(faces.max()) + 1 if faces.size else 1)


def _as_kernel_input(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous float32/float64 vertices (other dtypes as float64) and int64 faces for the numba kernels."""
    dtype = vertices.dtype if vertices.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(vertices, dtype), np.ascontiguousarray(faces, np.int64).reshape(-1, 3)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) float64 triangle areas."""
    return meshops_numba.face_areas(*_as_kernel_input(vertices, faces))


def edge_lengths(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) float64 length of the edge from corner c to corner c + 1 of every face."""
    return meshops_numba.edge_lengths(*_as_kernel_input(vertices, faces))


def subset_edge_table(table: tuple, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``edge_table(faces[keep])`` from ``table = edge_table(faces)`` without sorting again (also after ``compact``,
    which renumbers vertices in order and so keeps every edge's rank).

    Args:
        table: (order, edge_of, face_count) of the whole mesh.
        keep: (F,) bool, the faces of the subset.
    """
    order, edge_of, face_count = table
    return meshops_numba.subset_edge_table(order, edge_of, face_count, np.ascontiguousarray(keep, bool))


def rewound_edge_table(table: tuple, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``edge_table`` of the faces after the ``flipped`` ones were re-wound ``[a, b, c] -> [a, c, b]`` (as
    ``orient_faces`` does), from ``table`` of the faces before: corner edge c of a flipped face is its old corner
    edge 2 - c, and the half-edges of one edge stay in face order."""
    order, edge_of, face_count = table
    return (*meshops_numba.rewound_edge_table(order, edge_of, np.ascontiguousarray(flipped, bool)), face_count)


def face_components(faces: np.ndarray, table: Optional[tuple] = None) -> np.ndarray:
    """(F,) int64 labels of face components connected through shared edges (manifold or not).

    ``table`` may pass the ``edge_table(faces)`` already computed.
    """
    if len(faces) == 0:
        return np.zeros(0, np.int64)
    order, edge_of, _ = edge_table(faces) if table is None else table
    return meshops_numba.face_components(len(faces), order, edge_of)


def compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses; returns (vertices, remapped faces)."""
    # Marking the used vertices gives np.unique's numbering (in index order) without sorting 3F indices.
    used, remapped = meshops_numba.compact_faces(len(vertices), np.ascontiguousarray(faces, np.int64).reshape(-1, 3))
    return vertices[used], remapped


# ------------------------------------------------------------------------------------------------------ clean-up


def remove_degenerate_faces(vertices: np.ndarray, faces: np.ndarray, min_area: float = 1e-24) -> np.ndarray:
    """Drop faces with a repeated vertex index or an area below ``min_area`` (world units squared)."""
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    return faces[distinct & (face_areas(vertices, faces) >= min_area)]


def remove_duplicate_faces(faces: np.ndarray) -> np.ndarray:
    """Keep the first of every set of faces on the same three vertices (either winding).

    Thin plates collapse to one sheet in the dual grid and can yield the same triangle twice with opposite windings;
    keeping both would z-fight and make orientation impossible.
    """
    if len(faces) == 0:
        return faces
    first = meshops_numba.first_of_duplicates(np.ascontiguousarray(faces, np.int64), int(faces.max()) + 1)
    return faces[first]


def consistently_wound(faces: np.ndarray, table: Optional[tuple] = None) -> bool:
    """Whether the two faces of every edge shared by exactly two faces run along it in opposite directions (one
    winding per sheet; which side is out is not checked). ``table`` may pass ``edge_table(faces)``."""
    if len(faces) == 0:
        return True
    order, edge_of, face_count = edge_table(faces) if table is None else table
    return meshops_numba.consistently_wound(np.ascontiguousarray(faces, np.int64), order, edge_of, face_count)


def remove_small_components(vertices: np.ndarray, faces: np.ndarray, min_area: float) -> np.ndarray:
    """Drop edge-connected face components whose total area is below ``min_area`` (world units squared)."""
    return faces[_in_large_components(vertices, faces, min_area)]


def _in_large_components(vertices: np.ndarray, faces: np.ndarray, min_area: float,
                         table: Optional[tuple] = None) -> np.ndarray:
    """(F,) bool: the faces of components with at least ``min_area`` in all; ``table`` may pass ``edge_table``."""
    if len(faces) == 0 or min_area <= 0:
        return np.ones(len(faces), bool)
    labels = face_components(faces, table)
    area = np.bincount(labels, weights=face_areas(vertices, faces))
    return area[labels] >= min_area


def remove_fringes(vertices: np.ndarray, faces: np.ndarray, width: float, rounds: int = 3,
                   table: Optional[tuple] = None) -> np.ndarray:
    """Drop thin open flaps that hang off non-manifold edges.

    Where two sheets of the input meet inside one voxel (a surface ending against another, e.g. an avocado's skin
    against its cut face) or a thin part pinches, the dual grid yields a fringe: a strip about one voxel wide (often
    a single sliver quad) attached to the rest along non-manifold edges and free along the other side. Such a strip
    leaves boundary edges on an otherwise closed surface (so the whole export would be double-sided) and splits it
    at the non-manifold edges (so its parts could not be oriented together). A *manifold part* (faces joined through
    edges with exactly two faces) is removed when it has a boundary edge, is attached along non-manifold edges at
    least half as long as its boundary (a strip hanging along its length, not a leaf attached at its base) and its
    area is at most ``width`` times its boundary length. Removing a part can expose a new fringe, hence a few rounds.

    After the first round only the parts that shared an edge with removed faces are looked at again: every other
    part keeps its faces and the face counts of its edges, so it is still no fringe (a triangle soup's 2.7M faces
    took three whole-mesh rounds for 4K fringe faces).

    Args:
        vertices: (V, 3) float.
        faces: (F, 3) int64.
        width: world units; about one voxel (the extracted surface's median edge length).
        rounds: passes at most.
        table: ``edge_table(faces)`` when already computed.

    Returns:
        (F,) bool, the faces to keep.
    """
    if len(faces) == 0:
        return np.ones(0, bool)
    order, edge_of, face_count = edge_table(faces) if table is None else table
    return meshops_numba.remove_fringes(order, edge_of, face_count, edge_lengths(vertices, faces),
                                        face_areas(vertices, faces), float(width), int(rounds))


def median_edge_length(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Median length of the faces' edges (0 for no faces)."""
    if len(faces) == 0:
        return 0.0
    return float(np.median(edge_lengths(vertices, faces)))


# ---------------------------------------------------------------------------------------------------- orientation


@numba.njit(cache=True)
def _propagate_flips(num_faces, adj_start, adj_face, adj_same):
    # Breadth-first walk over the manifold-edge adjacency; neighbours whose shared edge runs the same direction in
    # both faces need the opposite flip state. Conflicts (non-orientable parts) keep the first state reached.
    flip = np.full(num_faces, -1, np.int8)
    label = np.full(num_faces, -1, np.int64)
    queue = np.empty(num_faces, np.int64)
    next_label = 0
    for seed in range(num_faces):
        if flip[seed] >= 0:
            continue
        flip[seed] = 0
        label[seed] = next_label
        head = 0
        tail = 0
        queue[tail] = seed
        tail += 1
        while head < tail:
            f = queue[head]
            head += 1
            for k in range(adj_start[f], adj_start[f + 1]):
                g = adj_face[k]
                if flip[g] < 0:
                    flip[g] = flip[f] ^ adj_same[k]
                    label[g] = next_label
                    queue[tail] = g
                    tail += 1
        next_label += 1
    return flip, label


def _manifold_parts(faces: np.ndarray, order: np.ndarray, edge_of: np.ndarray, face_count: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Consistent winding through manifold edges: (F,) int8 flip per face and (F,) int64 part label."""
    adj_start, adj_face, adj_same = meshops_numba.manifold_adjacency(np.ascontiguousarray(faces, np.int64), order,
                                                                     edge_of, face_count)
    return _propagate_flips(len(faces), adj_start, adj_face, adj_same)


@numba.njit(cache=True)
def _balance_parts(num_parts, seeds, part_start, part_edge, part_sign, edge_start, edge_part):
    # Greedy sign per part so that, on every non-manifold edge, as many half-edges run one way as the other (what
    # a consistently wound closed surface has everywhere). Parts are visited breadth-first from the largest; each
    # takes the sign that leaves the smaller imbalance on the edges it shares with parts already placed.
    sign = np.zeros(num_parts, np.int8)
    balance = np.zeros(edge_start.shape[0] - 1, np.int64)
    queue = np.empty(num_parts, np.int64)
    for seed in seeds:
        if sign[seed] != 0:
            continue
        sign[seed] = 1
        for k in range(part_start[seed], part_start[seed + 1]):
            balance[part_edge[k]] += part_sign[k]
        head, tail = 0, 1
        queue[0] = seed
        while head < tail:
            p = queue[head]
            head += 1
            for k in range(part_start[p], part_start[p + 1]):
                e = part_edge[k]
                for m in range(edge_start[e], edge_start[e + 1]):
                    q = edge_part[m]
                    if sign[q] != 0:
                        continue
                    keep, swap = 0, 0
                    for j in range(part_start[q], part_start[q + 1]):
                        keep += abs(balance[part_edge[j]] + part_sign[j])
                        swap += abs(balance[part_edge[j]] - part_sign[j])
                    sign[q] = 1 if keep <= swap else -1
                    for j in range(part_start[q], part_start[q + 1]):
                        balance[part_edge[j]] += sign[q] * part_sign[j]
                    queue[tail] = q
                    tail += 1
    return sign


def _part_signs_across_non_manifold_edges(faces: np.ndarray, part: np.ndarray, edge_of: np.ndarray,
                                          face_count: np.ndarray, part_size: np.ndarray) -> np.ndarray:
    """(P,) int8 +-1: flip of each manifold part so that non-manifold edges are balanced (see ``_balance_parts``)."""
    num_parts = len(part_size)
    half_edges = np.nonzero(face_count[edge_of] >= 3)[0]
    if len(half_edges) == 0:
        return np.ones(num_parts, np.int8)
    start = faces.reshape(-1)[half_edges]
    end = faces.reshape(-1)[_next_corner(half_edges)]
    direction = np.where(start < end, 1, -1)
    he_part = part[half_edges // 3]
    num_edges = int(edge_of.max()) + 1
    keys, inverse = np.unique(he_part * num_edges + edge_of[half_edges], return_inverse=True)
    signs = np.bincount(inverse.reshape(-1), weights=direction).astype(np.int64)
    pe_part, pe_edge = keys // num_edges, keys % num_edges  # sorted by part, then edge
    part_start = np.zeros(num_parts + 1, np.int64)
    np.cumsum(np.bincount(pe_part, minlength=num_parts), out=part_start[1:])
    edges, pe_edge_dense = np.unique(pe_edge, return_inverse=True)
    pe_edge_dense = pe_edge_dense.reshape(-1)
    by_edge = np.argsort(pe_edge_dense, kind="stable")
    edge_start = np.zeros(len(edges) + 1, np.int64)
    np.cumsum(np.bincount(pe_edge_dense, minlength=len(edges)), out=edge_start[1:])
    seeds = np.argsort(-part_size, kind="stable")
    return _balance_parts(num_parts, seeds, part_start, pe_edge_dense, signs, edge_start, pe_part[by_edge])


def orient_faces(vertices: np.ndarray, faces: np.ndarray, table: Optional[tuple] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Make the winding consistent and outward-facing.

    1. Winding is propagated face to face through manifold edges (two faces), giving manifold *parts*.
    2. Parts that meet at non-manifold edges (three or more faces, where sheets touch) are flipped as wholes so that
       each such edge is walked equally often in both directions, which is what a consistently wound closed surface
       has everywhere (greedy, largest part first).
    3. Each edge-connected *component* is then turned so that its signed volume is positive. A component without
       boundary edges is closed and this is exactly "normals point out of the enclosed volume"; for an open
       component it is the heuristic "mostly away from its centroid" (the exporter marks such meshes double-sided).
    4. Closed components inside an odd number of other closed components face inwards (``nested_inside_odd``): the
       inner wall of a hollow object faces into its cavity.

    Args:
        vertices: (V, 3) float.
        faces: (F, 3) int64, any winding.
        table: ``edge_table(faces)`` when already computed.

    Returns:
        faces: (F, 3) int64 re-wound copy.
        closed: (F,) bool, True for faces of components that have no boundary edge (orientation is exact there).
    """
    if len(faces) == 0:
        return faces.copy(), np.zeros(0, bool)
    order, edge_of, face_count = edge_table(faces) if table is None else table
    flip, part = _manifold_parts(faces, order, edge_of, face_count)
    out = faces.copy()
    out[flip == 1] = out[flip == 1][:, [0, 2, 1]]
    part_sign = _part_signs_across_non_manifold_edges(out, part, edge_of, face_count,
                                                      np.bincount(part).astype(np.int64))
    reverse = part_sign[part] < 0
    out[reverse] = out[reverse][:, [0, 2, 1]]

    component = face_components(faces, (order, edge_of, face_count))
    num_components = int(component.max()) + 1
    # Signed volume of each component about its own centroid (independent of the origin for closed ones).
    v = vertices.astype(np.float64)
    volume = _component_volumes(v, out, component, num_components)
    open_face = (face_count[edge_of] == 1).reshape(-1, 3).any(axis=1)
    closed_component = np.bincount(component, weights=open_face, minlength=num_components) == 0
    inward = nested_inside_odd(v, out, component, closed_component)
    reverse = (volume[component] < 0) != inward[component]
    out[reverse] = out[reverse][:, [0, 2, 1]]
    return out, closed_component[component]


@numba.njit(cache=True)
def _component_volumes(vertices, faces, component, num_components):
    # Six times the signed volume of each component about its own centroid, in one pass per sum: the corner sums
    # and the triple products are added in face order, as numpy's bincount did (same sums, no (F, 3, 3) arrays).
    corner_sum = np.zeros((num_components, 3))
    count = np.zeros(num_components)
    for i in range(faces.shape[0]):
        k = component[i]
        count[k] += 1.0
        for d in range(3):
            corner_sum[k, d] += (vertices[faces[i, 0], d] + vertices[faces[i, 1], d]) + vertices[faces[i, 2], d]
    centre = corner_sum / (3.0 * count).reshape(-1, 1)
    volume = np.zeros(num_components)
    for i in range(faces.shape[0]):
        k = component[i]
        a0 = vertices[faces[i, 0], 0] - centre[k, 0]
        a1 = vertices[faces[i, 0], 1] - centre[k, 1]
        a2 = vertices[faces[i, 0], 2] - centre[k, 2]
        b0 = vertices[faces[i, 1], 0] - centre[k, 0]
        b1 = vertices[faces[i, 1], 1] - centre[k, 1]
        b2 = vertices[faces[i, 1], 2] - centre[k, 2]
        c0 = vertices[faces[i, 2], 0] - centre[k, 0]
        c1 = vertices[faces[i, 2], 1] - centre[k, 1]
        c2 = vertices[faces[i, 2], 2] - centre[k, 2]
        volume[k] += (a0 * (b1 * c2 - b2 * c1) + a1 * (b2 * c0 - b0 * c2)) + a2 * (b0 * c1 - b1 * c0)
    return volume


# Work limit of the nesting test (points x triangles), about ten seconds on two cores.
MAX_WINDING_TERMS = 5e8


def nested_inside_odd(vertices: np.ndarray, faces: np.ndarray, component: np.ndarray, closed: np.ndarray
                      ) -> np.ndarray:
    """Which closed components lie inside an odd number of other closed components (containment parity).

    A point of each closed component (its first face's centroid) is tested against every other closed component
    whose bounding box contains it, with the generalized winding number (|w| > 1/2 inside; exact for closed
    surfaces and independent of their winding). Components that touch or intersect each other get whatever their
    test point says. The work is bounded by ``MAX_WINDING_TERMS`` (smallest containers first); beyond it the
    remaining containers are skipped with a warning.

    Parity is right for walls with thickness: a ship in a bottle lies inside the glass's outer and inner surfaces
    (two), so it faces outwards while the bottle's inner surface faces its cavity. An object inside a single closed
    sheet (a zero-thickness box) counts as a cavity wall and faces inwards.

    Args:
        vertices: (V, 3) float.
        faces: (F, 3) int64.
        component: (F,) int64 labels 0..K-1.
        closed: (K,) bool, which components are closed (only these count, both as containers and as contained).

    Returns:
        (K,) bool, False for open components.
    """
    from omnivox.ovoxel.kernels.orient_numba import winding_numbers

    num_components = len(closed)
    inside = np.zeros(num_components, np.int64)
    candidates = np.nonzero(closed)[0]
    if len(candidates) < 2:
        return inside.astype(bool)
    v = np.ascontiguousarray(vertices, np.float64)
    # Only the closed components' faces, grouped by component (a decoder's noise can make tens of thousands of
    # open specks; boxes and test points of those are never used). Position i stands for component candidates[i].
    closed_faces = np.nonzero(closed[component])[0]
    by_component = closed_faces[np.argsort(component[closed_faces], kind="stable")]
    start = np.searchsorted(component[by_component], np.append(candidates, num_components))
    point = v[faces[by_component[start[:-1]]]].mean(axis=1)  # each one's first face (lowest index): centroid
    corners = v[faces[by_component]]  # (F_closed, 3, 3) in component order
    low = np.minimum.reduceat(corners.min(axis=1), start[:-1], axis=0)
    high = np.maximum.reduceat(corners.max(axis=1), start[:-1], axis=0)
    sizes = start[1:] - start[:-1]
    positions = np.arange(len(candidates))
    budget = MAX_WINDING_TERMS
    for container in positions[np.argsort(sizes, kind="stable")]:
        # Only parts whose whole box lies inside the container's box can be inside it.
        tested = positions[(positions != container) & (low > low[container]).all(axis=1)
                           & (high < high[container]).all(axis=1)]
        if len(tested) == 0:
            continue
        budget -= len(tested) * sizes[container]
        if budget < 0:
            warnings.warn(f"nesting test skipped for closed parts beyond {MAX_WINDING_TERMS:.0e} point-triangle "
                          "terms: some cavity walls may face outwards", RuntimeWarning, stacklevel=2)
            break
        triangles = np.ascontiguousarray(corners[start[container]:start[container + 1]])
        winding = winding_numbers(np.ascontiguousarray(point[tested]), triangles)
        inside[candidates[tested]] += np.abs(winding) > 0.5
    return inside % 2 == 1


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a triangle mesh (positive for a closed, outward-wound surface)."""
    v = vertices.astype(np.float64)
    return float(np.einsum("ij,ij->", v[faces[:, 0]], np.cross(v[faces[:, 1]], v[faces[:, 2]])) / 6.0)


# --------------------------------------------------------------------------------------------------- hole filling


def _next_corner(half_edges: np.ndarray) -> np.ndarray:
    """Half-edge ``3 * f + c`` -> ``3 * f + (c + 1) % 3``: where a half-edge ends in ``faces.reshape(-1)`` (gathers
    the few half-edges asked for instead of re-ordering all 3F corners first)."""
    corner = half_edges % 3
    return half_edges - corner + (corner + 1) % 3


def _boundary_half_edges(faces: np.ndarray, table: Optional[tuple] = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-edges on edges with one face: their ids (``3 * f + c``), start and end vertices, as their faces run."""
    _, edge_of, face_count = edge_table(faces) if table is None else table
    half_edges = np.nonzero(face_count[edge_of] == 1)[0]
    return half_edges, faces.reshape(-1)[half_edges], faces.reshape(-1)[_next_corner(half_edges)]


def fill_small_holes(vertices: np.ndarray, faces: np.ndarray, max_perimeter: float = 3e-2,
                     table: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray]:
    """Close boundary loops shorter than ``max_perimeter`` with a fan around their centroid (spec 7 step 1).

    A loop is a connected set of boundary edges (edges with one face) in which every vertex has exactly two boundary
    edges; boundaries that touch themselves are left open. Each fan triangle is ``(end, start, centre)`` for a
    boundary edge ``start -> end`` as its face traverses it, so the patch continues the neighbours' winding.

    Args:
        vertices: (V, 3) float.
        faces: (F, 3) int64.
        max_perimeter: loops with a total edge length below this (world units) are filled.
        table: ``edge_table(faces)`` when already computed.

    Returns:
        (vertices, faces) with one new vertex and one new face per boundary edge of every filled loop appended.
    """
    return fill_small_holes_with_openings(vertices, faces, max_perimeter, table)[:2]


def fill_small_holes_with_openings(vertices: np.ndarray, faces: np.ndarray, max_perimeter: float = 3e-2,
                                   table: Optional[tuple] = None
                                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``fill_small_holes`` and then ``opening_areas(..., return_faces=True)`` of its result, from one pass over
    the boundary: a filled loop is a whole piece of the boundary, so the openings left are the other pieces.

    Returns:
        (vertices, faces, opening area (K,) float64, a face on each opening's rim (K,) int64).
    """
    if len(faces) == 0:
        return vertices, faces, np.zeros(0), np.zeros(0, np.int64)
    boundary_he, start, end = _boundary_half_edges(faces, table)
    if len(start) == 0:
        return vertices, faces, np.zeros(0), np.zeros(0, np.int64)
    degree = np.bincount(np.concatenate([start, end]), minlength=len(vertices))
    loop_of_vertex = connected_components(len(vertices), np.stack([start, end], axis=1))
    loop = loop_of_vertex[start]
    num_loops = int(loop.max()) + 1
    length = np.linalg.norm(vertices[end].astype(np.float64) - vertices[start].astype(np.float64), axis=1)
    perimeter = np.bincount(loop, weights=length, minlength=num_loops)
    simple = np.bincount(loop, weights=(degree[start] != 2), minlength=num_loops) == 0
    edges_in_loop = np.bincount(loop, minlength=num_loops)  # labels of vertices off the boundary have none
    fill = simple & (edges_in_loop > 0) & (perimeter < max_perimeter)

    # Openings: the pieces not filled, numbered like opening_areas numbers them (by smallest vertex).
    opening = ~fill[loop]
    piece = np.unique(loop[opening], return_inverse=True)[1].reshape(-1)
    area, rim_face = _opening_fans(vertices, start[opening], end[opening], piece, boundary_he[opening])
    if not fill.any():
        return vertices, faces, area, rim_face

    chosen = fill[loop]
    filled_loops = np.nonzero(fill)[0]
    new_index = np.full(num_loops, -1, np.int64)
    new_index[filled_loops] = len(vertices) + np.arange(len(filled_loops))
    # On a simple loop every vertex starts exactly one boundary edge, so the mean of the starts is the centroid.
    centre_sum = np.zeros((num_loops, 3))
    np.add.at(centre_sum, loop[chosen], vertices[start[chosen]].astype(np.float64))
    centres = centre_sum[filled_loops] / edges_in_loop[filled_loops, None]
    fan = np.stack([end[chosen], start[chosen], new_index[loop[chosen]]], axis=1)
    return (np.concatenate([vertices, centres.astype(vertices.dtype)]),
            np.concatenate([faces, fan]).astype(np.int64, copy=False), area, rim_face)


def _opening_fans(vertices: np.ndarray, start: np.ndarray, end: np.ndarray, piece: np.ndarray,
                  boundary_he: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per boundary piece 0..K-1 of the boundary edges ``start -> end``: the area of the fan from its centroid and
    a face on its rim (``opening_areas``)."""
    if len(piece) == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    num = int(piece.max()) + 1
    v = vertices.astype(np.float64)
    centre = np.zeros((num, 3))
    np.add.at(centre, piece, v[start] + v[end])
    centre /= 2.0 * np.bincount(piece, minlength=num)[:, None]
    fan = np.zeros(num)
    np.add.at(fan, piece, 0.5 * np.linalg.norm(np.cross(v[start] - centre[piece], v[end] - centre[piece]), axis=1))
    rim_face = np.zeros(num, np.int64)
    rim_face[piece] = boundary_he // 3
    return fan, rim_face


def opening_areas(vertices: np.ndarray, faces: np.ndarray, return_faces: bool = False,
                  table: Optional[tuple] = None):
    """Area of every opening: per connected piece of boundary edges, the area of the fan from its centroid.

    A pin-hole or a zero-width slit (a boundary path folded back along itself, as the dual grid leaves next to
    non-manifold edges) has an area near zero and cannot be seen through; a real opening has about its true area.
    ``table`` may pass ``edge_table(faces)``.

    Returns:
        (K,) float64, one entry per connected set of boundary edges (empty for a closed mesh), and with
        ``return_faces`` also (K,) int64, a face on each opening's rim.
    """
    empty = (np.zeros(0), np.zeros(0, np.int64)) if return_faces else np.zeros(0)
    if len(faces) == 0:
        return empty
    boundary_he, start, end = _boundary_half_edges(faces, table)
    if len(boundary_he) == 0:
        return empty
    piece = connected_components(len(vertices), np.stack([start, end], axis=1))[start]
    piece = np.unique(piece, return_inverse=True)[1].reshape(-1)
    fan, rim_face = _opening_fans(vertices, start, end, piece, boundary_he)
    return (fan, rim_face) if return_faces else fan


def boundary_edge_count(faces: np.ndarray) -> int:
    """Number of undirected edges with exactly one face."""
    if len(faces) == 0:
        return 0
    _, _, face_count = edge_table(faces)
    return int((face_count == 1).sum())


# ----------------------------------------------------------------------------------------------------- decimation


DECIMATION_BATCH_FACES = 6_000_000
DECIMATION_FORK_FACES = 1_000_000


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int,
             batch_faces: int = DECIMATION_BATCH_FACES, fork_faces: int = DECIMATION_FORK_FACES,
             preserve_border: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to at most about ``target_faces`` faces (``fast-simplification``).

    Meshes already at or below the target are returned unchanged. The library keeps the input winding, so orient
    first. It holds about 340 bytes per input face, so a mesh of more than ``batch_faces`` faces is decimated in
    batches of whole connected components (no collapse crosses components anyway), each to its share of the
    target by face count. A single component larger than a batch is still decimated in one piece.

    The library also keeps that working memory for the rest of the process, so meshes of more than ``fork_faces``
    faces are decimated in a forked child process where the platform can fork (`omnivox.ovoxel.forked`).
    """
    for name, value in (("target_faces", target_faces), ("batch_faces", batch_faces), ("fork_faces", fork_faces)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if len(faces) <= target_faces:
        return vertices, faces
    if len(faces) > batch_faces:
        component = face_components(faces)
        if component.max() > 0:
            return _decimate_in_batches(vertices, faces, component, target_faces, batch_faces, fork_faces,
                                        preserve_border)
    workers = decimation_workers()
    if (len(faces) >= PARALLEL_DECIMATION_FACES and len(faces) >= 2 * target_faces  # blocks keep 1.15x: need room
            and workers >= MIN_DECIMATION_WORKERS and fork_available()):
        return _decimate_in_blocks(vertices, faces, target_faces, workers, preserve_border)
    args = (np.ascontiguousarray(vertices, dtype=np.float64), np.ascontiguousarray(faces, dtype=np.int64),
            int(target_faces), bool(preserve_border))
    result = None
    if len(faces) > fork_faces and fork_available():
        # The library never frees its working arrays; a child process gives them back when it exits.
        result, problem = call_in_fork(_simplify, args)
        if result is None:
            warnings.warn(f"decimation of {len(faces)} faces in a child process {problem}; retrying in this process",
                          RuntimeWarning, stacklevel=2)
    points, triangles = result if result is not None else _simplify(*args)
    return points.astype(vertices.dtype), triangles


# Deviation checks sample this many points on each surface; the largest surface measured against (a face
# budget's output) is capped so the check's search structure stays small.
DEVIATION_SAMPLES = 10_000
MAX_DEVIATION_REFERENCE_FACES = 2_000_000
DEVIATION_QUANTILE = 0.999


class _DeviationFrom:
    """Two-sided point-to-surface distances between one fixed surface and others (its samples and search
    structure are built once)."""

    def __init__(self, vertices, faces, samples: int, rng: np.random.Generator):
        from omnivox.ovoxel.metrics import SurfaceDistance, sample_surface

        self.samples, self.rng = samples, rng
        self.points, _ = sample_surface(vertices, faces, samples, rng)
        self.distance = SurfaceDistance(vertices, faces, samples, rng)

    def to(self, vertices, faces) -> np.ndarray:
        from omnivox.ovoxel.metrics import SurfaceDistance, sample_surface

        points, _ = sample_surface(vertices, faces, self.samples, self.rng)
        there, _ = SurfaceDistance(vertices, faces, self.samples, self.rng).query(self.points)
        back, _ = self.distance.query(points)
        return np.concatenate([there, back])


class _DeviationOnDevice:
    """`_DeviationFrom`'s interface with exact distances (every sample against every triangle) on a CUDA device, by the
    Triton kernel `kernels.triton.distance.point_triangle_distance`: milliseconds where the CPU's search structure
    takes a few tenths of a second per surface."""

    def __init__(self, vertices, faces, samples: int, rng: np.random.Generator, device):
        from omnivox.ovoxel.metrics import sample_surface

        import torch

        self.samples, self.rng, self.device = samples, rng, device
        points, _ = sample_surface(vertices, faces, samples, rng)
        self.points = torch.from_numpy(points).to(device)
        self.triangles = torch.from_numpy(np.asarray(vertices, np.float64)[faces]).to(device)

    def to(self, vertices, faces) -> np.ndarray:
        from omnivox.ovoxel.kernels.triton.distance import point_triangle_distance
        from omnivox.ovoxel.metrics import sample_surface

        import torch

        points, _ = sample_surface(vertices, faces, self.samples, self.rng)
        triangles = torch.from_numpy(np.asarray(vertices, np.float64)[faces]).to(self.device)
        there = point_triangle_distance(self.points, triangles)
        back = point_triangle_distance(torch.from_numpy(points).to(self.device), self.triangles)
        return torch.cat([there, back]).double().cpu().numpy()


def surface_deviation(vertices_a, faces_a, vertices_b, faces_b, samples: int = DEVIATION_SAMPLES,
                      rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Two-sided point-to-surface distances: ``samples`` area-uniform points of A to B, then of B to A."""
    rng = np.random.default_rng(0) if rng is None else rng
    return _DeviationFrom(vertices_a, faces_a, samples, rng).to(vertices_b, faces_b)


def decimate_within(vertices: np.ndarray, faces: np.ndarray, tolerance: float, min_faces: int = 64,
                    halve=None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """The fewest faces, among halvings of ``faces``, whose surface stays within ``tolerance`` of the input.

    "Within" means the 99.9th percentile of the two-sided point-to-surface distance (`surface_deviation`), so one
    stray sample does not decide. Each halving decimates the previous one (quadric collapses, `decimate`) and is
    measured against the input, so errors cannot pile up unseen; open borders stay where they are (a sheet keeps
    its outline); the search stops at the first halving that
    leaves the tolerance, or at ``min_faces``. A flat region collapses to a few triangles, a detailed one keeps
    what its detail needs: the face count follows the surface, not a fixed budget.

    Inputs of more than ``MAX_DEVIATION_REFERENCE_FACES`` faces are returned unchanged (decimate them to a budget
    first); so are inputs of ``min_faces`` or fewer. ``halve(vertices, faces, target)`` may replace the border-keeping
    `decimate` (the exporter passes the GPU's `collapse.decimate_in_rounds` on CUDA). On a CUDA ``device`` (a
    `torch.device`) the deviations are measured there, exactly, by the Triton distance kernel (`_DeviationOnDevice`);
    elsewhere through a search structure on the CPU.
    """
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite distance >= 0, got {tolerance!r}")
    if len(faces) <= min_faces or len(faces) > MAX_DEVIATION_REFERENCE_FACES:
        return vertices, faces
    if device is not None and device.type == "cuda":
        reference = _DeviationOnDevice(vertices, faces, DEVIATION_SAMPLES, np.random.default_rng(0), device)
    else:
        reference = _DeviationFrom(vertices, faces, DEVIATION_SAMPLES, np.random.default_rng(0))
    best = (vertices, faces)
    while len(best[1]) > min_faces:
        target = max(min_faces, len(best[1]) // 2)
        candidate = (decimate(best[0], best[1], target, preserve_border=True) if halve is None
                     else halve(best[0], best[1], target))
        if len(candidate[1]) >= len(best[1]) or len(candidate[1]) == 0:
            break  # the library could not reduce further
        if np.quantile(reference.to(*candidate), DEVIATION_QUANTILE) > tolerance:
            break
        best = candidate
    return best


def _simplify(points: np.ndarray, triangles: np.ndarray, target: int, preserve_border: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    import fast_simplification

    points, triangles = fast_simplification.simplify(points, triangles, target_count=target,
                                                     preserve_border=preserve_border)
    return points, np.asarray(triangles, dtype=np.int64)


# Meshes of at least this many faces are decimated in spatial blocks on several cores (`_decimate_in_blocks`).
PARALLEL_DECIMATION_FACES = 400_000
# Each block is decimated to this multiple of its part of the target, so that the final pass over the joined mesh
# has work left: it collapses the blocks' seams (kept at full detail while the blocks were apart) first, since their
# short edges cost least.
BLOCK_SHARE = 1.15
# Fewer cores than this decimate serially: the blocks' final pass costs more than two or three cores save.
MIN_DECIMATION_WORKERS = 4


def decimation_workers() -> int:
    """Cores this process may use for decimation (its CPU affinity where the platform says, else the CPU count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _morton_order(points: np.ndarray, bits: int = 10) -> np.ndarray:
    """Indices of ``points`` sorted along a Z-order curve over their bounding box (nearby points stay together)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    cells = ((points - lo) / np.maximum(hi - lo, 1e-30) * ((1 << bits) - 1)).astype(np.int64)
    code = np.zeros(len(points), np.int64)
    for bit in range(bits):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def _decimate_in_blocks(vertices: np.ndarray, faces: np.ndarray, target_faces: int, workers: int,
                        preserve_border: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decimation on several cores: spatially compact blocks (runs of faces along a Z-order curve of their
    centroids), each decimated in its own forked child with its cut edges kept in place, then joined by position
    and decimated once more as a whole to the target. The blocks do the bulk of the collapses in parallel; the
    final pass simplifies the seams between them and balances the blocks' shares.
    """
    from omnivox.ovoxel.forked import map_in_forks

    v64 = np.ascontiguousarray(vertices, dtype=np.float64)
    order = _morton_order(v64[faces].mean(axis=1))
    blocks = np.array_split(order, workers)
    jobs = []
    for block in blocks:
        v, f = compact(v64, faces[np.sort(block)])
        share = max(1, int(BLOCK_SHARE * target_faces * len(block) / len(faces)))
        jobs.append((v, f, share, True))  # the cut is a border: its vertices stay where they are
    out_vertices, out_faces, offset = [], [], 0
    for v, f in map_in_forks(_simplify, jobs, workers):
        out_vertices.append(v)
        out_faces.append(f + offset)
        offset += len(v)
    joined = np.concatenate(out_vertices)
    # The blocks' copies of a seam vertex kept its exact position: weld them by position.
    joined, inverse = np.unique(joined, axis=0, return_inverse=True)
    joined_faces = inverse.reshape(-1)[np.concatenate(out_faces)]
    points, triangles = (joined, joined_faces) if len(joined_faces) <= target_faces else _simplify(
        joined, joined_faces, int(target_faces), preserve_border)
    return points.astype(vertices.dtype), triangles


def _decimate_in_batches(vertices, faces, component, target_faces, batch_faces, fork_faces, preserve_border=False):
    order = np.argsort(component, kind="stable")
    sizes = np.bincount(component)
    # Components in label order; a batch closes once it holds batch_faces faces.
    batch_of_component = (np.cumsum(sizes) - sizes) // batch_faces
    batch_of_face = batch_of_component[component[order]]
    bounds = np.flatnonzero(np.diff(batch_of_face)) + 1
    out_vertices, out_faces, offset = [], [], 0
    for chunk in np.split(order, bounds):
        v, f = compact(vertices, faces[chunk])
        share = max(1, round(target_faces * len(chunk) / len(faces)))
        v, f = decimate(v, f, share, batch_faces=len(faces) + 1, fork_faces=fork_faces, preserve_border=preserve_border)
        out_vertices.append(v)
        out_faces.append(f + offset)
        offset += len(v)
    return np.concatenate(out_vertices), np.concatenate(out_faces)


def clean(vertices: np.ndarray, faces: np.ndarray, min_component_area: float, return_table: bool = False):
    """Degenerate and duplicate faces, then small components, then unused vertices are removed.

    Returns (vertices, faces), and with ``return_table`` also ``edge_table(faces)`` of the result (the component
    pass builds it anyway; the exporter's next passes use it).
    """
    faces = remove_degenerate_faces(vertices, faces)
    faces = remove_duplicate_faces(faces)
    table = edge_table(faces) if return_table else None
    keep = _in_large_components(vertices, faces, min_component_area, table)
    if not keep.all():
        faces = faces[keep]
        table = None if table is None else subset_edge_table(table, keep)
    vertices, faces = (vertices[:0], faces) if len(faces) == 0 else compact(vertices, faces)
    return (vertices, faces, table) if return_table else (vertices, faces)
