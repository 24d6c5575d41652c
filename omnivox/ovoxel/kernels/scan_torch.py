"""Vectorized PyTorch mesh -> flexible dual grid (spec ovoxel.md section 2), for CUDA (and CPU, for tests).

The same arithmetic as ``scan_numba``, which is the reference's: the scan in float64, quadrics and sums in float32
in the reference's order, Eigen's float32 QR solve. Each torch call does one floating-point operation (no
reductions, no fused multiply-add can form), per-voxel sums are sequential in float32 (``segment_sum_f32``) and the
boundary DDA repeats the reference's additions, so on the CPU the result equals the reference's bit for bit
(tests/ovoxel/test_reference_parity.py; the CUDA run is held to the issue-20 bound there).

Work is expanded level by level with ``repeat_interleave`` (triangle x axis -> rows -> columns), so memory is
proportional to the number of crossings, not to the grid.
"""

from __future__ import annotations

import numpy as np
import torch

from omnivox.ovoxel.grid import Grid
from omnivox.ovoxel.kernels.ties import settle_vertex_ties

_F64 = torch.float64
_F32 = torch.float32


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root. torch.sqrt on the CPU is not (it differs from IEEE sqrt in the last bit on
    ~0.6% of float32 and float64 inputs here), CUDA's is; the reference's (the C++ library's) is."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sqrt(x.numpy()))
    return x.sqrt()


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For per-item counts, the item index of every expanded element and its rank inside its item."""
    total = int(counts.sum().item())
    item = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(total, device=counts.device) - starts[item]
    return item, rank


def _cell(x: torch.Tensor, size: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """trunc(x / size) clamped to [0, n-1] (values are clamped before the cast so huge ones stay defined)."""
    y = x / size
    return torch.minimum(torch.trunc(torch.maximum(torch.minimum(y, n.to(_F64)), y.new_tensor(-1.0))).long().clamp_min(0), n - 1)


def _lerp(x0, x1, x, y0, y1):
    alpha = (x - x0) / (x1 - x0)
    return torch.where(x0 == x1, y0, (1.0 - alpha) * y0 + alpha * y1)


def scan_crossings(triangles: torch.Tensor, grid: Grid):
    """All lattice-edge crossings in the reference's scan order (see ``scan_numba.scan_crossings``)."""
    dev = triangles.device
    T = triangles.shape[0]
    res = torch.as_tensor(grid.resolution, device=dev)
    vs32 = torch.as_tensor(grid.voxel_size, device=dev)
    vs = vs32.to(_F64)
    P = triangles.to(_F64)
    c_ax = torch.arange(3, device=dev)
    a_ax, b_ax = (c_ax + 1) % 3, (c_ax + 2) % 3
    # (T, 3 axes, 3 vertices) coordinates along a, b, c for each scan axis c.
    U = P[:, :, a_ax].permute(0, 2, 1)
    W = P[:, :, b_ax].permute(0, 2, 1)
    H = P[:, :, c_ax].permute(0, 2, 1)
    W, order = torch.sort(W, dim=-1, stable=True)
    U = U.gather(-1, order).reshape(-1, 3)
    H = H.gather(-1, order).reshape(-1, 3)
    W = W.reshape(-1, 3)
    job_c = c_ax.repeat(T)
    job_a, job_b = (job_c + 1) % 3, (job_c + 2) % 3
    vsb, gb = vs[job_b], res[job_b]
    r = _cell(W, vsb[:, None], gb[:, None])
    n1, n2 = r[:, 1] - r[:, 0], r[:, 2] - r[:, 1]

    # Rows: half 1 (apex T0, near T1, far T2) then half 2 (apex T2, near T1, far T0), ascending J.
    job, k = _expand(n1 + n2)
    second = k >= n1[job]
    J = torch.where(second, r[job, 1] + (k - n1[job]), r[job, 0] + k)
    apex = torch.where(second, 2, 0)
    far = 2 - apex
    Uj, Wj, Hj = U[job], W[job], H[job]

    def pick(X, i):
        return X.gather(1, i[:, None]).squeeze(1)

    au, aw, ah = pick(Uj, apex), pick(Wj, apex), pick(Hj, apex)
    nu, nw, nh = Uj[:, 1], Wj[:, 1], Hj[:, 1]
    fu, fw, fh = pick(Uj, far), pick(Wj, far), pick(Hj, far)
    # The reference multiplies the lattice index by the float32 voxel size in float32, then widens.
    wl = ((J + 1).to(_F32) * vs32[job_b][job]).to(_F64)
    lu, lh = _lerp(aw, nw, wl, au, nu), _lerp(aw, nw, wl, ah, nh)
    ru, rh = _lerp(aw, fw, wl, au, fu), _lerp(aw, fw, wl, ah, fh)
    swap = lu > ru
    lu, ru = torch.where(swap, ru, lu), torch.where(swap, lu, ru)
    lh, rh = torch.where(swap, rh, lh), torch.where(swap, lh, rh)
    ja = job_a[job]
    vsa, ga = vs[ja], res[ja]
    c0 = _cell(lu, vsa, ga)
    c1 = _cell(ru, vsa, ga)

    row, kk = _expand(c1 - c0)
    I = c0[row] + kk
    ul = ((I + 1).to(_F32) * vs32[ja][row]).to(_F64)
    h = _lerp(lu[row], ru[row], ul, lh[row], rh[row])
    jc = job_c[job[row]]
    y = h / vs[jc]
    valid = (y > -1.0) & (y < res[jc].to(_F64))
    row, I, ul, h, y, jc = row[valid], I[valid], ul[valid], h[valid], y[valid], jc[valid]
    K = torch.trunc(y).long()
    # The rows' and columns' planes (float32(index) * voxel size) for the height too (see scan_numba._scan_triangle).
    vsc32 = vs32[jc]

    def plane(k):
        return (k.to(_F32) * vsc32).to(_F64)

    K = torch.where((K > 0) & (h < plane(K)), K - 1, K)
    K = torch.where((K + 1 < res[jc]) & (h >= plane(K + 1)), K + 1, K)
    J_, jb = J[row], job_b[job[row]]
    ja_ = (jc + 1) % 3
    m = len(row)
    owner = torch.empty((m, 3), dtype=torch.long, device=dev)
    point = torch.empty((m, 3), dtype=_F64, device=dev)
    ar = torch.arange(m, device=dev)
    owner[ar, ja_], owner[ar, jb], owner[ar, jc] = I, J_, K
    point[ar, ja_], point[ar, jb], point[ar, jc] = ul, wl[row], h
    tri = job[row] // 3
    tie = torch.nonzero(h == plane(K)).squeeze(1)
    if len(tie):  # few: settled on the CPU by the one implementation of the rule
        tie_owner = owner[tie].cpu().numpy()
        settle_vertex_ties(triangles[tri[tie]].cpu().numpy(), np.arange(len(tie)), jc[tie].cpu().numpy(), tie_owner,
                           np.ones(len(tie), bool))
        owner[tie] = torch.from_numpy(tie_owner).to(dev)
    return tri, jc, owner, point.float()


# Row-major upper triangle of a symmetric 4x4: Q00 Q01 Q02 Q03 Q11 Q12 Q13 Q22 Q23 Q33 (as in scan_numba).
_UPPER = torch.triu_indices(4, 4)


def plane_quadrics(triangles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triangle float32 unit normal (T,3) and plane quadric, 10 unique entries (T,10) (spec 2.2).

    One float32 operation per torch call in the reference's order (see ``scan_numba.plane_quadrics``): no reduction
    kernel reorders a sum and no fused multiply-add changes a rounding.
    """
    p0, p1, p2 = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    a, b = p1 - p0, p2 - p1
    n = torch.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], 1)
    sq = n[:, 0] * n[:, 0] + (n[:, 1] * n[:, 1] + n[:, 2] * n[:, 2])
    pos = sq > 0
    n = torch.where(pos[:, None], n / _sqrt(torch.where(pos, sq, 1.0))[:, None], n)
    d = -((n[:, 0] * p0[:, 0] + n[:, 1] * p0[:, 1]) + n[:, 2] * p0[:, 2])
    plane = torch.cat([n, d[:, None]], -1)
    i, j = _UPPER.to(plane.device)
    return n, plane[:, i] * plane[:, j]


def _incidences(owner: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """(M, 4, 3) the 4 voxels around each crossed edge, in (da, db) = (0,0), (0,1), (1,0), (1,1) order."""
    a, b = (axis + 1) % 3, (axis + 2) % 3
    ea = torch.nn.functional.one_hot(a, 3)
    eb = torch.nn.functional.one_hot(b, 3)
    return torch.stack([owner, owner + eb, owner + ea, owner + ea + eb], 1)


def _keys(c: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    return (c[..., 0] * res[1] + c[..., 1]) * res[2] + c[..., 2]


def _first_touch(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique keys in order of first appearance, and each element's index into them."""
    uniq, inverse = torch.unique(keys, return_inverse=True)
    pos = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(uniq),), len(keys), device=keys.device, dtype=pos.dtype)
    first.scatter_reduce_(0, inverse, pos, reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=keys.device)
    return uniq[order], rank[inverse]


