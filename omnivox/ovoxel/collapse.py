"""Quadric edge-collapse decimation in rounds of independent collapses, in PyTorch (GPU, or the CPU).

`meshops.decimate` collapses one edge at a time, cheapest first (Garland-Heckbert quadrics, the
``fast-simplification`` library): the classic order, but sequential, on the CPU. An extracted 1024^3 surface of
millions of faces spends most of the export there. This module does the same kind of collapses in rounds, each
round a batch of whole-mesh tensor operations, so it runs on the GPU that just decoded the asset:

1. Per vertex, the sum of the area-weighted plane quadrics of its faces (summed again when vertices merge).
2. Per edge, the merged quadric's best position (a regularised 3x3 solve: the quadric's minimiser along the
   directions it constrains, the edge midpoint along the ones it does not, as on a flat patch) and its cost.
3. The cheapest candidates, as many as the collapses still needed, compete: an edge collapses when it is the cheapest
   candidate touching any vertex of its two endpoints' one-rings. No two chosen collapses then share a face, so
   they can be checked and applied at once. This keeps the greedy order locally, where it matters.
4. Each chosen collapse must keep the mesh a manifold (the endpoints share exactly the two opposite vertices) and
   must not turn any remaining face by more than ``MAX_NORMAL_TURN`` degrees (no fold-overs).
5. Survivors merge their endpoints; the two faces of each collapsed edge disappear.

Vertices on open borders and on non-manifold edges never move (the early decimation keeps borders so pin-holes
and fringes are still found afterwards), so a border is exactly where it was. Quadrics are float64 on every device.

The rounds approximate the sequential order; measured against it on real surfaces in
``tests/ovoxel/test_collapse.py`` (deviation from the input surface at the same face count).
"""

from __future__ import annotations

import math

import torch

# Each round lets the cheapest candidates compete, as many as the collapses still needed (at least
# MIN_CONSIDERED), as the sequential order would take next; the independent-set rule picks among them. When a round
# achieves less than SLOW_ROUND of what is needed (the cheap ones are refused), the pool grows 4x.
MIN_CONSIDERED = 1024
SLOW_ROUND = 0.02
# A collapse is refused if it would turn a neighbouring face's normal by more than this (fold-overs, slivers).
MAX_NORMAL_TURN = 60.0
# Regularisation of the position solve, relative to the quadric's mean eigenvalue: small enough not to pull a
# constrained vertex off its feature, large enough that a flat patch picks the midpoint.
POSITION_REGULARISATION = 1e-3
MAX_ROUNDS = 200


def face_quadrics(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-vertex sum of the plane quadrics of its faces, weighted by face area: (V, 10) float64.

    The 10 numbers are the upper triangle of the 4x4 quadric ``[A b; b^T c]``: ``a00 a01 a02 a11 a12 a22 b0 b1 b2
    c`` with cost ``x^T A x + 2 b^T x + c``.
    """
    p = vertices.to(torch.float64)[faces]  # (F, 3, 3)
    normal = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    double_area = normal.norm(dim=1, keepdim=True)
    n = normal / double_area.clamp_min(1e-300)
    d = -(n * p[:, 0]).sum(dim=1, keepdim=True)
    w = double_area / 2
    q = torch.cat([n[:, [0]] * n[:, [0]], n[:, [0]] * n[:, [1]], n[:, [0]] * n[:, [2]], n[:, [1]] * n[:, [1]],
                   n[:, [1]] * n[:, [2]], n[:, [2]] * n[:, [2]], n * d, d * d], dim=1) * w
    out = torch.zeros(len(vertices), 10, dtype=torch.float64, device=vertices.device)
    for corner in range(3):
        out.index_add_(0, faces[:, corner], q)
    return out


def _unpack(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.stack([q[:, [0, 1, 2]], q[:, [1, 3, 4]], q[:, [2, 4, 5]]], dim=1)
    return a, q[:, 6:9], q[:, 9]


def quadric_cost(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x^T A x + 2 b^T x + c`` per row (float64)."""
    a, b, c = _unpack(q)
    return (x * (a @ x.unsqueeze(2)).squeeze(2)).sum(1) + 2 * (b * x).sum(1) + c


def best_positions(q: torch.Tensor, midpoint: torch.Tensor) -> torch.Tensor:
    """Minimiser of each quadric plus a small pull towards ``midpoint`` (so flat and straight regions, whose
    quadrics do not fix every direction, choose the midpoint there)."""
    a, b, _ = _unpack(q)
    scale = (a.diagonal(dim1=1, dim2=2).sum(1) / 3).clamp_min(1e-300) * POSITION_REGULARISATION
    eye = torch.eye(3, dtype=q.dtype, device=q.device)
    m = a + scale.view(-1, 1, 1) * eye
    rhs = scale.unsqueeze(1) * midpoint - b
    # Cramer's rule, written out: millions of 3x3 systems per round cost a few elementwise passes this way, where
    # a batched LU (torch.linalg.solve) took a tenth of the GPU rounds' time and synchronised to check its errors.
    # A singular system gives non-finite positions, which the caller replaces by the midpoint.
    r0, r1, r2 = m[:, 0], m[:, 1], m[:, 2]
    c0, c1, c2 = torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)
    det = (r0 * c0).sum(1, keepdim=True)
    return (c0 * rhs[:, :1] + c1 * rhs[:, 1:2] + c2 * rhs[:, 2:]) / det


