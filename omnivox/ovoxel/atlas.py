"""UV atlas for surfaces extracted from a voxel grid: axis-projected charts, shelf-packed (issue 16 item 2).

Why not a general unwrapper (xatlas): a voxel surface is made of large, locally flat, axis-dominated pieces, so
projecting each piece orthographically onto its axis plane is already a good parameterisation: angles are kept
except for one stretch of ``1 / |n_axis|`` along the slope, and nothing has to be optimised. Every stage is a
vectorised pass over faces or edges (torch, so the same code runs on CPU and CUDA; the texel rasterisers, the
chart grouping and its connected components, the chart boxes, the halving and the placement of packed corners have
a numba twin on the CPU with the same results: there torch's many small two-thread passes cost seconds, and several
times that when the cores are shared); only the packer loops, once per shelf of charts.

Method (``voxel_atlas``):

1. **Labels.** Each face takes the signed axis (+x, -x, +y, -y, +z, -z) its unit normal leans to most.
2. **Smoothing.** A few rounds of area-weighted majority vote over edge-adjacent faces, restricted to labels whose
   axis keeps ``n . axis > normal_floor`` for that face: diagonal staircases do not break into confetti, and no face
   is projected edge-on or folded (the stretch stays below ``1 / normal_floor``). Votes are integers (quantised
   areas), so CPU and GPU agree bit for bit.
3. **Charts** are the connected components of equal label over shared edges (hook-and-jump label propagation with
   ``scatter_reduce``, O(log n) rounds).
4. **Splits.** A chart whose projection overlaps itself (a helical ramp, a screw thread: all faces face the axis,
   yet the surface winds over itself) is found by rasterising every chart in its own frame at a coarse check
   resolution (``OVERLAP_CHECK_SIZE``) and looking for a texel centre strictly inside two of its faces; a large
   chart that fills less than ``MIN_FILL`` of its bounding box (a ring, an L) wastes packing space. Both are cut in
   two across the middle of their longest 3-D extent and re-split into connected pieces, for a few rounds. Charts
   that still overlap (layers stacked along the axis, which cuts across the longest extent never separate) are
   peeled: the faces lying over a face of smaller index leave as pieces of their own, again for a few rounds.
5. **Packing.** Chart rectangles (turned a quarter to lie flat) are sorted by height and packed in shelves; the
   largest common scale that fits (binary search) gives every chart the same texel density. Charts start at
   whole texels and are ``padding`` texels apart (also across the texture's wrap-around), so bilinear filtering
   and the gutter fill of ``bake.fill_gutter`` do not bleed between charts.
6. **Exact check.** The packed layout is rasterised as the baker will see it (float32 UVs, the texture's texel
   centres). Faces that share a texel centre strictly inside both (slivers of folds below the coarse resolution)
   are cut out of their chart into pieces of their own (a chart with more than 1/8 of its faces involved is
   halved instead), and the layout is packed again at the same scale where it fits, so only the re-split charts
   need checking; after ``SPLIT_ROUNDS`` rounds the faces still involved become one-face charts. The result has
   no texel claimed twice.

Stretch: texel density along a face's slope is ``|n . axis|`` times the density across it (>= ``NORMAL_FLOOR``);
xatlas trades that for seams and optimisation time. Utilisation (covered fraction of the texture) is about that
of xatlas with ``max_chart_area`` (0.4-0.7 on the dev assets); the fidelity comparison is in
docs/benchmarks/atlas.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Union

import numba
import numpy as np
import torch

from omnivox.ovoxel.bake import texel_barycentrics
from omnivox.ovoxel.kernels.meshops_numba import join, labels_from_roots

# A face may only take a label whose axis has n . axis above this (its projection is at most 1 / 0.4 = 2.5 times
# squeezed along the slope); a face's own dominant axis always passes (>= 1 / sqrt(3)).
NORMAL_FLOOR = 0.4
# Rounds of the majority vote of step 2 (each settles one more ring of faces along a label boundary).
SMOOTHING_ROUNDS = 4
# Self-overlap check resolution: charts are rasterised as if the whole atlas were this many texels wide.
OVERLAP_CHECK_SIZE = 512
# Rounds of chart splitting in steps 4 and 6 (step 6 then dissolves what still overlaps into one-face charts).
SPLIT_ROUNDS = 8
# Rounds of peeling layers off charts that still overlap after step 4's halving (`_peel_layers`).
PEEL_ROUNDS = 8
# Step 4's packing split: charts above LARGE_CHART_AREA of the total projected area and filling less than
# MIN_FILL of their bounding rectangle are cut.
LARGE_CHART_AREA = 1.0 / 64.0
MIN_FILL = 0.5
# In the packed layout, a chart with more than 1 / HALVE_SHARE of its faces in overlaps is halved; otherwise
# only the overlapping faces are cut out of it.
HALVE_SHARE = 8
# Bisection steps for the common scale of step 5 (relative precision 2^-30).
SCALE_STEPS = 30
# Candidate (texel, face) pairs per chunk of the overlap check (bounds memory).
CHECK_CHUNK = 1 << 22

# Face labels 0..5 are the signed axes +x, -x, +y, -y, +z, -z: axis = label // 2, negative when label is odd.


@dataclass
class Atlas:
    """A UV atlas in ``unwrap_uv``'s contract, plus what it cost and how good it is.

    Attributes:
        vmapping: (V',) int64, original vertex of each atlas vertex (vertices are split along chart seams).
        faces: (F, 3) int64 into the atlas vertices, same face order as the input.
        uvs: (V', 2) float32 in [0, 1]; texel column = u * S, row = v * S (``bake.rasterize_uv``).
        face_chart: (F,) int64 chart of each face.
        charts: number of charts.
        utilisation: fraction of the texture covered by chart triangles (sum of UV areas).
        seam_length: total 3-D length of edges whose faces lie in different charts.
        seam_fraction: seam_length over the total length of all edges.
        seconds: wall-clock time of the unwrap (statistics included).
    """

    vmapping: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    face_chart: np.ndarray
    charts: int
    utilisation: float
    seam_length: float
    seam_fraction: float
    seconds: float


def default_padding(texture_size: int) -> int:
    """Texels between charts: ``texture_size // 512 + 2``, as for xatlas (bilinear and a few mip levels safe)."""
    return int(texture_size) // 512 + 2


# ------------------------------------------------------------------------------------------------ graph helpers


def _undirected_keys(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """(3F,) key ``min * V + max`` of each corner edge (corner k to corner k + 1 of each face, face-major)."""
    a = faces.reshape(-1)
    b = faces[:, [1, 2, 0]].reshape(-1)
    return torch.minimum(a, b) * num_vertices + torch.maximum(a, b)


def _edges(faces: torch.Tensor, num_vertices: int):
    """Corner edges sorted by undirected key: keys (3F,), face of each (3F,), endpoints (3F, 2) and the sorting
    permutation of the face-major corner edges (3F,)."""
    a = faces.reshape(-1)
    b = faces[:, [1, 2, 0]].reshape(-1)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    keys, order = torch.sort(lo * num_vertices + hi, stable=True)
    face_of = torch.div(order, 3, rounding_mode="floor")
    return keys, face_of, torch.stack([lo[order], hi[order]], dim=1), order


def _components(num_nodes: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Connected components of an undirected graph given by edges (a, b): each node gets its component's smallest
    node index. On the CPU by union-find (`_components_numba`), elsewhere by `_components_torch`; the answer is
    the same."""
    if a.device.type == "cpu":
        return torch.from_numpy(_components_numba(num_nodes, np.ascontiguousarray(a.numpy()),
                                                  np.ascontiguousarray(b.numpy())))
    return _components_torch(num_nodes, a, b)


def _components_torch(num_nodes: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`_components` by hooking of roots, then pointer jumping (integer-only, so identical on every device)."""
    label = torch.arange(num_nodes, device=a.device)
    if a.numel() == 0:
        return label
    while True:
        la, lb = label[a], label[b]
        low, high = torch.minimum(la, lb), torch.maximum(la, lb)
        hooked = label.scatter_reduce(0, high, low, reduce="amin")
        while True:  # pointer jumping until every node points at its root
            jumped = hooked[hooked]
            if torch.equal(jumped, hooked):
                break
            hooked = jumped
        if torch.equal(hooked, label):
            return label
        label = hooked


@numba.njit(cache=True)
def _components_numba(num_nodes, a, b):
    """`_components` on the CPU: union-find that hooks the larger root under the smaller, so every root is its
    component's smallest node (pointer jumping takes a dozen whole-graph passes per call there)."""
    parent = np.arange(num_nodes)
    for k in range(a.shape[0]):
        join(parent, a[k], b[k])
    for i in range(num_nodes):
        parent[i] = parent[parent[i]]  # parents have smaller indices, so they already point at their roots
    return parent


def _group_components(group: torch.Tensor, pair_a: torch.Tensor, pair_b: torch.Tensor,
                      chart: Optional[torch.Tensor] = None, redo: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Chart ids 0..C-1 (ordered by smallest face) of the connected pieces of equal ``group`` over face pairs.

    With ``chart`` (F,) and ``redo`` (C,) bool, only the faces of the ``redo`` charts are regrouped; every other
    chart stays whole (``group`` must not mix charts)."""
    if group.device.type == "cpu":
        has_redo = redo is not None
        chart = chart if has_redo else group
        redo = redo if has_redo else torch.ones(1, dtype=torch.bool)
        return torch.from_numpy(_group_components_numba(group.numpy(), np.ascontiguousarray(pair_a.numpy()),
                                                        np.ascontiguousarray(pair_b.numpy()), chart.numpy(),
                                                        redo.numpy(), has_redo))
    return _group_components_torch(group, pair_a, pair_b, chart, redo)


def _group_components_torch(group: torch.Tensor, pair_a: torch.Tensor, pair_b: torch.Tensor,
                            chart: Optional[torch.Tensor] = None, redo: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`_group_components` by torch passes (any device)."""
    same = group[pair_a] == group[pair_b]
    if redo is not None:
        same &= redo[chart[pair_a]]
    root = _components(group.numel(), pair_a[same], pair_b[same])
    if redo is not None:
        faces = torch.arange(group.numel(), device=group.device)
        first_face = torch.full_like(redo, group.numel(), dtype=torch.int64).scatter_reduce(
            0, chart, faces, reduce="amin")
        root = torch.where(redo[chart], root, first_face[chart])
    return _rank_of_roots(root)


@numba.njit(cache=True)
def _group_components_numba(group, pair_a, pair_b, chart, redo, has_redo):
    """`_group_components` on the CPU: union-find over the pairs of equal group (of redone charts),
    each face of a kept chart named by the chart's first face, roots ranked in index order."""
    num_faces = group.shape[0]
    parent = np.arange(num_faces)
    for k in range(pair_a.shape[0]):
        i, j = pair_a[k], pair_b[k]
        if group[i] != group[j] or (has_redo and not redo[chart[i]]):
            continue
        join(parent, i, j)
    if has_redo:
        first_face = np.full(redo.shape[0], num_faces, np.int64)
        for f in range(num_faces):
            if first_face[chart[f]] == num_faces:
                first_face[chart[f]] = f
        for f in range(num_faces):
            if not redo[chart[f]]:
                parent[f] = first_face[chart[f]]  # the chart's smallest face: the root of a kept chart
    return labels_from_roots(parent)


def _rank_of_roots(root: torch.Tensor) -> torch.Tensor:
    """``torch.unique(root, return_inverse=True)[1]`` for roots that are node indices (each node's group is named
    by one of its nodes): marking the roots and counting them gives the ranks without a sort."""
    is_root = torch.zeros(root.numel(), dtype=torch.int64, device=root.device)
    is_root[root] = 1
    return (torch.cumsum(is_root, 0) - 1)[root]


# ------------------------------------------------------------------------------------------------------ stages


def _smooth_labels(label: torch.Tensor, allowed: torch.Tensor, weight: torch.Tensor, pair_a: torch.Tensor,
                   pair_b: torch.Tensor, rounds: int) -> torch.Tensor:
    """Majority vote of each face and its edge neighbours (integer area weights), among the face's allowed labels."""
    count = label.numel()
    faces = torch.arange(count, device=label.device)
    for _ in range(rounds):
        votes = torch.zeros(count, 6, dtype=torch.int64, device=label.device)
        votes.index_put_((faces, label), weight, accumulate=True)
        votes.index_put_((pair_a, label[pair_b]), weight[pair_b], accumulate=True)
        votes.index_put_((pair_b, label[pair_a]), weight[pair_a], accumulate=True)
        updated = torch.where(allowed, votes, torch.full_like(votes, -1)).argmax(dim=1)
        if torch.equal(updated, label):
            break
        label = updated
    return label


def _projected_corners(corners: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(F, 3, 2) coordinates of each face's corners in its label's axis plane, counter-clockwise seen from the
    axis: +a projects to (p[a+1], p[a+2]), -a to (p[a+2], p[a+1]) (indices mod 3)."""
    axis = torch.div(label, 2, rounding_mode="floor")
    negative = label % 2 == 1
    first = (axis + 1) % 3
    second = (axis + 2) % 3
    u_axis = torch.where(negative, second, first)
    v_axis = torch.where(negative, first, second)
    u = torch.gather(corners, 2, u_axis.view(-1, 1, 1).expand(-1, 3, 1))
    v = torch.gather(corners, 2, v_axis.view(-1, 1, 1).expand(-1, 3, 1))
    return torch.cat([u, v], dim=2)


def _chart_boxes(flat: torch.Tensor, chart: torch.Tensor, charts: int):
    """Per-chart (lo (C, 2), hi (C, 2)) of projected corners ``flat`` (F, 3, 2)."""
    if flat.device.type == "cpu":
        lo, hi = _chart_boxes_numba(np.ascontiguousarray(flat.numpy()), np.ascontiguousarray(chart.numpy()), charts)
        return torch.from_numpy(lo), torch.from_numpy(hi)
    return _chart_boxes_torch(flat, chart, charts)


def _chart_boxes_torch(flat: torch.Tensor, chart: torch.Tensor, charts: int):
    """`_chart_boxes` by two ``scatter_reduce`` passes (any device)."""
    index = chart.repeat_interleave(3).view(-1, 1).expand(-1, 2)
    points = flat.reshape(-1, 2)
    lo = torch.full((charts, 2), math.inf, dtype=flat.dtype, device=flat.device)
    hi = torch.full((charts, 2), -math.inf, dtype=flat.dtype, device=flat.device)
    return lo.scatter_reduce(0, index, points, reduce="amin"), hi.scatter_reduce(0, index, points, reduce="amax")


@numba.njit(cache=True)
def _chart_boxes_numba(flat, chart, charts):
    """`_chart_boxes` on the CPU in one pass (minima and maxima are exact in any order)."""
    lo = np.full((charts, 2), np.inf, flat.dtype)
    hi = np.full((charts, 2), -np.inf, flat.dtype)
    for f in range(flat.shape[0]):
        c = chart[f]
        for k in range(3):
            for d in range(2):
                x = flat[f, k, d]
                if x < lo[c, d]:
                    lo[c, d] = x
                if x > hi[c, d]:
                    hi[c, d] = x
    return lo, hi


def _strict_claims_torch(pix, first, width, count, twice_area, chart, stride, return_faces: bool = False):
    """Keys ``(chart * stride + row) * stride + col`` of every (face, texel) with the texel centre strictly inside
    the face (barycentrics > 1e-9: centres on a shared edge belong to neither face); with ``return_faces`` also
    the face (row of ``pix``) of each key."""
    device = pix.device
    face_ids = torch.nonzero(count > 0).squeeze(1)
    count = count[face_ids]
    ends = torch.cumsum(count, 0)
    claims = [torch.zeros(0, dtype=torch.int64, device=device)]
    claim_faces = [torch.zeros(0, dtype=torch.int64, device=device)]
    start = 0
    while start < face_ids.numel():
        offset = int(ends[start - 1]) if start > 0 else 0
        stop = max(int(torch.searchsorted(ends, offset + CHECK_CHUNK, right=True)), start + 1)
        local = torch.repeat_interleave(torch.arange(stop - start, device=device), count[start:stop])
        rank = torch.arange(local.numel(), device=device) + offset - (ends[start:stop] - count[start:stop])[local]
        face = face_ids[start:stop][local]
        col = first[face, 0] + rank % width[face]
        row = first[face, 1] + torch.div(rank, width[face], rounding_mode="floor")
        c = pix[face]
        x, y = col.to(pix.dtype), row.to(pix.dtype)
        w0 = ((c[:, 1, 0] - x) * (c[:, 2, 1] - y) - (c[:, 1, 1] - y) * (c[:, 2, 0] - x)) / twice_area[face]
        w1 = ((c[:, 2, 0] - x) * (c[:, 0, 1] - y) - (c[:, 2, 1] - y) * (c[:, 0, 0] - x)) / twice_area[face]
        w2 = 1.0 - w0 - w1
        strictly = (w0 > 1e-9) & (w1 > 1e-9) & (w2 > 1e-9)
        claims.append((chart[face[strictly]] * stride + row[strictly]) * stride + col[strictly])
        claim_faces.append(face[strictly])
        start = stop
    return (torch.cat(claims), torch.cat(claim_faces)) if return_faces else torch.cat(claims)


@numba.njit(cache=True)
def _strict_claims_numba(pix, first, width, count, twice_area, chart, stride, bound):
    """``_strict_claims_torch(..., return_faces=True)`` on the CPU, same arithmetic (no fused multiply-adds
    without fastmath)."""
    keys = np.empty(bound, np.int64)
    faces = np.empty(bound, np.int64)
    found = 0
    for face in range(pix.shape[0]):
        c = pix[face]
        for rank in range(count[face]):
            col = first[face, 0] + rank % width[face]
            row = first[face, 1] + rank // width[face]
            w0, w1, w2 = texel_barycentrics(c, float(col), float(row), twice_area[face])
            if w0 > 1e-9 and w1 > 1e-9 and w2 > 1e-9:
                keys[found] = (chart[face] * stride + row) * stride + col
                faces[found] = face
                found += 1
    return keys[:found], faces[:found]


def _overlapping_charts(flat: torch.Tensor, chart: torch.Tensor, charts: int, lo: torch.Tensor,
                        scale: float, selected: torch.Tensor, rank: Optional[torch.Tensor] = None):
    """(C,) bool: charts with a texel centre strictly inside two of their faces, each chart rasterised in its own
    frame at ``scale`` texels per unit; only the ``selected`` (F,) faces are rasterised.

    With ``rank`` (F,) int64 (a permutation: the order in which faces may keep their place) also (F,) bool, the
    faces that must leave their chart for it to overlap no more: every face that shares a texel centre with a face
    of lower rank of its chart (the lowest-ranked claimant of each texel stays, so the faces left behind claim
    every texel once; which faces stay does not depend on the device)."""
    if flat.device.type == "cpu":
        return_faces = rank is not None
        overlapping, leaving = _overlapping_charts_numba(
            flat.numpy(), chart.numpy(), charts, lo.numpy(), float(scale), selected.numpy(),
            rank.numpy() if return_faces else np.zeros(1, np.int64), return_faces)
        overlapping, leaving = torch.from_numpy(overlapping), torch.from_numpy(leaving)
        return (overlapping, leaving) if return_faces else overlapping
    return _overlapping_charts_torch(flat, chart, charts, lo, scale, selected, rank)


def _overlapping_charts_torch(flat: torch.Tensor, chart: torch.Tensor, charts: int, lo: torch.Tensor,
                              scale: float, selected: torch.Tensor, rank: Optional[torch.Tensor] = None):
    """`_overlapping_charts` by torch passes (any device; the claims by `_strict_claims_numba` on the CPU)."""
    device = flat.device
    overlapping = torch.zeros(charts, dtype=torch.bool, device=device)
    leaving = torch.zeros(chart.numel(), dtype=torch.bool, device=device)
    return_faces = rank is not None
    if not bool(selected.any()):
        return (overlapping, leaving) if return_faces else overlapping
    selected_faces = torch.nonzero(selected).squeeze(1)
    flat, chart = flat[selected], chart[selected]
    pix = (flat - lo[chart].unsqueeze(1)) * scale - 0.5  # texel (i, j) centre at pixel coordinate (j, i)
    first = torch.ceil(pix.amin(dim=1)).clamp(min=0).long()
    last = torch.floor(pix.amax(dim=1)).long()
    width = (last[:, 0] - first[:, 0] + 1).clamp(min=0)
    height = (last[:, 1] - first[:, 1] + 1).clamp(min=0)
    e1 = pix[:, 1] - pix[:, 0]
    e2 = pix[:, 2] - pix[:, 0]
    twice_area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    count = torch.where(twice_area.abs() > 0, width * height, torch.zeros_like(width))
    stride = int(last.max()) + 2
    if device.type == "cpu":
        keys, claimant = _strict_claims_numba(pix.numpy(), first.numpy(), width.numpy(), count.numpy(),
                                              twice_area.numpy(), chart.numpy(), stride, int(count.sum()))
        keys, claimant = torch.from_numpy(keys), torch.from_numpy(claimant)
    else:
        keys, claimant = _strict_claims_torch(pix, first, width, count, twice_area, chart, stride, return_faces=True)
    if not return_faces:
        keys = torch.sort(keys).values
        twice = keys[1:][keys[1:] == keys[:-1]]
        overlapping[torch.div(twice, stride * stride, rounding_mode="floor")] = True
        return overlapping
    # Claims sorted by key, then rank: within one texel of one chart the lowest-ranked face comes first.
    order = torch.sort(rank[selected_faces[claimant]], stable=True).indices
    order = order[torch.sort(keys[order], stable=True).indices]
    keys, claimant = keys[order], claimant[order]
    twice = torch.nonzero(keys[1:] == keys[:-1]).squeeze(1)
    overlapping[torch.div(keys[twice], stride * stride, rounding_mode="floor")] = True
    leaving[selected_faces[claimant[twice + 1]]] = True
    return overlapping, leaving


@numba.njit(cache=True)
def _overlapping_charts_numba(flat, chart, charts, lo, scale, selected, rank, with_rank):
    """`_overlapping_charts` on the CPU: the torch path's pixel frames, texel boxes and areas, its claims
    (`_strict_claims_numba`) and its orders (claims by key, then rank), in compiled loops. Returns (overlapping
    (C,) bool, leaving (F,) bool; all False without ``with_rank``)."""
    faces = np.nonzero(selected)[0]
    count = faces.shape[0]
    overlapping = np.zeros(charts, np.bool_)
    leaving = np.zeros(selected.shape[0], np.bool_)
    if count == 0:
        return overlapping, leaving
    pix = np.empty((count, 3, 2))
    first = np.empty((count, 2), np.int64)
    width = np.empty(count, np.int64)
    texels = np.empty(count, np.int64)
    twice_area = np.empty(count)
    sub_chart = np.empty(count, np.int64)
    largest = np.iinfo(np.int64).min
    for i in range(count):
        c = chart[faces[i]]
        sub_chart[i] = c
        for k in range(3):
            for d in range(2):
                pix[i, k, d] = (flat[faces[i], k, d] - lo[c, d]) * scale - 0.5
        last = np.empty(2, np.int64)
        for d in range(2):
            first[i, d] = int(max(np.ceil(min(pix[i, 0, d], pix[i, 1, d], pix[i, 2, d])), 0.0))
            last[d] = int(np.floor(max(pix[i, 0, d], pix[i, 1, d], pix[i, 2, d])))
            largest = max(largest, last[d])
        width[i] = max(last[0] - first[i, 0] + 1, 0)
        height = max(last[1] - first[i, 1] + 1, 0)
        twice_area[i] = ((pix[i, 1, 0] - pix[i, 0, 0]) * (pix[i, 2, 1] - pix[i, 0, 1])
                         - (pix[i, 1, 1] - pix[i, 0, 1]) * (pix[i, 2, 0] - pix[i, 0, 0]))
        texels[i] = width[i] * height if abs(twice_area[i]) > 0 else 0
    stride = largest + 2
    keys, claimant = _strict_claims_numba(pix, first, width, texels, twice_area, sub_chart, stride, texels.sum())
    if not with_rank:
        keys = np.sort(keys)
        for j in range(1, keys.shape[0]):
            if keys[j] == keys[j - 1]:
                overlapping[keys[j] // (stride * stride)] = True
        return overlapping, leaving
    # Claims sorted by key, then rank: within one texel of one chart the lowest-ranked face comes first.
    claim_rank = np.empty(keys.shape[0], np.int64)
    for j in range(keys.shape[0]):
        claim_rank[j] = rank[faces[claimant[j]]]
    order = np.argsort(claim_rank, kind="mergesort")
    sorted_keys = keys[order]
    order = order[np.argsort(sorted_keys, kind="mergesort")]
    for j in range(1, order.shape[0]):
        if keys[order[j]] == keys[order[j - 1]]:
            overlapping[keys[order[j]] // (stride * stride)] = True
            leaving[faces[claimant[order[j]]]] = True
    return overlapping, leaving


def _layout(flat: torch.Tensor, chart: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, texture_size: int,
            padding: int, keep_scale: Optional[float] = None) -> tuple[torch.Tensor, float]:
    """(F, 3, 2) float64 UVs of every corner after packing the charts' boxes ``lo``-``hi`` (``_pack``), and the
    scale (texels per unit).

    A quarter-turned chart is turned about a whole number of texels, so texel centres sample every chart on the
    same half-integer lattice of its own frame whatever the packing did."""
    device = flat.device
    scale, origin, turned = _pack((hi - lo).cpu().numpy(), texture_size, padding, keep_scale)
    if device.type == "cpu":
        return torch.from_numpy(_placed_corners_numba(flat.numpy(), chart.numpy(), lo.numpy(), hi.numpy(), scale,
                                                      origin.astype(np.float64), turned, float(texture_size))), scale
    return _placed_corners_torch(flat, chart, lo, hi, scale, origin, turned, texture_size), scale


def _placed_corners_torch(flat: torch.Tensor, chart: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, scale: float,
                          origin: np.ndarray, turned: np.ndarray, texture_size: int) -> torch.Tensor:
    """(F, 3, 2) UVs of the corners of charts packed at texel ``origin`` (C, 2), ``turned`` (C,) a quarter turn."""
    device = flat.device
    origin_t = torch.from_numpy(origin).to(device=device, dtype=torch.float64)
    turned_t = torch.from_numpy(turned).to(device)
    local = (flat - lo[chart].unsqueeze(1)) * scale  # (F, 3, 2) texels from the chart's lower-left corner
    chart_height = torch.ceil((hi - lo)[:, 1] * scale)[chart].view(-1, 1)
    quarter_turn = torch.stack([chart_height - local[:, :, 1], local[:, :, 0]], dim=2)  # counter-clockwise
    local = torch.where(turned_t[chart].view(-1, 1, 1), quarter_turn, local)
    return (local + origin_t[chart].unsqueeze(1)) / float(texture_size)


@numba.njit(cache=True)
def _placed_corners_numba(flat, chart, lo, hi, scale, origin, turned, texture_size):
    """`_layout`'s UVs on the CPU in one pass over the corners (the torch path's operations, in its order)."""
    out = np.empty(flat.shape)
    for f in range(flat.shape[0]):
        c = chart[f]
        height = np.ceil((hi[c, 1] - lo[c, 1]) * scale)
        for k in range(3):
            x = (flat[f, k, 0] - lo[c, 0]) * scale
            y = (flat[f, k, 1] - lo[c, 1]) * scale
            if turned[c]:
                x, y = height - y, x
            out[f, k, 0] = (x + origin[c, 0]) / texture_size
            out[f, k, 1] = (y + origin[c, 1]) / texture_size
    return out


def _overlapping_placed_faces(corner_uv: torch.Tensor, selected: torch.Tensor, texture_size: int) -> torch.Tensor:
    """(F,) bool: `_overlapping_faces_torch` among the ``selected`` faces of the layout ``corner_uv`` (F, 3, 2),
    seen as the baker sees it (float32 UVs, texel centres)."""
    if corner_uv.device.type == "cpu":
        return torch.from_numpy(_overlapping_placed_faces_numba(corner_uv.numpy(), selected.numpy(), texture_size))
    return _overlapping_placed_faces_torch(corner_uv, selected, texture_size)


def _overlapping_placed_faces_torch(corner_uv: torch.Tensor, selected: torch.Tensor, texture_size: int
                                    ) -> torch.Tensor:
    """`_overlapping_placed_faces` by torch passes (any device)."""
    pix = corner_uv.to(torch.float32).to(torch.float64) * texture_size - 0.5
    involved = torch.zeros(selected.numel(), dtype=torch.bool, device=corner_uv.device)
    involved[selected] = _overlapping_faces_torch(pix[selected], texture_size)
    return involved


@numba.njit(cache=True)
def _overlapping_placed_faces_numba(corner_uv, selected, texture_size):
    """`_overlapping_placed_faces` on the CPU: the selected faces' pixel coordinates (the torch path's float32
    rounding and arithmetic), then `_overlapping_faces_numba`."""
    faces = np.nonzero(selected)[0]
    pix = np.empty((faces.shape[0], 3, 2))
    for i in range(faces.shape[0]):
        for k in range(3):
            for d in range(2):
                pix[i, k, d] = np.float64(np.float32(corner_uv[faces[i], k, d])) * texture_size - 0.5
    involved = np.zeros(selected.shape[0], np.bool_)
    involved[faces] = _overlapping_faces_numba(pix, texture_size)
    return involved


def _overlapping_faces_torch(pix: torch.Tensor, texture_size: int) -> torch.Tensor:
    """(F,) bool: faces that share a texel centre strictly inside both with another face, in the packed layout
    ``pix`` (F, 3, 2) (texel (i, j) centre at pixel coordinate (j, i)), by sorting every (face, texel) claim."""
    device = pix.device
    first = torch.ceil(pix.amin(dim=1)).clamp(0, texture_size - 1).long()
    last = torch.floor(pix.amax(dim=1)).clamp(0, texture_size - 1).long()
    width = (last[:, 0] - first[:, 0] + 1).clamp(min=0)
    height = (last[:, 1] - first[:, 1] + 1).clamp(min=0)
    e1 = pix[:, 1] - pix[:, 0]
    e2 = pix[:, 2] - pix[:, 0]
    twice_area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    count = torch.where(twice_area.abs() > 0, width * height, torch.zeros_like(width))
    face_ids = torch.arange(pix.shape[0], device=device)
    keys = _strict_claims_torch(pix, first, width, count, twice_area, face_ids, texture_size)
    texel = keys % (texture_size * texture_size)
    face = torch.div(keys, texture_size * texture_size, rounding_mode="floor")
    texel, order = torch.sort(texel, stable=True)
    face = face[order]
    twice = torch.nonzero(texel[1:] == texel[:-1]).squeeze(1)
    involved = torch.zeros(pix.shape[0], dtype=torch.bool, device=device)
    involved[face[twice]] = True
    involved[face[twice + 1]] = True
    return involved


@numba.njit(cache=True)
def _overlapping_faces_numba(pix, texture_size):
    """``_overlapping_faces_torch`` on the CPU: the torch path's texel boxes and areas per face, then one owner image
    instead of sorting claims (same arithmetic)."""
    owner = np.full(texture_size * texture_size, -1, np.int32)
    involved = np.zeros(pix.shape[0], np.bool_)
    for face in range(pix.shape[0]):
        c = pix[face]
        first_col = min(max(np.ceil(min(c[0, 0], c[1, 0], c[2, 0])), 0.0), texture_size - 1.0)
        first_row = min(max(np.ceil(min(c[0, 1], c[1, 1], c[2, 1])), 0.0), texture_size - 1.0)
        last_col = min(max(np.floor(max(c[0, 0], c[1, 0], c[2, 0])), 0.0), texture_size - 1.0)
        last_row = min(max(np.floor(max(c[0, 1], c[1, 1], c[2, 1])), 0.0), texture_size - 1.0)
        width = max(int(last_col) - int(first_col) + 1, 0)
        height = max(int(last_row) - int(first_row) + 1, 0)
        twice_area = (c[1, 0] - c[0, 0]) * (c[2, 1] - c[0, 1]) - (c[1, 1] - c[0, 1]) * (c[2, 0] - c[0, 0])
        if not abs(twice_area) > 0:
            continue
        for rank in range(width * height):
            col = int(first_col) + rank % width
            row = int(first_row) + rank // width
            w0, w1, w2 = texel_barycentrics(c, float(col), float(row), twice_area)
            if w0 > 1e-9 and w1 > 1e-9 and w2 > 1e-9:
                texel = row * texture_size + col
                if owner[texel] < 0:
                    owner[texel] = face
                else:
                    involved[owner[texel]] = True
                    involved[face] = True
    return involved


def _split_in_two(chart: torch.Tensor, flagged: torch.Tensor, centroid: torch.Tensor, charts: int) -> torch.Tensor:
    """(F,) 0/1: the side of the middle of its chart's longest 3-D extent each face's centroid lies on (0 for
    faces of charts that are not ``flagged``)."""
    if chart.device.type == "cpu":
        return torch.from_numpy(_split_in_two_numba(chart.numpy(), flagged.numpy(), centroid.numpy(), charts))
    return _split_in_two_torch(chart, flagged, centroid, charts)


def _split_in_two_torch(chart: torch.Tensor, flagged: torch.Tensor, centroid: torch.Tensor, charts: int
                        ) -> torch.Tensor:
    """`_split_in_two` by torch passes (any device)."""
    index = chart.view(-1, 1).expand(-1, 3)
    lo = torch.full((charts, 3), math.inf, dtype=centroid.dtype, device=centroid.device)
    hi = torch.full((charts, 3), -math.inf, dtype=centroid.dtype, device=centroid.device)
    lo = lo.scatter_reduce(0, index, centroid, reduce="amin")
    hi = hi.scatter_reduce(0, index, centroid, reduce="amax")
    axis = (hi - lo).argmax(dim=1)
    middle = 0.5 * (lo + hi).gather(1, axis.view(-1, 1)).squeeze(1)
    side = centroid.gather(1, axis[chart].view(-1, 1)).squeeze(1) > middle[chart]
    return (side & flagged[chart]).long()


@numba.njit(cache=True)
def _split_in_two_numba(chart, flagged, centroid, charts):
    """`_split_in_two` on the CPU: chart boxes of the centroids, the first longest axis (argmax's tie rule), sides."""
    lo = np.full((charts, 3), np.inf)
    hi = np.full((charts, 3), -np.inf)
    for f in range(chart.shape[0]):
        c = chart[f]
        for d in range(3):
            lo[c, d] = min(lo[c, d], centroid[f, d])
            hi[c, d] = max(hi[c, d], centroid[f, d])
    axis = np.zeros(charts, np.int64)
    for c in range(charts):
        for d in range(1, 3):
            if hi[c, d] - lo[c, d] > hi[c, axis[c]] - lo[c, axis[c]]:
                axis[c] = d
    side = np.zeros(chart.shape[0], np.int64)
    for f in range(chart.shape[0]):
        c = chart[f]
        if flagged[c] and centroid[f, axis[c]] > 0.5 * (lo[c, axis[c]] + hi[c, axis[c]]):
            side[f] = 1
    return side


def _peel_layers(flat: torch.Tensor, chart: torch.Tensor, overlapping: torch.Tensor, leaving: torch.Tensor,
                 rank: torch.Tensor, check_scale: float, pair_a: torch.Tensor, pair_b: torch.Tensor) -> torch.Tensor:
    """Chart ids after splitting the ``overlapping`` charts into layers that do not overlap themselves.

    Halving does not separate layers stacked along the projection axis (folds and crossings of a triangle soup;
    halving cuts across the longest extent, along the layers). Here the ``leaving`` faces (those lying over a face
    of lower ``rank`` of their chart, `_overlapping_charts`; ranked by depth along the projection axis, so a
    layer leaves as a whole) and the rest of each overlapping chart are regrouped
    into connected pieces; the leaving pieces are checked again, for ``PEEL_ROUNDS`` rounds, and faces that
    still overlap then become charts of their own. (Making every face of those charts a chart of its own left a
    triangle soup 66K one-face charts, whose padding gave 1.2 % of the texture to the surface.)
    """
    num_faces = chart.numel()
    for peel_round in range(PEEL_ROUNDS + 1):
        if not bool(overlapping.any()):
            break
        if peel_round == PEEL_ROUNDS:
            group = torch.where(leaving, num_faces + torch.arange(num_faces, device=chart.device), chart)
            return torch.unique(group, return_inverse=True)[1]
        chart = _group_components(chart * 2 + leaving.long(), pair_a, pair_b, chart, overlapping)
        charts = int(chart.max()) + 1
        lo, _ = _chart_boxes(flat, chart, charts)
        overlapping, leaving = _overlapping_charts(flat, chart, charts, lo, check_scale, leaving, rank)
    return chart


def _shelf_height(widths: np.ndarray, heights: np.ndarray, capacity: int) -> int:
    """Height of a shelf packing of rectangles in the given order (heights non-increasing) into rows of
    ``capacity``; a rectangle wider than a row gives a height above any capacity."""
    if widths.max() > capacity:
        return np.iinfo(np.int64).max
    # One compiled pass: the packer's bisection asks this 30 times per layout, and a soup's 40K charts fill
    # hundreds of rows (a Python loop of searchsorted per row took a second per unwrap).
    return int(_shelf_height_numba(np.ascontiguousarray(widths, np.int64), np.ascontiguousarray(heights, np.int64),
                                   int(capacity)))


@numba.njit(cache=True)
def _shelf_height_numba(widths, heights, capacity):
    # Rows take rectangles in order while their widths add up to at most capacity (each fits alone); the row's
    # tallest is its first (sorted).
    height = 0
    i = 0
    while i < widths.shape[0]:
        height += heights[i]
        row = 0
        while i < widths.shape[0] and row + widths[i] <= capacity:
            row += widths[i]
            i += 1
    return height


def _shelf_positions(widths: np.ndarray, heights: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-left corners of the rectangles of ``_shelf_height`` in the same order."""
    x = np.zeros(len(widths), np.int64)
    y = np.zeros(len(widths), np.int64)
    total_width = np.concatenate([[0], np.cumsum(widths)])
    row_y, start = 0, 0
    while start < len(widths):
        stop = int(np.searchsorted(total_width, total_width[start] + capacity, side="right")) - 1
        x[start:stop] = total_width[start:stop] - total_width[start]
        y[start:stop] = row_y
        row_y += int(heights[start])
        start = stop
    return x, y


def _pack(extent: np.ndarray, texture_size: int, padding: int, keep_scale: Optional[float] = None):
    """Shelf-pack chart rectangles of size ``extent`` (C, 2) (world units) at the largest common scale
    (``keep_scale`` instead when the charts fit at it).

    Returns (scale in texels per unit, origin (C, 2) int64 texel of each chart's lower-left corner, turned (C,)
    bool: the chart is rotated a quarter turn to lie flat).
    """
    turned = extent[:, 1] > extent[:, 0]
    size = np.where(turned[:, None], extent[:, ::-1], extent)
    # Tallest first; ties by width then chart index, so the order (and the packing) is deterministic.
    order = np.lexsort((np.arange(len(size)), -size[:, 0], -size[:, 1]))
    size = size[order]
    margin = (padding + 1) // 2  # the texture wraps: margins on both sides add up to at least the padding
    capacity = texture_size - 2 * margin + padding  # each rectangle carries its padding on the far side

    def rectangles(scale: float):
        return np.ceil(size * scale).astype(np.int64) + padding

    def fits(scale: float) -> bool:
        r = rectangles(scale)
        return _shelf_height(r[:, 0], r[:, 1], capacity) <= capacity

    if keep_scale is not None and fits(keep_scale):
        low = keep_scale
    else:
        low, high = 0.0, math.sqrt(texture_size ** 2 / max(float((size[:, 0] * size[:, 1]).sum()), 1e-300))
        high = min(high, (texture_size - 2 * margin) / max(float(size.max()), 1e-300))
        if fits(high):
            low = high
        for _ in range(SCALE_STEPS):
            middle = 0.5 * (low + high)
            if fits(middle):
                low = middle
            else:
                high = middle
    r = rectangles(low)
    x, y = _shelf_positions(r[:, 0], r[:, 1], capacity)
    origin = np.zeros((len(size), 2), np.int64)
    origin[order] = np.stack([x, y], axis=1) + margin
    return low, origin, turned


# ------------------------------------------------------------------------------------------------------ public


def voxel_atlas(vertices, faces, texture_size: int, *, padding: Optional[int] = None,
                device: Union[str, torch.device, None] = None, normal_floor: float = NORMAL_FLOOR,
                smoothing_rounds: int = SMOOTHING_ROUNDS) -> Atlas:
    """UV atlas of a (voxel-derived) triangle surface: axis-projected charts packed into one square texture.

    Args:
        vertices: (V, 3) float array or tensor.
        faces: (F, 3) int array or tensor, non-degenerate triangles.
        texture_size: S, the side of the square texture the charts are packed for.
        padding: texels between charts (default ``default_padding(S)``).
        device: where the per-face stages run (default: the device of ``vertices`` if a tensor, else CPU).
        normal_floor: smallest ``n . axis`` a face may be projected with (0 < floor < 1 / sqrt(3)).
        smoothing_rounds: rounds of label smoothing (0: pure dominant axis).

    Returns:
        ``Atlas`` (numpy arrays; same bytes for the same input on any device).
    """
    if device is None:
        device = vertices.device if isinstance(vertices, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    # No torch.set_num_threads here: the thread count is the caller's process-wide setting, and a library that
    # changes it for a while surprises every other thread of the process (a service runs several jobs).
    return _voxel_atlas(vertices, faces, texture_size, padding, device, normal_floor, smoothing_rounds)


def _voxel_atlas(vertices, faces, texture_size, padding, device, normal_floor, smoothing_rounds) -> Atlas:
    start_time = time.perf_counter()
    if not 0.0 < normal_floor < 1.0 / math.sqrt(3.0):
        raise ValueError(f"normal_floor must lie in (0, 1/sqrt(3)), got {normal_floor!r}")
    padding = default_padding(texture_size) if padding is None else int(padding)
    if padding < 0 or 2 * padding >= texture_size:
        raise ValueError(f"padding must lie in [0, texture_size / 2), got {padding}")
    v = torch.as_tensor(np.asarray(vertices) if not isinstance(vertices, torch.Tensor) else vertices)
    v = v.to(device=device, dtype=torch.float64)
    f = torch.as_tensor(np.asarray(faces) if not isinstance(faces, torch.Tensor) else faces)
    f = f.to(device=device, dtype=torch.int64)
    num_vertices, num_faces = v.shape[0], f.shape[0]
    if num_faces == 0:
        raise ValueError("voxel_atlas needs at least one face")

    corners = v[f]  # (F, 3, 3)
    normal = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1)
    twice_area = torch.linalg.vector_norm(normal, dim=1)
    if not bool((twice_area > 0).all()):
        raise ValueError(f"{int((twice_area <= 0).sum())} faces have zero area; remove degenerate faces first")
    unit = normal / twice_area.unsqueeze(1)
    alignment = torch.stack([unit[:, 0], -unit[:, 0], unit[:, 1], -unit[:, 1], unit[:, 2], -unit[:, 2]], dim=1)

    # Step 1-2: labels, smoothed over edge neighbours.
    keys, face_of, _, _ = _edges(f, num_vertices)
    shared = torch.nonzero(keys[1:] == keys[:-1]).squeeze(1)  # consecutive corner edges of one undirected edge
    pair_a, pair_b = face_of[shared], face_of[shared + 1]
    weight = torch.round(twice_area / torch.median(twice_area) * 16).clamp(1, 1 << 20).long()
    label = alignment.argmax(dim=1)
    label = _smooth_labels(label, alignment > normal_floor, weight, pair_a, pair_b, smoothing_rounds)

    # Step 3: charts.
    chart = _group_components(label, pair_a, pair_b)
    flat = _projected_corners(corners, label)
    centroid = corners.mean(dim=1)

    # Step 4: split self-overlapping and sparse large charts. Only pieces of overlapping charts are checked again:
    # a piece of a chart that does not overlap itself cannot either.
    projected_area = 0.5 * twice_area * alignment.gather(1, label.view(-1, 1)).squeeze(1)
    # Area sums are taken on the host in a fixed order (GPU atomics add in any order), so every device decides
    # the same splits.
    host_area = projected_area.cpu().numpy()
    total_area = float(host_area.sum())
    check_scale = OVERLAP_CHECK_SIZE / math.sqrt(total_area)
    unchecked = torch.ones(num_faces, dtype=torch.bool, device=device)
    for split_round in range(SPLIT_ROUNDS + 1):
        charts = int(chart.max()) + 1
        lo, hi = _chart_boxes(flat, chart, charts)
        last_round = split_round == SPLIT_ROUNDS
        if last_round:  # faces rank by depth along their projection axis, bottom first (ties: face order)
            axis = torch.div(label, 2, rounding_mode="floor")
            depth = centroid.gather(1, axis.view(-1, 1)).squeeze(1) * torch.where(label % 2 == 1, -1.0, 1.0)
            rank = torch.empty_like(label)
            rank[torch.sort(depth, stable=True).indices] = torch.arange(num_faces, device=device)
        checked = _overlapping_charts(flat, chart, charts, lo, check_scale, unchecked, rank if last_round else None)
        overlapping, leaving = checked if last_round else (checked, None)
        chart_area = torch.from_numpy(np.bincount(chart.cpu().numpy(), host_area, charts)).to(device)
        box_area = (hi - lo).prod(dim=1)
        sparse = (chart_area > LARGE_CHART_AREA * total_area) & (chart_area < MIN_FILL * box_area)
        flagged = overlapping | sparse
        if not bool(flagged.any()):
            break
        if last_round:
            chart = _peel_layers(flat, chart, overlapping, leaving, rank, check_scale, pair_a, pair_b)
            break
        unchecked = overlapping[chart]
        chart = _group_components(chart * 2 + _split_in_two(chart, flagged, centroid, charts), pair_a, pair_b,
                                  chart, flagged)
    # Step 5: pack (a handful of numbers per chart: on the host), then check the layout the baker will see
    # (float32 UVs, texel centres of the final scale) for self-overlaps the coarse check missed; split, repack.
    # The scale of the first packing is kept while the pieces still fit: charts are then sampled exactly as before
    # (whole-texel origins, whole-texel turns), so only the faces of re-split charts need checking again.
    scale, unchecked = None, torch.ones(num_faces, dtype=torch.bool, device=device)
    for layout_round in range(num_faces + 1):  # each round after SPLIT_ROUNDS dissolves a chart: bounded
        charts = int(chart.max()) + 1
        lo, hi = _chart_boxes(flat, chart, charts)
        corner_uv, new_scale = _layout(flat, chart, lo, hi, int(texture_size), padding, scale)
        if new_scale != scale:
            unchecked = torch.ones(num_faces, dtype=torch.bool, device=device)
        scale = new_scale
        involved = _overlapping_placed_faces(corner_uv, unchecked, int(texture_size))
        if not bool(involved.any()):
            break
        faces_in_chart = torch.bincount(chart, minlength=charts)
        involved_in_chart = torch.bincount(chart[involved], minlength=charts)
        redo = involved_in_chart > 0
        unchecked = redo[chart]
        if layout_round < SPLIT_ROUNDS:
            # Slivers (a few faces of a chart) are cut out into their own pieces; a chart that overlaps over a
            # large part of itself is halved instead.
            halve = involved_in_chart * HALVE_SHARE > faces_in_chart
            side = torch.where(halve[chart], _split_in_two(chart, halve, centroid, charts), involved.long())
            chart = _group_components(chart * 2 + side, pair_a, pair_b, chart, redo)
        else:
            group = torch.where(involved, num_faces + torch.arange(num_faces, device=device), chart)
            chart = torch.unique(group, return_inverse=True)[1]

    # Atlas vertices: one per (chart, original vertex).
    vertex_key = chart.view(-1, 1) * num_vertices + f
    unique_keys, new_faces = torch.unique(vertex_key.reshape(-1), return_inverse=True)
    uvs = torch.zeros(unique_keys.numel(), 2, dtype=torch.float64, device=device)
    uvs[new_faces] = corner_uv.reshape(-1, 2)  # every corner of one atlas vertex has the same uv
    vmapping = unique_keys % num_vertices

    vmapping = vmapping.cpu().numpy()
    new_faces = new_faces.view(-1, 3).cpu().numpy()
    uvs = uvs.to(torch.float32).cpu().numpy()
    return describe_atlas(v, vmapping, new_faces, uvs, start_time, face_chart=chart)


def describe_atlas(vertices, vmapping: np.ndarray, faces: np.ndarray, uvs: np.ndarray,
                   start_time: Optional[float] = None, face_chart: Optional[torch.Tensor] = None) -> Atlas:
    """An ``Atlas`` with statistics for any unwrap result (``voxel_atlas``, xatlas, ``triangle_atlas``).

    Charts are the groups of faces connected through shared atlas vertices; a seam is a mesh edge whose faces do
    not share that edge's atlas vertices. Runs on the device of ``vertices`` if a tensor.

    Args:
        vertices: (V, 3) float, the mesh's vertices.
        vmapping: (V',) int64, faces: (F, 3) int64, uvs: (V', 2) float32, as ``unwrap_uv`` returns them.
        start_time: ``time.perf_counter()`` when the unwrap began (``seconds`` is measured from it; 0 without).
        face_chart: (F,) chart ids 0..C-1 when the caller knows them (they must be the groups above).
    """
    v = vertices if isinstance(vertices, torch.Tensor) else torch.from_numpy(np.asarray(vertices))
    device = v.device
    v = v.to(torch.float64)
    vm = torch.from_numpy(np.asarray(vmapping, np.int64)).to(device)
    f = torch.from_numpy(np.asarray(faces, np.int64)).to(device)
    uv = torch.from_numpy(np.asarray(uvs, np.float64)).to(device)
    num_faces = f.shape[0]

    if face_chart is None:  # charts: faces sharing an atlas vertex
        corner_vertex, corner_order = torch.sort(f.reshape(-1), stable=True)
        same = torch.nonzero(corner_vertex[1:] == corner_vertex[:-1]).squeeze(1)
        face_of_corner = torch.div(corner_order, 3, rounding_mode="floor")
        root = _components(num_faces, face_of_corner[same], face_of_corner[same + 1])
        face_chart = torch.unique(root, return_inverse=True)[1]

    corner_uv = uv[f]
    e1 = corner_uv[:, 1] - corner_uv[:, 0]
    e2 = corner_uv[:, 2] - corner_uv[:, 0]
    utilisation = float((0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs()).sum())

    # Seams: mesh edges (original vertices) whose corner edges do not all use the same atlas vertices.
    keys, face_of, endpoints, order = _edges(vm[f], v.shape[0])
    atlas_key = _undirected_keys(f, max(int(vm.numel()), 1))[order]
    edge_start = torch.ones(keys.numel(), dtype=torch.bool, device=device)
    edge_start[1:] = keys[1:] != keys[:-1]
    edge_id = torch.cumsum(edge_start.long(), 0) - 1
    edges = int(edge_id[-1]) + 1
    key_lo = torch.full((edges,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device).scatter_reduce(
        0, edge_id, atlas_key, reduce="amin")
    key_hi = torch.full((edges,), -1, dtype=torch.int64, device=device).scatter_reduce(
        0, edge_id, atlas_key, reduce="amax")
    ends = endpoints[edge_start]
    length = torch.linalg.vector_norm(v[ends[:, 1]] - v[ends[:, 0]], dim=1)
    seam_length = float(length[key_lo != key_hi].sum())
    return Atlas(
        vmapping=np.asarray(vmapping, np.int64), faces=np.asarray(faces, np.int64), uvs=np.asarray(uvs, np.float32),
        face_chart=face_chart.cpu().numpy(), charts=int(face_chart.max()) + 1, utilisation=utilisation,
        seam_length=seam_length, seam_fraction=seam_length / max(float(length.sum()), 1e-300),
        seconds=0.0 if start_time is None else time.perf_counter() - start_time,
    )