def _lookup(sorted_keys: torch.Tensor, index_of_sorted: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Voxel index of each key, or -1."""
    pos = torch.searchsorted(sorted_keys, keys).clamp_max(len(sorted_keys) - 1)
    return torch.where(sorted_keys[pos] == keys, index_of_sorted[pos], -1)


def _face_pairs(tris: torch.Tensor, normals: torch.Tensor, grid: Grid, sorted_keys, index_of_sorted):
    """(triangle, voxel) pairs of the face term (spec 2.3): existing voxels passing the conservative overlap test.

    Only the slab around each triangle's plane along its dominant normal axis is enumerated (one-voxel margin),
    which holds every voxel that can pass the plane test, so the accepted set equals the reference's bbox scan.
    """
    dev = tris.device
    res = torch.as_tensor(grid.resolution, device=dev)
    vs = torch.as_tensor(grid.voxel_size, device=dev)
    live = (normals != 0).any(-1).nonzero().squeeze(1)
    P, n = tris[live], normals[live]
    mn, mx = P.min(1).values, P.max(1).values
    lo = torch.maximum(torch.trunc(torch.maximum(mn / vs, mn.new_tensor(-1.0))).long(), torch.zeros_like(res))
    hi = torch.minimum(torch.trunc(torch.minimum(mx / vs + 1, (res + 1).float())).long(), res)
    ax = n.abs().argmax(-1)
    u, w = (ax + 1) % 3, (ax + 2) % 3

    def g(x, i):
        return x.gather(1, i[:, None]).squeeze(1)

    nu_ = (g(hi, u) - g(lo, u)).clamp_min(0)
    nw_ = (g(hi, w) - g(lo, w)).clamp_min(0)
    t, k = _expand(nu_ * nw_)
    iu = g(lo, u)[t] + k // nw_[t]
    iw = g(lo, w)[t] + k % nw_[t]
    # Column slab [ks, ke) along ax: between the roots of the two extreme-corner plane distances (float64).
    nd, vd, Pd = n.to(_F64), vs.to(_F64), P.to(_F64)
    cc = torch.where(nd > 0, vd, torch.zeros_like(nd))
    d1 = (nd * (cc - Pd[:, 0])).sum(-1)
    d2 = (nd * ((vd - cc) - Pd[:, 0])).sum(-1)
    tu, tw, tax = u[t], w[t], ax[t]
    base = g(nd[t], tu) * iu * vd[tu] + g(nd[t], tw) * iw * vd[tw]
    nk = g(nd[t], tax) * vd[tax]
    k1, k2 = -(base + d1[t]) / nk, -(base + d2[t]) / nk
    lo_ax, hi_ax = g(lo[t], tax), g(hi[t], tax)
    margin = 0.01  # float32 rounding of the exact test stays far inside this (see scan_numba._SLAB_MARGIN)
    ks = torch.maximum(torch.ceil(torch.clamp(torch.minimum(k1, k2) - margin, -1.0, 1e9)).long(), lo_ax)
    ke = torch.minimum(torch.floor(torch.clamp(torch.maximum(k1, k2) + margin, -1.0, 1e9)).long() + 1, hi_ax)
    col, kk = _expand((ke - ks).clamp_min(0))
    tt = t[col]
    q = torch.empty((len(col), 3), dtype=torch.long, device=dev)
    ar = torch.arange(len(col), device=dev)
    q[ar, tax[col]] = ks[col] + kk
    q[ar, tu[col]] = iu[col]
    q[ar, tw[col]] = iw[col]
    vox = _lookup(sorted_keys, index_of_sorted, _keys(q, res))
    keep = vox >= 0
    q, tt, vox = q[keep], tt[keep], vox[keep]
    ok = _overlaps(P[tt], n[tt], vs, q)
    return live[tt[ok]], vox[ok]


def _overlaps(P: torch.Tensor, n: torch.Tensor, vs: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Conservative triangle/box overlap of spec 2.3, batched, float32."""
    p = q.float() * vs
    c = torch.where(n > 0, vs.expand_as(n), torch.zeros_like(n))
    def dot(u, v):  # left to right, as the reference's
        return (u[:, 0] * v[:, 0] + u[:, 1] * v[:, 1]) + u[:, 2] * v[:, 2]

    d1 = dot(n, c - P[:, 0])
    d2 = dot(n, (vs - c) - P[:, 0])
    npd = dot(n, p)
    ok = (npd + d1) * (npd + d2) <= 0
    zero = torch.zeros((), device=P.device)
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        s = torch.where(n[:, k] < 0, -1.0, 1.0)
        for st, en in ((0, 1), (1, 2), (2, 0)):
            ei = P[:, en, i] - P[:, st, i]
            ej = P[:, en, j] - P[:, st, j]
            mi, mj = -s * ej, s * ei
            d = -(mi * P[:, st, i] + mj * P[:, st, j]) + (torch.maximum(mi, zero) * vs[i] + torch.maximum(mj, zero) * vs[j])
            ok &= mi * p[:, i] + mj * p[:, j] + d >= 0
    return ok


def _boundary_pairs(shifted: torch.Tensor, edges: torch.Tensor, grid: Grid, sorted_keys, index_of_sorted):
    """Voxels visited by the 3-D DDA along each boundary edge (spec 2.4), and each edge's line quadric (E,10)."""
    dev = shifted.device
    res = torch.as_tensor(grid.resolution, device=dev)
    vs32 = torch.as_tensor(grid.voxel_size, device=dev)
    ps32, pe32 = shifted[edges[:, 0]], shifted[edges[:, 1]]
    # The reference's arithmetic (see scan_numba.boundary_term): float32 difference, float64 length and direction,
    # A = I - d d^T rounded entry by entry, b = -A p and c = (p^T A) . p in float32.
    d = (pe32 - ps32).to(_F64)
    length = _sqrt(d[:, 0] * d[:, 0] + (d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]))
    keep = length >= 1e-6
    ps32, d, length = ps32[keep], d[keep], length[keep]
    dh = d / length[:, None]
    eye = torch.eye(3, dtype=_F32, device=dev)
    A = eye - (dh[:, :, None] * dh[:, None, :]).to(_F32)
    p = ps32
    b = -(A[:, :, 0] * p[:, 0:1] + (A[:, :, 1] * p[:, 1:2] + A[:, :, 2] * p[:, 2:3]))
    row = p[:, 0:1] * A[:, 0, :] + (p[:, 1:2] * A[:, 1, :] + p[:, 2:3] * A[:, 2, :])
    c = (row[:, 0] * p[:, 0] + row[:, 1] * p[:, 1]) + row[:, 2] * p[:, 2]
    Qb = torch.stack([A[:, 0, 0], A[:, 0, 1], A[:, 0, 2], b[:, 0], A[:, 1, 1], A[:, 1, 2], b[:, 1], A[:, 2, 2],
                      b[:, 2], c], 1)
    start = torch.floor((ps32 / vs32).to(_F64)).long()
    step = torch.where(dh > 0, 1, -1)
    border = vs32 * (start + (step > 0).long()).float()
    inf = torch.full_like(dh, float("inf"))
    tmax = torch.where(dh == 0, inf, (border - ps32).to(_F64) / dh)
    tdelta = torch.where(dh == 0, inf, vs32.to(_F64) / dh.abs())
    # The reference's DDA, run for all edges at once: tMax grows by repeated float64 additions (not j * tDelta), so
    # ties and the last step round exactly as there. One iteration per step of the longest edge.
    cur = start.clone()
    edge_ids, cells = [torch.arange(len(ps32), device=dev)], [start]
    active = torch.arange(len(ps32), device=dev)
    while len(active):
        tm = tmax[active]
        ax = torch.where(tm[:, 0] < tm[:, 1], torch.where(tm[:, 0] < tm[:, 2], 0, 2),
                         torch.where(tm[:, 1] < tm[:, 2], 1, 2))
        go = ~(tm.gather(1, ax[:, None]).squeeze(1) > length[active])
        active, ax = active[go], ax[go]
        cur[active, ax] += step[active, ax]
        tmax[active, ax] += tdelta[active, ax]
        edge_ids.append(active)
        cells.append(cur[active])
    visited_edge = torch.cat(edge_ids)
    # Edge by edge, each edge's voxels in visiting order: the reference adds the edges' terms in sorted edge order.
    by_edge = torch.argsort(visited_edge, stable=True)
    visited, visited_edge = torch.cat(cells)[by_edge], visited_edge[by_edge]
    inside = ((visited >= 0) & (visited < res)).all(-1)
    visited, visited_edge = visited[inside], visited_edge[inside]
    vox = _lookup(sorted_keys, index_of_sorted, _keys(visited, res))
    hit = vox >= 0
    return visited_edge[hit], vox[hit], Qb