def _edges(faces: torch.Tensor, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Undirected edges (E, 2) with a < b, sorted by key ``a * V + b``, and the number of faces on each."""
    start = faces.reshape(-1)
    end = faces[:, [1, 2, 0]].reshape(-1)
    keys = torch.minimum(start, end) * num_vertices + torch.maximum(start, end)
    unique, counts = torch.unique(keys, sorted=True, return_counts=True)
    return torch.stack([unique // num_vertices, unique % num_vertices], dim=1), counts


def _common_neighbour_counts(edges: torch.Tensor, chosen: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """For each chosen edge (a, b): how many vertices are neighbours of both a and b."""
    keys = edges[:, 0] * num_vertices + edges[:, 1]  # sorted (from _edges)
    both = torch.cat([edges, edges.flip(1)])  # directed: (from, to)
    order = torch.argsort(both[:, 0])
    targets = both[order, 1]
    start = torch.zeros(num_vertices + 1, dtype=torch.long, device=edges.device)
    start[1:] = torch.cumsum(torch.bincount(both[:, 0], minlength=num_vertices), 0)
    a, b = edges[chosen, 0], edges[chosen, 1]
    degree = start[a + 1] - start[a]
    owner = torch.repeat_interleave(torch.arange(len(a), device=edges.device), degree)
    offset = torch.arange(len(owner), device=edges.device) - torch.repeat_interleave(
        torch.cumsum(degree, 0) - degree, degree)
    n = targets[start[a][owner] + offset]  # every neighbour n of a ...
    other = b[owner]
    key = torch.minimum(n, other) * num_vertices + torch.maximum(n, other)
    pos = torch.searchsorted(keys, key).clamp_max(len(keys) - 1)
    shared = (keys[pos] == key) & (n != other)  # ... that is also a neighbour of b
    return torch.zeros(len(a), dtype=torch.long, device=edges.device).index_add_(0, owner, shared.long())


# Selection passes per round: each pass adds the locally cheapest candidates that no earlier choice blocks, so a
# round ends close to a maximal set of compatible collapses (one pass alone picks about a third of that).
SELECTION_PASSES = 6


def _flag_endpoints(num_vertices: int, first: torch.Tensor, second: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    """(V,) uint8: 1 at every endpoint of a flagged pair (``first[i]``, ``second[i]``), by scatters of fixed size
    (boolean-mask indexing would make the host wait for the GPU)."""
    out = torch.zeros(num_vertices, dtype=torch.uint8, device=first.device)
    out.scatter_reduce_(0, first, flag.to(torch.uint8), "amax")
    out.scatter_reduce_(0, second, flag.to(torch.uint8), "amax")
    return out


def _independent_cheapest(edges, a, b, rank, num_vertices: int) -> torch.Tensor:
    """Candidates (a, b) to collapse together: each is the cheapest (lowest ``rank``) among the still-open
    candidates touching its endpoints' closed one-rings, over a few passes. Two chosen edges never have adjacent
    endpoints, so no face is touched by two collapses and each collapse sees its neighbours where they were."""
    device = a.device
    none = torch.iinfo(torch.long).max
    chosen = torch.zeros(len(a), dtype=torch.bool, device=device)
    open_ = torch.ones(len(a), dtype=torch.bool, device=device)
    # Every step is a fixed-size scatter or gather, with no boolean-mask indexing and no early exit: those would
    # make the host wait for the GPU several times per pass, which costs more than the passes on small meshes.
    for _ in range(SELECTION_PASSES):
        cheapest_at = torch.full((num_vertices,), none, dtype=torch.long, device=device)
        r = torch.where(open_, rank, none)
        cheapest_at.scatter_reduce_(0, a, r, "amin")
        cheapest_at.scatter_reduce_(0, b, r, "amin")
        around = cheapest_at.clone()  # the cheapest open candidate touching any vertex of the closed one-ring
        around.scatter_reduce_(0, edges[:, 0], cheapest_at[edges[:, 1]], "amin")
        around.scatter_reduce_(0, edges[:, 1], cheapest_at[edges[:, 0]], "amin")
        new = open_ & (rank == around[a]) & (rank == around[b])
        chosen |= new
        taken = _flag_endpoints(num_vertices, a, b, new)
        near = taken.clone()  # endpoints of chosen edges and their neighbours
        near.scatter_reduce_(0, edges[:, 0], taken[edges[:, 1]], "amax")
        near.scatter_reduce_(0, edges[:, 1], taken[edges[:, 0]], "amax")
        open_ &= (near[a] == 0) & (near[b] == 0)
    return chosen


def _collapse_round(vertices, faces, quadrics, target_faces: int, considered: int):
    """One round among the ``considered`` cheapest candidates; returns the new (vertices, faces, quadrics), how many
    collapses were applied and how many candidates there were."""
    device = faces.device
    nv = len(vertices)
    edges, counts = _edges(faces, nv)
    locked = _flag_endpoints(nv, edges[:, 0], edges[:, 1], counts != 2).bool()  # open borders, non-manifold edges
    candidate = torch.nonzero((counts == 2) & ~locked[edges[:, 0]] & ~locked[edges[:, 1]]).squeeze(1)
    if len(candidate) == 0:
        return vertices, faces, quadrics, 0, 0
    a, b = edges[candidate, 0], edges[candidate, 1]
    q = quadrics[a] + quadrics[b]
    midpoint = (vertices[a] + vertices[b]).to(torch.float64) / 2
    position = best_positions(q, midpoint)
    position = torch.where(torch.isfinite(position).all(1, keepdim=True), position, midpoint)
    cost = quadric_cost(q, position).clamp_min(0)
    total = len(cost)
    # Only the cheapest `considered` compete this round, ranked by (cost, edge id): ranks are unique, so
    # "cheapest" is a strict order. (One sort does both; a k-th value search first cost more than the sort.)
    order = torch.argsort(cost, stable=True)[:considered]
    candidate, a, b, position = candidate[order], a[order], b[order], position[order]
    rank = torch.arange(len(order), device=device)
    chosen = _independent_cheapest(edges, a, b, rank, nv)
    chosen_idx = torch.nonzero(chosen).squeeze(1)
    if len(chosen_idx) == 0:
        return vertices, faces, quadrics, 0, total
    # Manifold: the endpoints share exactly the two vertices opposite the edge.
    shared = _common_neighbour_counts(edges, candidate[chosen_idx], nv)
    chosen_idx = chosen_idx[shared == 2]
    a, b, position = a[chosen_idx], b[chosen_idx], position[chosen_idx]
    # Fold-overs: every face that keeps one endpoint must not turn by more than MAX_NORMAL_TURN.
    slot = torch.full((nv,), -1, dtype=torch.long, device=device)
    ids = torch.arange(len(a), device=device)
    slot[a] = ids
    slot[b] = ids
    face_slot = slot[faces]  # (F, 3); independence: one collapse at most per face
    owner = face_slot.max(dim=1).values
    touched = torch.nonzero(owner >= 0).squeeze(1)
    own = owner[touched]
    corners = faces[touched]
    moving = (corners == a[own].unsqueeze(1)) | (corners == b[own].unsqueeze(1))
    removed = moving.sum(1) == 2
    old = vertices[corners].to(torch.float64)
    new = torch.where(moving.unsqueeze(2), position[own].unsqueeze(1), old)
    n_old = torch.linalg.cross(old[:, 1] - old[:, 0], old[:, 2] - old[:, 0])
    n_new = torch.linalg.cross(new[:, 1] - new[:, 0], new[:, 2] - new[:, 0])
    cos_turn = (n_old * n_new).sum(1) / (n_old.norm(dim=1) * n_new.norm(dim=1)).clamp_min(1e-300)
    folds = ~removed & ~(cos_turn >= math.cos(math.radians(MAX_NORMAL_TURN)))
    refused = torch.zeros(len(a), dtype=torch.uint8, device=device).scatter_reduce_(0, own, folds.to(torch.uint8),
                                                                                    "amax")
    ok = torch.nonzero(refused == 0).squeeze(1)
    limit = max((len(faces) - target_faces) // 2, 1)  # enough collapses to reach the target, cheapest first
    if len(ok) > limit:
        ok = ok[torch.argsort(rank[chosen_idx[ok]])[:limit]]
    a, b, position = a[ok], b[ok], position[ok]
    if len(a) == 0:
        return vertices, faces, quadrics, 0, total
    vertices = vertices.clone()
    vertices[a] = position.to(vertices.dtype)
    quadrics = quadrics.clone()
    quadrics[a] += quadrics[b]
    remap = torch.arange(nv, device=device)
    remap[b] = a
    faces = remap[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    return vertices, faces, quadrics, len(a), total


def decimate_in_rounds(vertices: torch.Tensor, faces: torch.Tensor, target_faces: int,
                       max_rounds: int = MAX_ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadric edge collapses in rounds of independent collapses until at most ``target_faces`` faces remain (or
    no allowed collapse is left). Open borders and non-manifold edges keep their vertices in place.

    Args:
        vertices: (V, 3) float tensor, on any device.
        faces: (F, 3) int64 tensor on the same device, consistently wound (the fold-over test compares normals).
        target_faces: positive int.
        max_rounds: stop after this many rounds.

    Returns:
        vertices (V', 3) of the input dtype, faces (F', 3) int64, unused vertices removed; the same device.
    """
    if isinstance(target_faces, bool) or not isinstance(target_faces, int) or target_faces < 1:
        raise ValueError(f"target_faces must be a positive int, got {target_faces!r}")
    if faces.ndim != 2 or faces.shape[1] != 3 or vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"expected vertices (V, 3) and faces (F, 3), got {tuple(vertices.shape)} and "
                         f"{tuple(faces.shape)}")
    faces = faces.to(torch.long)
    if len(faces) <= target_faces:
        return vertices, faces
    quadrics = face_quadrics(vertices, faces)
    widen = 1
    for _ in range(max_rounds):
        needed = (len(faces) - target_faces + 1) // 2  # collapses still needed (two faces each)
        if needed <= 0:
            break
        considered = widen * max(needed, MIN_CONSIDERED)
        vertices, faces, quadrics, applied, candidates = _collapse_round(vertices, faces, quadrics, target_faces,
                                                                         considered)
        if applied < needed * SLOW_ROUND:
            if considered >= candidates:
                # Every candidate competed and almost none went: what is left is refused (fold-overs, manifold),
                # and further rounds would each take a handful (on spot at 1024^3, 20 rounds for 1 % of faces).
                break
            widen *= 4  # the cheapest are blocked (fold-overs, manifold): let dearer ones compete
    used = torch.zeros(len(vertices), dtype=torch.bool, device=vertices.device)
    used[faces.reshape(-1)] = True
    new_index = torch.cumsum(used, 0) - 1
    return vertices[used], new_index[faces]
