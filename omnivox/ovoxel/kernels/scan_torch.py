"""Vectorized PyTorch mesh -> flexible dual grid (spec ovoxel.md section 2), for CUDA (and CPU, for tests).

Same arithmetic as ``scan_numba`` for everything that decides the voxel set, order and flags (the scan runs in
float64 with one operation per kernel, so no fused multiply-add changes a rounding). The quadric sums are
accumulated in float64 in sorted order (deterministic) instead of the reference's float32 sequence, and the
boundary DDA's tie cases are ordered by exact parametric values rather than repeated additions; both move dual
vertices only within the spec's ~1e-3 voxel agreement band.

Work is expanded level by level with ``repeat_interleave`` (triangle x axis -> rows -> columns), so memory is
proportional to the number of crossings, not to the grid.
"""

from __future__ import annotations

import torch

from omnivox.ovoxel.grid import Grid

_F64 = torch.float64


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
    wl = (J + 1).to(_F64) * vsb[job]
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
    ul = (I + 1).to(_F64) * vsa[row]
    h = _lerp(lu[row], ru[row], ul, lh[row], rh[row])
    jc = job_c[job[row]]
    y = h / vs[jc]
    valid = (y > -1.0) & (y < res[jc].to(_F64))
    row, I, ul, h, y, jc = row[valid], I[valid], ul[valid], h[valid], y[valid], jc[valid]
    K = torch.trunc(y).long()
    J_, jb = J[row], job_b[job[row]]
    ja_ = (jc + 1) % 3
    m = len(row)
    owner = torch.empty((m, 3), dtype=torch.long, device=dev)
    point = torch.empty((m, 3), dtype=_F64, device=dev)
    ar = torch.arange(m, device=dev)
    owner[ar, ja_], owner[ar, jb], owner[ar, jc] = I, J_, K
    point[ar, ja_], point[ar, jb], point[ar, jc] = ul, wl[row], h
    tri = job[row] // 3
    return tri, jc, owner, point.float()


# Row-major upper triangle of a symmetric 4x4: Q00 Q01 Q02 Q03 Q11 Q12 Q13 Q22 Q23 Q33 (as in scan_numba).
_UPPER = torch.triu_indices(4, 4)