def segment_sum_f32(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Per-segment float32 sums of (P, C) values, each segment summed left to right in the rows' order, as the
    reference's ``+=`` sequence (no atomics, no tree reduction: bit-identical on any device).

    Rows are ranked inside their segment; step r adds every segment's r-th row at once (one gather-add-scatter on
    distinct segments), so the work is P additions in max-segment-length steps.
    """
    out = torch.zeros((n, values.shape[1]), dtype=_F32, device=values.device)
    if len(segment) == 0:
        return out
    order = torch.argsort(segment, stable=True)
    seg = segment[order]
    counts = torch.bincount(seg, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(seg), device=seg.device) - starts[seg]
    by_rank = torch.argsort(rank, stable=True)
    bounds = torch.cumsum(torch.bincount(rank), 0).tolist()
    rows, seg = order[by_rank], seg[by_rank]
    lo = 0
    for hi in bounds:
        s = seg[lo:hi]
        out[s] = out[s] + values[rows[lo:hi]]
        lo = hi
    return out


# Float32 constants of Eigen's ColPivHouseholderQR (see scan_numba._qr_factor).
_EPS = float(np.finfo(np.float32).eps)
_TINY = float(np.finfo(np.float32).tiny)
_NORM_DOWNDATE = float(np.sqrt(np.float32(_EPS)))


def _col_sq_norm(M, r0, k):
    n = len(M)
    if r0 == 0 and n == 3:
        return M[0][k] * M[0][k] + (M[1][k] * M[1][k] + M[2][k] * M[2][k])
    s = M[r0][k] * M[r0][k]
    for r in range(r0 + 1, n):
        s = s + M[r][k] * M[r][k]
    return s


def _qr_factor(M):
    """Batched twin of ``scan_numba._qr_factor``: M is an n x n list of (B,) float32 tensors (copied). Returns the
    factor, the reflector coefficients, the column permutation (list of (B,) long) and the nonzero pivot count."""
    n = len(M)
    M = [list(row) for row in M]
    ref = M[0][0]
    zero = torch.zeros_like(ref)
    nrm_d = [_sqrt(_col_sq_norm(M, 0, k)) for k in range(n)]
    nrm_u = list(nrm_d)
    biggest = nrm_u[0]
    for k in range(1, n):
        biggest = torch.where(nrm_u[k] > biggest, nrm_u[k], biggest)
    t = biggest * _EPS
    threshold = t * t / float(n)
    nonzero = torch.full(ref.shape, n, dtype=torch.long, device=ref.device)
    hc, trans = [], []
    for k in range(n):
        best = torch.full(ref.shape, k, dtype=torch.long, device=ref.device)
        best_norm = nrm_u[k]
        for j in range(k + 1, n):
            take = nrm_u[j] > best_norm
            best = torch.where(take, j, best)
            best_norm = torch.where(take, nrm_u[j], best_norm)
        nonzero = torch.where((nonzero == n) & (best_norm * best_norm < threshold * float(n - k)), k, nonzero)
        trans.append(best)
        for j in range(k + 1, n):
            sw = best == j
            for r in range(n):
                M[r][k], M[r][j] = torch.where(sw, M[r][j], M[r][k]), torch.where(sw, M[r][k], M[r][j])
            nrm_u[k], nrm_u[j] = torch.where(sw, nrm_u[j], nrm_u[k]), torch.where(sw, nrm_u[k], nrm_u[j])
            nrm_d[k], nrm_d[j] = torch.where(sw, nrm_d[j], nrm_d[k]), torch.where(sw, nrm_d[k], nrm_d[j])
        c0 = M[k][k]
        tau = zero
        if k + 1 < n:
            tail = _col_sq_norm(M, k + 1, k)
            small = tail <= _TINY
            beta = _sqrt(c0 * c0 + tail)
            beta = torch.where(c0 >= 0, -beta, beta)
            beta = torch.where(small, c0, beta)
            for r in range(k + 1, n):
                M[r][k] = torch.where(small, zero, M[r][k] / (c0 - beta))
            tau = torch.where(small, zero, (beta - c0) / beta)
            M[k][k] = beta
        hc.append(tau)
        apply = tau != 0
        for j in range(k + 1, n):
            w = M[k + 1][k] * M[k + 1][j]
            for r in range(k + 2, n):
                w = w + M[r][k] * M[r][j]
            w = w + M[k][j]
            M[k][j] = torch.where(apply, M[k][j] - tau * w, M[k][j])
            for r in range(k + 1, n):
                M[r][j] = torch.where(apply, M[r][j] - (tau * M[r][k]) * w, M[r][j])
        for j in range(k + 1, n):
            live = nrm_u[j] != 0
            t = M[k][j].abs() / nrm_u[j]
            t = (1.0 + t) * (1.0 - t)
            t = torch.where(t < 0, zero, t)
            ratio = nrm_u[j] / nrm_d[j]
            again = t * (ratio * ratio) <= _NORM_DOWNDATE
            direct = _sqrt(_col_sq_norm(M, k + 1, j)) if k + 1 < n else zero
            nrm_d[j] = torch.where(live & again, direct, nrm_d[j])
            nrm_u[j] = torch.where(live, torch.where(again, direct, nrm_u[j] * _sqrt(t)), nrm_u[j])
    perm = [torch.full(ref.shape, k, dtype=torch.long, device=ref.device) for k in range(n)]
    for k in range(n):
        for j in range(k + 1, n):
            sw = trans[k] == j
            perm[k], perm[j] = torch.where(sw, perm[j], perm[k]), torch.where(sw, perm[k], perm[j])
    return M, hc, perm, nonzero


def _qr_solve(M, hc, perm, nonzero, c):
    """Batched twin of ``scan_numba._qr_solve``; c is a list of n (B,) float32 right-hand sides. Returns x."""
    n = len(M)
    c = list(c)
    for k in range(n):
        active = nonzero > k
        tau = hc[k]
        if k + 1 == n:
            c[k] = torch.where(active, c[k] * (1.0 - tau), c[k])
            continue
        w = M[k + 1][k] * c[k + 1]
        for r in range(k + 2, n):
            w = w + M[r][k] * c[r]
        w = w + c[k]
        upd = active & (tau != 0)
        c[k] = torch.where(upd, c[k] - tau * w, c[k])
        for r in range(k + 1, n):
            c[r] = torch.where(upd, c[r] - (tau * M[r][k]) * w, c[r])
    for i in range(n - 1, -1, -1):
        active = (nonzero > i) & (c[i] != 0)
        c[i] = torch.where(active, c[i] / M[i][i], c[i])
        for r in range(i):
            c[r] = torch.where(active, c[r] - c[i] * M[r][i], c[r])
    vals = [torch.where(nonzero > i, c[i], torch.zeros_like(c[i])) for i in range(n)]
    out = []
    for t in range(n):
        x = vals[n - 1]
        for i in range(n - 2, -1, -1):
            x = torch.where(perm[i] == t, vals[i], x)
        out.append(x)
    return out


def _energy(Q, p):
    """[p, 1] Q [p, 1]^T in float32, summed as the reference's SSE reduction: (0 + 2) + (1 + 3) twice."""
    def s4(a0, a1, a2, a3):
        return (a0 + a2) + (a1 + a3)

    r = [s4(p[0] * Q[0][j], p[1] * Q[1][j], p[2] * Q[2][j], Q[3][j]) for j in range(4)]
    return s4(r[0] * p[0], r[1] * p[1], r[2] * p[2], r[3])


def solve(Qf: torch.Tensor, coords: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Stage D solve (spec 2.5), batched, in the reference's float32 arithmetic (Eigen's pivoting QR reproduced,
    see ``scan_numba.solve_dual_vertices``). Qf: (N,10) regularised float32 quadric entries. Returns (N,3)
    float32 dual vertices in the shifted frame."""
    dev = Qf.device
    e = Qf.unbind(1)
    Q = [[e[0], e[1], e[2], e[3]], [e[1], e[4], e[5], e[6]], [e[2], e[5], e[7], e[8]], [e[3], e[6], e[8], e[9]]]
    vs = torch.as_tensor(grid.voxel_size, device=dev)
    lo = coords.to(_F32) * vs
    hi = (coords + 1).to(_F32) * vs
    M, hc, perm, nz = _qr_factor([[Q[i][j] for j in range(3)] for i in range(3)])
    x = _qr_solve(M, hc, perm, nz, [-Q[i][3] for i in range(3)])
    x = torch.stack(x, 1)
    inside = ((x >= lo) & (x <= hi)).all(1)
    out = x.clone()
    idx = (~inside).nonzero().squeeze(1)
    if len(idx) == 0:
        return out
    Q = [[q[idx] for q in row] for row in Q]
    lo, hi, x = lo[idx], hi[idx], x[idx]
    L = lo.unbind(1)
    H = hi.unbind(1)
    best = torch.full_like(L[0], float("inf"))
    xs = list(x.unbind(1))

    def offer(p, ok):
        nonlocal best
        en = _energy(Q, p)
        take = ok & (en < best)
        best = torch.where(take, en, best)
        for i in range(3):
            xs[i] = torch.where(take, p[i], xs[i])

    def inbox(v, i):
        return (L[i] <= v) & (v <= H[i])

    for f in range(3):  # faces: fix axis f at lo then hi, solve the 2x2 system of the other two
        g, h = (f + 1) % 3, (f + 2) % 3
        M2, hc2, perm2, nz2 = _qr_factor([[Q[g][g], Q[g][h]], [Q[h][g], Q[h][h]]])
        for bound in (L, H):
            beta = bound[f]
            y = _qr_solve(M2, hc2, perm2, nz2, [-(Q[g][f] * beta + Q[g][3]), -(Q[h][f] * beta + Q[h][3])])
            p = [None] * 3
            p[f], p[g], p[h] = beta, y[0], y[1]
            offer(p, inbox(y[0], g) & inbox(y[1], h))
    for f in range(3):  # edges: free axis f, the others at (lo,lo), (lo,hi), (hi,lo), (hi,hi)
        g, h = (f + 1) % 3, (f + 2) % 3
        for bg, bh in ((L, L), (L, H), (H, L), (H, H)):
            xf = -((Q[f][g] * bg[g] + Q[f][h] * bh[h]) + Q[f][3]) / Q[f][f]
            p = [None] * 3
            p[f], p[g], p[h] = xf, bg[g], bh[h]
            offer(p, inbox(xf, f))
    every = torch.ones_like(best, dtype=torch.bool)
    for corner in range(8):  # corners: x slowest, hi before lo
        offer([(L if corner & (4 >> i) else H)[i] for i in range(3)], every)
    out[idx] = torch.stack(xs, 1)
    return out


def mesh_to_dual_grid(vertices, faces, edges, grid: Grid, face_term: bool, boundary_weight: float,
                      regularization_weight: float, crossings=None):
    """Full conversion on the tensors' device. Inputs validated by ``omnivox.ovoxel.dual_grid``.

    ``crossings``: the scan of these triangles (``omnivox.ovoxel.scan.Crossings``, torch) when the caller has it
    already; scanned here otherwise.
    """
    dev = vertices.device
    res = torch.as_tensor(grid.resolution, device=dev)
    lo = torch.as_tensor(grid.lo, device=dev)
    shifted = (vertices - lo).float()
    tris = shifted[faces]
    if crossings is None:
        tri, axis, owner, point = scan_crossings(tris, grid)
    else:
        tri, axis, owner, point = crossings.tri, crossings.axis, crossings.owner, crossings.point
    if len(tri) == 0:
        return (torch.zeros((0, 3), dtype=torch.int32, device=dev), torch.zeros((0, 3), device=dev),
                torch.zeros((0, 3), dtype=torch.bool, device=dev))
    normals, Qt = plane_quadrics(tris)
    inc = _incidences(owner, axis).reshape(-1, 3)
    keys, vox = _first_touch(_keys(inc, res))
    n = len(keys)
    coords = torch.stack([keys // (res[1] * res[2]), keys // res[2] % res[1], keys % res[2]], 1)
    flags = torch.zeros((n, 3), dtype=torch.bool, device=dev)
    owner_vox = vox.reshape(-1, 4)[:, 0]
    flags[owner_vox, axis] = True
    # One sorted segment sum for everything accumulated per voxel: 10 quadric entries, crossing point, count.
    inc_tri = tri.repeat_interleave(4)
    rows = [torch.cat([Qt[inc_tri], point.repeat_interleave(4, 0), torch.ones_like(point[:, :1]).repeat_interleave(4, 0)], 1)]
    ids = [vox]
    sorted_keys, sort_idx = torch.sort(_keys(coords, res))
    if face_term:
        ft, fv = _face_pairs(tris, normals, grid, sorted_keys, sort_idx)
        rows.append(torch.nn.functional.pad(Qt[ft], (0, 4)))
        ids.append(fv)
    if boundary_weight > 0 and len(edges):
        be, bv, Qb = _boundary_pairs(shifted, edges, grid, sorted_keys, sort_idx)
        w = torch.tensor(np.float32(boundary_weight), device=dev)
        rows.append(torch.nn.functional.pad(w * Qb[be], (0, 4)))
        ids.append(bv)
    sums = segment_sum_f32(torch.cat(rows, 0), torch.cat(ids), n)
    q, psum, cnt = sums[:, :10], sums[:, 10:13], sums[:, 13]
    if regularization_weight > 0:
        # Float32, in the reference's order: Q += (w * cnt) * [[I, -m], [-m^T, m . m]], m = sum / cnt.
        m = psum / cnt[:, None]
        s = torch.tensor(np.float32(regularization_weight), device=dev) * cnt
        q = q.clone()
        for k in (0, 4, 7):
            q[:, k] = q[:, k] + s
        for k, i in ((3, 0), (6, 1), (8, 2)):
            q[:, k] = q[:, k] + s * -m[:, i]
        q[:, 9] = q[:, 9] + s * ((m[:, 0] * m[:, 0] + m[:, 1] * m[:, 1]) + m[:, 2] * m[:, 2])
    dual = solve(q, coords, grid)
    return coords.int(), dual, flags


def triangle_voxel_pairs(triangles: torch.Tensor, grid: Grid):
    """GPU version of ``omnivox.ovoxel.scan.triangle_voxel_pairs``."""
    tri, axis, owner, _ = scan_crossings(triangles, grid)
    return _voxel_pairs(tri, axis, owner, grid)


def crossing_voxel_pairs(crossings):
    """``triangle_voxel_pairs`` of an existing torch scan (``omnivox.ovoxel.scan.Crossings``)."""
    return _voxel_pairs(crossings.tri, crossings.axis, crossings.owner, crossings.grid)


def _voxel_pairs(tri, axis, owner, grid: Grid):
    res = torch.as_tensor(grid.resolution, device=tri.device)
    inc = _incidences(owner, axis).reshape(-1, 3)
    keys = _keys(inc, res)
    total = int(res.prod().item())
    combined = tri.repeat_interleave(4) * total + keys
    uniq, _ = _first_touch(combined)
    return uniq // total, torch.stack([uniq % total // (res[1] * res[2]), uniq % total // res[2] % res[1], uniq % total % res[2]], 1).int()