def plane_quadrics(triangles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triangle float32 unit normal (T,3) and plane quadric, 10 unique entries (T,10) (spec 2.2)."""
    p0, p1, p2 = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    n = torch.linalg.cross(p1 - p0, p2 - p1)
    sq = (n * n).sum(-1, keepdim=True)
    n = torch.where(sq > 0, n / sq.sqrt().clamp_min(1e-30), n)
    plane = torch.cat([n, -(n * p0).sum(-1, keepdim=True)], -1)
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


def segment_sum(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Deterministic float64 per-segment sums of (P, ...) values (sorted cumulative sums, no atomics)."""
    out_shape = (n,) + tuple(values.shape[1:])
    if len(segment) == 0:
        return torch.zeros(out_shape, dtype=_F64, device=values.device)
    order = torch.argsort(segment, stable=True)
    # Scan along the contiguous last dimension: CUDA's scan over an outer dimension of a narrow tensor is ~100x slower.
    v = values[order].to(_F64).reshape(len(order), -1).t().contiguous()
    cs = torch.cumsum(v, 1)
    counts = torch.bincount(segment, minlength=n)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    zero = torch.zeros_like(cs[:, :1])
    padded = torch.cat([zero, cs], 1)  # padded[:, i] = sum of the first i sorted values
    sums = padded[:, ends] - padded[:, starts]
    return sums.t().reshape(out_shape)


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
    d1 = (n * (c - P[:, 0])).sum(-1)
    d2 = (n * ((vs - c) - P[:, 0])).sum(-1)
    npd = (n * p).sum(-1)
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
    d = pe32.to(_F64) - ps32.to(_F64)
    length = d.norm(dim=-1)
    keep = length >= 1e-6
    ps32, d, length, eid = ps32[keep], d[keep], length[keep], keep.nonzero().squeeze(1)
    dh = d / length[:, None]
    p = ps32.to(_F64)
    A = torch.eye(3, dtype=_F64, device=dev) - dh[:, :, None] * dh[:, None, :]
    b = -(A @ p[:, :, None]).squeeze(-1)
    c = -(p * b).sum(-1)
    Qb = torch.zeros((len(p), 4, 4), dtype=_F64, device=dev)
    Qb[:, :3, :3], Qb[:, :3, 3], Qb[:, 3, :3], Qb[:, 3, 3] = A, b, b, c
    i, j = _UPPER.to(dev)
    Qb = Qb[:, i, j].float()
    start = torch.floor((ps32 / vs32).to(_F64)).long()
    step = torch.where(dh > 0, 1, -1)
    border = vs32 * (start + (step > 0).long()).float()
    inf = torch.full_like(dh, float("inf"))
    tmax = torch.where(dh == 0, inf, (border - ps32).to(_F64) / dh)
    tdelta = torch.where(dh == 0, inf, vs32.to(_F64) / dh.abs())
    # Crossings per axis with t <= length; the DDA takes them in t order, ties by priority z, then y, then x.
    n_steps = torch.where(tmax <= length[:, None], torch.floor((length[:, None] - tmax) / tdelta) + 1, torch.zeros_like(tmax))
    n_steps = torch.nan_to_num(n_steps, nan=0.0, posinf=0.0).long()
    item, j = _expand(n_steps.reshape(-1))
    edge, axis = item // 3, item % 3
    t = tmax[edge, axis] + j.to(_F64) * tdelta[edge, axis]
    order = torch.argsort(2 - axis, stable=True)
    order = order[torch.argsort(t[order], stable=True)]
    order = order[torch.argsort(edge[order], stable=True)]
    edge, axis = edge[order], axis[order]
    steps = torch.nn.functional.one_hot(axis, 3) * step[edge]
    cum = torch.cumsum(steps, 0)
    per_edge = torch.bincount(edge, minlength=len(p))
    before = torch.cumsum(per_edge, 0) - per_edge
    base = torch.where((before > 0)[:, None], cum[(before - 1).clamp_min(0)], torch.zeros_like(start))
    visited = torch.cat([start, start[edge] + cum - base[edge]], 0)
    visited_edge = torch.cat([torch.arange(len(p), device=dev), edge], 0)
    inside = ((visited >= 0) & (visited < res)).all(-1)
    visited, visited_edge = visited[inside], visited_edge[inside]
    vox = _lookup(sorted_keys, index_of_sorted, _keys(visited, res))
    hit = vox >= 0
    del eid
    return visited_edge[hit], vox[hit], Qb


def solve(q: torch.Tensor, coords: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Stage D solve (spec 2.5), batched in float64. q: (N,10) regularised quadric entries. Returns (N,3) float32
    dual vertices in the shifted frame."""
    dev = q.device
    q00, q01, q02, q03, q11, q12, q13, q22, q23, q33 = q.unbind(1)
    A = torch.stack([torch.stack([q00, q01, q02], -1), torch.stack([q01, q11, q12], -1),
                     torch.stack([q02, q12, q22], -1)], 1)
    vs = torch.as_tensor(grid.voxel_size, device=dev)
    lo = (vs * coords.float()).to(_F64)
    hi = (vs * (coords + 1).float()).to(_F64)
    bq = torch.stack([q03, q13, q23], -1)
    # Closed-form inverse (adjugate / determinant): elementwise, far faster than batched LU for 3x3 systems.
    a00, a01, a02, a11, a12, a22 = A[:, 0, 0], A[:, 0, 1], A[:, 0, 2], A[:, 1, 1], A[:, 1, 2], A[:, 2, 2]
    c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
    c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    r0, r1, r2 = -bq[:, 0], -bq[:, 1], -bq[:, 2]
    x = torch.stack([c00 * r0 + c01 * r1 + c02 * r2, c01 * r0 + c11 * r1 + c12 * r2,
                     c02 * r0 + c12 * r1 + c22 * r2], -1) / det[:, None]
    x = torch.where((det != 0)[:, None], x, torch.full_like(x, float("nan")))
    inside = ((x >= lo) & (x <= hi)).all(-1)

    def energy(p):
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        return (q00 * x * x + q11 * y * y + q22 * z * z + q33
                + 2 * (q01 * x * y + q02 * x * z + q12 * y * z + q03 * x + q13 * y + q23 * z))

    cands, energies = [], []
    inf = torch.tensor(float("inf"), dtype=_F64, device=dev)
    for f in range(3):  # faces
        g, h = (f + 1) % 3, (f + 2) % 3
        for bound in (lo, hi):
            beta = bound[:, f]
            rg = -(A[:, g, f] * beta + bq[:, g])
            rh = -(A[:, h, f] * beta + bq[:, h])
            dd = A[:, g, g] * A[:, h, h] - A[:, g, h] ** 2
            yg = (A[:, h, h] * rg - A[:, g, h] * rh) / dd
            yh = (A[:, g, g] * rh - A[:, g, h] * rg) / dd
            p = torch.empty_like(lo)
            p[:, f], p[:, g], p[:, h] = beta, yg, yh
            ok = (dd != 0) & (yg >= lo[:, g]) & (yg <= hi[:, g]) & (yh >= lo[:, h]) & (yh <= hi[:, h])
            cands.append(p)
            energies.append(torch.where(ok, energy(p), inf))
    for f in range(3):  # edges
        g, h = (f + 1) % 3, (f + 2) % 3
        for bg, bh in ((lo, lo), (lo, hi), (hi, lo), (hi, hi)):
            xf = -(A[:, f, g] * bg[:, g] + A[:, f, h] * bh[:, h] + bq[:, f]) / A[:, f, f]
            p = torch.empty_like(lo)
            p[:, f], p[:, g], p[:, h] = xf, bg[:, g], bh[:, h]
            ok = (A[:, f, f] != 0) & (xf >= lo[:, f]) & (xf <= hi[:, f])
            cands.append(p)
            energies.append(torch.where(ok, energy(p), inf))
    for corner in range(8):  # corners: x slowest, hi before lo
        p = torch.stack([(lo if corner & (4 >> i) else hi)[:, i] for i in range(3)], -1)
        cands.append(p)
        energies.append(energy(p))
    E = torch.stack(energies, 1)
    best = torch.argmin(E, 1)  # first minimum: earlier candidates win ties
    constrained = torch.stack(cands, 1)[torch.arange(len(q), device=dev), best]
    return torch.where(inside[:, None], x, constrained).float()


def mesh_to_dual_grid(vertices, faces, edges, grid: Grid, face_term: bool, boundary_weight: float,
                      regularization_weight: float):
    """Full conversion on the tensors' device. Inputs validated by ``omnivox.ovoxel.dual_grid``."""
    dev = vertices.device
    res = torch.as_tensor(grid.resolution, device=dev)
    lo = torch.as_tensor(grid.lo, device=dev)
    shifted = (vertices - lo).float()
    tris = shifted[faces]
    tri, axis, owner, point = scan_crossings(tris, grid)
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
        rows.append(torch.nn.functional.pad(Qb[be] * boundary_weight, (0, 4)))
        ids.append(bv)
    sums = segment_sum(torch.cat(rows, 0), torch.cat(ids), n)
    q, psum, cnt = sums[:, :10], sums[:, 10:13].float(), sums[:, 13].float()
    if regularization_weight > 0:
        mean = psum / cnt[:, None]
        s = (regularization_weight * cnt).to(_F64)[:, None]
        m = mean.to(_F64)
        # Entries (see _UPPER) of the quadric of the squared distance to the mean: [[I, -m], [-m^T, |m|^2]].
        reg = torch.zeros_like(q)
        reg[:, [0, 4, 7]] = 1.0
        reg[:, [3, 6, 8]] = -m
        reg[:, 9] = (m * m).sum(-1)
        q = q + s * reg
    dual = solve(q, coords, grid)
    return coords.int(), dual, flags


def triangle_voxel_pairs(triangles: torch.Tensor, grid: Grid):
    """GPU version of ``omnivox.ovoxel.scan.triangle_voxel_pairs``."""
    res = torch.as_tensor(grid.resolution, device=triangles.device)
    tri, axis, owner, _ = scan_crossings(triangles, grid)
    inc = _incidences(owner, axis).reshape(-1, 3)
    keys = _keys(inc, res)
    total = int(res.prod().item())
    combined = tri.repeat_interleave(4) * total + keys
    uniq, _ = _first_touch(combined)
    return uniq // total, torch.stack([uniq % total // (res[1] * res[2]), uniq % total // res[2] % res[1], uniq % total % res[2]], 1).int()
