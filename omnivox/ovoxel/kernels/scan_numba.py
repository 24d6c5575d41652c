"""CPU kernels (numba) for mesh -> flexible dual grid.

Everything here follows ovoxel.md section 2 and the reference's arithmetic to the bit: the scan conversion (2.2) in
float64 on the float32 shifted vertices, the quadrics and their sums in float32 in the reference's order (crossings
in scan order, then the face term in triangle order, then boundary edges in sorted order, then regularisation), and
the solve with Eigen's float32 column-pivoting QR reproduced operation by operation (design.md, "Parity with the
reference"; tests/ovoxel/test_reference_parity.py).

Layout of a quadric: the 10 unique entries of the symmetric 4x4 matrix, row-major upper triangle:
``Q00 Q01 Q02 Q03 Q11 Q12 Q13 Q22 Q23 Q33``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from omnivox.ovoxel.kernels import hashtable
from omnivox.ovoxel.kernels.ties import settle_vertex_ties


@nb.njit(cache=True, inline="always")
def _lerp(x0, x1, x, y0, y1):
    if x0 == x1:
        return y0
    alpha = (x - x0) / (x1 - x0)
    return (1.0 - alpha) * y0 + alpha * y1


@nb.njit(cache=True, inline="always")
def _clamped_cell(x, size, n):
    # trunc(x / size) clamped to [0, n-1]; clamping before the cast keeps huge values defined.
    y = x / size
    if not (y > -1.0):  # also catches NaN
        return 0
    if y >= n:
        return n - 1
    k = int(y)
    return min(max(k, 0), n - 1)


@nb.njit(cache=True)
def _scan_triangle(P, res, vs, out_tri, out_axis, out_owner, out_point, out_tie, tri, start, write):
    """Scan one triangle for lattice-edge crossings (spec 2.2). Returns the number of crossings.

    With ``write`` False only counts; with True also stores them from index ``start`` on.
    """
    count = 0
    for c in range(3):
        a = (c + 1) % 3
        b = (c + 2) % 3
        # (u, w, h) triples, stably sorted by w (3-element insertion sort is stable).
        u0, w0, h0 = np.float64(P[0, a]), np.float64(P[0, b]), np.float64(P[0, c])
        u1, w1, h1 = np.float64(P[1, a]), np.float64(P[1, b]), np.float64(P[1, c])
        u2, w2, h2 = np.float64(P[2, a]), np.float64(P[2, b]), np.float64(P[2, c])
        if w1 < w0:
            u0, w0, h0, u1, w1, h1 = u1, w1, h1, u0, w0, h0
        if w2 < w1:
            u1, w1, h1, u2, w2, h2 = u2, w2, h2, u1, w1, h1
            if w1 < w0:
                u0, w0, h0, u1, w1, h1 = u1, w1, h1, u0, w0, h0
        vsa, vsb, vsc = np.float64(vs[a]), np.float64(vs[b]), np.float64(vs[c])
        ga, gb, gc = res[a], res[b], res[c]
        r0 = _clamped_cell(w0, vsb, gb)
        r1 = _clamped_cell(w1, vsb, gb)
        r2 = _clamped_cell(w2, vsb, gb)
        for half in range(2):
            if half == 0:
                rs, re = r0, r1
                au, aw, ah, nu, nw, nh, fu, fw, fh = u0, w0, h0, u1, w1, h1, u2, w2, h2
            else:
                rs, re = r1, r2
                au, aw, ah, nu, nw, nh, fu, fw, fh = u2, w2, h2, u1, w1, h1, u0, w0, h0
            for J in range(rs, re):
                # The reference multiplies the lattice index by the float32 voxel size in float32, then widens.
                wl = np.float64(np.float32(J + 1) * vs[b])
                lu = _lerp(aw, nw, wl, au, nu)
                lh = _lerp(aw, nw, wl, ah, nh)
                ru = _lerp(aw, fw, wl, au, fu)
                rh = _lerp(aw, fw, wl, ah, fh)
                if lu > ru:
                    lu, lh, ru, rh = ru, rh, lu, lh
                c0 = _clamped_cell(lu, vsa, ga)
                c1 = _clamped_cell(ru, vsa, ga)
                for I in range(c0, c1):
                    ul = np.float64(np.float32(I + 1) * vs[a])
                    h = _lerp(lu, ru, ul, lh, rh)
                    y = h / vsc
                    if not (y > -1.0 and y < gc):
                        continue
                    K = int(y)
                    # Rows and columns sit at float32(index) * voxel size; the height index comes from a division,
                    # which for a voxel size that is not a power of two can land on the other side of a plane that
                    # h lies on (or within rounding of). Use the rows' planes here too, so all axes see one lattice.
                    plane = np.float64(np.float32(K) * vs[c])
                    if K > 0 and h < plane:
                        K -= 1
                        plane = np.float64(np.float32(K) * vs[c])
                    elif K + 1 < gc and h >= np.float64(np.float32(K + 1) * vs[c]):
                        K += 1
                        plane = np.float64(np.float32(K) * vs[c])
                    if write:
                        m = start + count
                        out_tri[m] = tri
                        out_axis[m] = c
                        out_owner[m, a] = I
                        out_owner[m, b] = J
                        out_owner[m, c] = K
                        out_point[m, a] = np.float32(ul)
                        out_point[m, b] = np.float32(wl)
                        out_point[m, c] = np.float32(h)
                        out_tie[m] = h == plane  # exactly on a lattice vertex: see ties.py
                    count += 1
    return count


def scan_crossings(triangles, res, vs):
    """All lattice-edge crossings of all triangles, in the reference's scan order, with crossings exactly on a
    lattice vertex settled (``ties.settle_vertex_ties``).

    Args:
        triangles: (T, 3, 3) float32, shifted frame (world - lo).
        res: (3,) int64 grid resolution.
        vs: (3,) float32 voxel size.

    Returns:
        tri (M,) int32, axis (M,) int8, owner (M, 3) int32 (the voxel owning the crossed edge),
        point (M, 3) float32 (the crossing point, shifted frame).
    """
    tri, axis, owner, point, tie = scan_crossings_as_reference(triangles, res, vs)
    settle_vertex_ties(triangles, tri, axis, owner, tie)
    return tri, axis, owner, point


@nb.njit(cache=True, parallel=True)
def scan_crossings_as_reference(triangles, res, vs):
    """``scan_crossings`` as the reference computes it (a crossing exactly on a lattice plane takes the edge above on
    every axis), plus ``tie`` (M,) bool: the crossings exactly on a lattice vertex."""
    T = triangles.shape[0]
    counts = np.zeros(T + 1, dtype=np.int64)
    dummy_i = np.zeros(1, dtype=np.int32)
    dummy_a = np.zeros(1, dtype=np.int8)
    dummy_o = np.zeros((1, 3), dtype=np.int32)
    dummy_p = np.zeros((1, 3), dtype=np.float32)
    dummy_t = np.zeros(1, dtype=np.bool_)
    for t in nb.prange(T):
        counts[t + 1] = _scan_triangle(triangles[t], res, vs, dummy_i, dummy_a, dummy_o, dummy_p, dummy_t, t, 0,
                                       False)
    offsets = np.cumsum(counts)
    M = offsets[T]
    tri = np.empty(M, dtype=np.int32)
    axis = np.empty(M, dtype=np.int8)
    owner = np.empty((M, 3), dtype=np.int32)
    point = np.empty((M, 3), dtype=np.float32)
    tie = np.empty(M, dtype=np.bool_)
    for t in nb.prange(T):
        _scan_triangle(triangles[t], res, vs, tri, axis, owner, point, tie, t, offsets[t], True)
    return tri, axis, owner, point, tie


@nb.njit(cache=True, parallel=True)
def plane_quadrics(triangles):
    """Per-triangle unit normal (T, 3) float32 and plane quadric (T, 10) float32 (spec 2.2).

    The normal is ``normalize((P1 - P0) x (P2 - P1))`` in float32; a zero normal stays zero (degenerate triangle).
    """
    T = triangles.shape[0]
    normals = np.zeros((T, 3), dtype=np.float32)
    quadrics = np.zeros((T, 10), dtype=np.float32)
    for t in nb.prange(T):
        p0 = triangles[t, 0]
        p1 = triangles[t, 1]
        p2 = triangles[t, 2]
        ax, ay, az = p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]
        bx, by, bz = p2[0] - p1[0], p2[1] - p1[1], p2[2] - p1[2]
        nx = ay * bz - az * by
        ny = az * bx - ax * bz
        nz = ax * by - ay * bx
        # Summation orders as the reference's outputs show: its squared norm sums x + (y + z), its n . P0 sums
        # (x + y) + z (checked against ../shared/reference/ovoxel: any other pair moves 20-50% of dual vertices).
        sq = nx * nx + (ny * ny + nz * nz)
        if sq > 0:
            norm = np.sqrt(sq)
            nx, ny, nz = nx / norm, ny / norm, nz / norm
        d = -((nx * p0[0] + ny * p0[1]) + nz * p0[2])
        normals[t, 0], normals[t, 1], normals[t, 2] = nx, ny, nz
        pi = (nx, ny, nz, d)
        k = 0
        for i in range(4):
            for j in range(i, 4):
                quadrics[t, k] = pi[i] * pi[j]
                k += 1
    return normals, quadrics


# ---------------------------------------------------------------------------------------------------------------
# Voxel index: a dense directory of 8x8x8 bricks, each brick a dense block of voxel indices. Surface voxels cluster,
# so look-ups touch few cache lines (a hash table scatters neighbours across memory and was the bottleneck).

BRICK = 8
BRICK_SHIFT = 3
BRICK_VOLUME = 512


@nb.njit(cache=True)
def brick_directory(res, buffer):
    """The brick directory for ``res``, all -1: a prefix of ``buffer`` when that is large enough (reusing memory
    avoids the page faults of a fresh allocation on every call), else a new array."""
    dims = np.empty(3, dtype=np.int64)
    for i in range(3):
        dims[i] = (res[i] + BRICK - 1) >> BRICK_SHIFT
    size = dims[0] * dims[1] * dims[2]
    directory = buffer[:size] if buffer.shape[0] >= size else np.empty(size, dtype=np.int32)
    directory[:] = -1
    return directory, dims


@nb.njit(cache=True, inline="always")
def _brick_of(dims, x, y, z):
    return ((x >> BRICK_SHIFT) * dims[1] + (y >> BRICK_SHIFT)) * dims[2] + (z >> BRICK_SHIFT)


@nb.njit(cache=True, inline="always")
def _slot_in_brick(x, y, z):
    return (((x & 7) << 6) | ((y & 7) << 3) | (z & 7))


@nb.njit(cache=True, inline="always")
def brick_lookup(directory, dims, bricks, x, y, z):
    """Voxel index at (x, y, z) (inside the grid), or -1."""
    b = directory[_brick_of(dims, x, y, z)]
    if b < 0:
        return -1
    return bricks[np.int64(b) * BRICK_VOLUME + _slot_in_brick(x, y, z)]


@nb.njit(cache=True, inline="always")
def _around_edge(owner, m, a, b, da, db):
    """Voxel (da, db) of the 4 around crossing m's edge: owner + da * e_a + db * e_b."""
    q0, q1, q2 = owner[m, 0], owner[m, 1], owner[m, 2]
    if da == 1:
        q0, q1, q2 = (q0 + 1, q1, q2) if a == 0 else ((q0, q1 + 1, q2) if a == 1 else (q0, q1, q2 + 1))
    if db == 1:
        q0, q1, q2 = (q0 + 1, q1, q2) if b == 0 else ((q0, q1 + 1, q2) if b == 1 else (q0, q1, q2 + 1))
    return q0, q1, q2


@nb.njit(cache=True)
def allocate_bricks(directory, dims, owner, axis, buffer):
    """Give every brick touched by a crossing's 4 voxels a block of voxel slots (all -1), in ``buffer`` if it is
    large enough."""
    count = 0
    for m in range(owner.shape[0]):
        c = axis[m]
        a = (c + 1) % 3
        b = (c + 2) % 3
        for da in range(2):
            for db in range(2):
                q0, q1, q2 = _around_edge(owner, m, a, b, da, db)
                k = _brick_of(dims, q0, q1, q2)
                if directory[k] < 0:
                    directory[k] = count
                    count += 1
    size = count * BRICK_VOLUME
    bricks = buffer[:size] if buffer.shape[0] >= size else np.empty(size, dtype=np.int32)
    bricks[:] = -1
    return bricks


@nb.njit(cache=True)
def accumulate_crossings(tri, axis, owner, point, quadrics, res, coords, psum, cnt, flags, Q, dir_buffer,
                         brick_buffer):
    """Stage A accumulation (spec 2.2 table): voxel set in first-touch order, flags, crossing sums, quadrics.

    ``coords, psum, cnt, flags, Q`` are work arrays of any common length (grown here when the voxels outgrow them),
    ``dir_buffer``/``brick_buffer`` memory for the voxel index; pass the returned arrays back next time to reuse
    their pages. Returns coords (N,3) int32, point_sum (N,3) float32, count (N,) float32, flags (N,) uint8 (bit c =
    axis c), Q (N,10) float32 (views of the work arrays), the voxel index (directory, dims, bricks) for later
    look-ups, and the full work arrays.
    """
    M = tri.shape[0]
    directory, dims = brick_directory(res, dir_buffer)
    bricks = allocate_bricks(directory, dims, owner, axis, brick_buffer)
    cap = coords.shape[0]
    if cap < 16:  # every voxel is touched by a crossing, each crossing touches 4: N <= 4M; usually N ~ M
        cap = max(16, M + 16)
        coords = np.empty((cap, 3), dtype=np.int32)
        psum = np.empty((cap, 3), dtype=np.float32)
        cnt = np.empty(cap, dtype=np.float32)
        flags = np.empty(cap, dtype=np.uint8)
        Q = np.empty((cap, 10), dtype=np.float32)
    n = 0
    m = 0
    while True:
        m, n = _accumulate_run(m, n, tri, axis, owner, point, quadrics, directory, dims, bricks, coords, psum, cnt,
                               flags, Q)
        if m == M:
            break
        cap *= 2  # out of room: grow every per-voxel array and go on
        coords = _grow(coords, cap)
        psum = _grow(psum, cap)
        cnt = _grow1(cnt, cap)
        flags = _grow1(flags, cap)
        Q = _grow(Q, cap)
    return (coords[:n], psum[:n], cnt[:n], flags[:n], Q[:n], directory, dims, bricks,
            (coords, psum, cnt, flags, Q, directory, bricks))


@nb.njit(cache=True)
def _accumulate_run(m, n, tri, axis, owner, point, quadrics, directory, dims, bricks, coords, psum, cnt, flags, Q):
    """Accumulate crossings m, m+1, ... until done or until the arrays might overflow; returns the next crossing
    and the voxel count. (Growing the arrays inside this loop made LLVM reload them on every access: 4x slower.)"""
    M = tri.shape[0]
    cap = coords.shape[0]
    while m < M:
        if n + 4 > cap:  # a crossing creates at most 4 voxels
            return m, n
        c = axis[m]
        a = (c + 1) % 3
        b = (c + 2) % 3
        t = tri[m]
        for da in range(2):
            for db in range(2):
                q0, q1, q2 = _around_edge(owner, m, a, b, da, db)
                slot = np.int64(directory[_brick_of(dims, q0, q1, q2)]) * BRICK_VOLUME + _slot_in_brick(q0, q1, q2)
                v = bricks[slot]
                if v < 0:
                    v = n
                    bricks[slot] = v
                    coords[n, 0], coords[n, 1], coords[n, 2] = q0, q1, q2
                    psum[n, 0], psum[n, 1], psum[n, 2] = point[m, 0], point[m, 1], point[m, 2]
                    cnt[n] = 1.0
                    flags[n] = 0
                    for k in range(10):
                        Q[n, k] = quadrics[t, k]
                    n += 1
                else:
                    psum[v, 0] += point[m, 0]
                    psum[v, 1] += point[m, 1]
                    psum[v, 2] += point[m, 2]
                    cnt[v] += 1.0
                    for k in range(10):
                        Q[v, k] += quadrics[t, k]
                if da == 0 and db == 0:
                    flags[v] |= np.uint8(1 << c)
        m += 1
    return m, n


@nb.njit(cache=True)
def _grow(x, cap):
    y = np.empty((cap, x.shape[1]), dtype=x.dtype)
    y[: x.shape[0]] = x
    return y


@nb.njit(cache=True)
def _grow1(x, cap):
    y = np.empty(cap, dtype=x.dtype)
    y[: x.shape[0]] = x
    return y


# ---------------------------------------------------------------------------------------------------------------
# Stage B: face term.


@nb.njit(cache=True, inline="always")
def _overlaps(P, n, vs, x, y, z):
    """Conservative triangle/box overlap test of spec 2.3 (Schwarz & Seidel), float32 arithmetic."""
    px, py, pz = np.float32(x) * vs[0], np.float32(y) * vs[1], np.float32(z) * vs[2]
    c0 = vs[0] if n[0] > 0 else np.float32(0.0)
    c1 = vs[1] if n[1] > 0 else np.float32(0.0)
    c2 = vs[2] if n[2] > 0 else np.float32(0.0)
    # n . x sums left to right, as the reference's (pinned Eigen's) dot product of 3-vectors.
    d1 = (n[0] * (c0 - P[0, 0]) + n[1] * (c1 - P[0, 1])) + n[2] * (c2 - P[0, 2])
    d2 = (n[0] * ((vs[0] - c0) - P[0, 0]) + n[1] * ((vs[1] - c1) - P[0, 1])) + n[2] * ((vs[2] - c2) - P[0, 2])
    npd = (n[0] * px + n[1] * py) + n[2] * pz
    if (npd + d1) * (npd + d2) > 0:
        return False
    p = (px, py, pz)
    for proj in range(3):
        # (i, j, k): XY -> z, YZ -> x, ZX -> y
        if proj == 0:
            i, j, k = 0, 1, 2
        elif proj == 1:
            i, j, k = 1, 2, 0
        else:
            i, j, k = 2, 0, 1
        s = np.float32(-1.0) if n[k] < 0 else np.float32(1.0)
        for e in range(3):
            st = e
            en = (e + 1) % 3
            ei = P[en, i] - P[st, i]
            ej = P[en, j] - P[st, j]
            mi = -s * ej
            mj = s * ei
            d = -(mi * P[st, i] + mj * P[st, j]) + (max(mi, np.float32(0.0)) * vs[i] + max(mj, np.float32(0.0)) * vs[j])
            if mi * p[i] + mj * p[j] + d < 0:
                return False
    return True


_SLAB_MARGIN = 0.01
_BOUND, _STORE, _ADD = 0, 1, 2


@nb.njit(cache=True, inline="always")
def _bbox_cells(P, vs, res, i):
    """Voxel range [lo, hi) of a triangle's bounding box along axis i (spec 2.3: trunc, +1, clamped)."""
    mn = min(P[0, i], min(P[1, i], P[2, i]))
    mx = max(P[0, i], max(P[1, i], P[2, i]))
    a = mn / vs[i]
    b = mx / vs[i] + np.float32(1.0)
    return max(int(max(a, np.float32(-1.0))), 0), min(int(min(b, np.float32(res[i] + 1))), res[i])


@nb.njit(cache=True, inline="always")  # inlined: the mode flags become constants
def _face_candidates(P, n, vs, res, directory, dims, bricks, out, start, mode, Q, quadrics, t):
    """Existing voxels overlapping triangle P (= triangle t). Returns their number; what else it does is ``mode``:
    _BOUND: count candidate voxels only (an upper bound: no look-ups or tests); _STORE: store the voxels' indices in
    ``out`` from ``start``; _ADD: add quadric t to their rows of Q.

    The reference tests every voxel of the triangle's bounding box; we test only, per column along the triangle's
    dominant normal axis, the voxels between the roots of the plane test, which contain every voxel that can pass it,
    so the accepted set is the same at a fraction of the work.
    """
    # Scalars and tuples only: this runs twice per triangle, and heap allocations here dominated its cost.
    l0, h0 = _bbox_cells(P, vs, res, 0)
    l1, h1 = _bbox_cells(P, vs, res, 1)
    l2, h2 = _bbox_cells(P, vs, res, 2)
    lo = (l0, l1, l2)
    hi = (h0, h1, h2)
    ax = 0
    if abs(n[1]) > abs(n[ax]):
        ax = 1
    if abs(n[2]) > abs(n[ax]):
        ax = 2
    u = (ax + 1) % 3
    w = (ax + 2) % 3
    count = 0
    nk = np.float64(n[ax]) * np.float64(vs[ax])
    c = (np.float64(vs[0]) if n[0] > 0 else 0.0, np.float64(vs[1]) if n[1] > 0 else 0.0,
         np.float64(vs[2]) if n[2] > 0 else 0.0)
    for iu in range(lo[u], hi[u]):
        for iw in range(lo[w], hi[w]):
            if nk != 0.0:
                # Roots in the column coordinate of the two extreme-corner plane distances.
                base = np.float64(n[u]) * iu * vs[u] + np.float64(n[w]) * iw * vs[w]
                r1 = base + np.float64(n[0]) * (c[0] - P[0, 0]) + np.float64(n[1]) * (c[1] - P[0, 1]) + np.float64(n[2]) * (c[2] - P[0, 2])
                r2 = base + np.float64(n[0]) * ((vs[0] - c[0]) - P[0, 0]) + np.float64(n[1]) * ((vs[1] - c[1]) - P[0, 1]) + np.float64(n[2]) * ((vs[2] - c[2]) - P[0, 2])
                # Voxel k passes the plane test iff k lies between the roots; the float32 test can differ from
                # this float64 bound only by rounding (< 1e-3 voxel even at 4096^3), hence the small margin.
                k1 = -r1 / nk
                k2 = -r2 / nk
                kmin = min(k1, k2) - _SLAB_MARGIN
                kmax = max(k1, k2) + _SLAB_MARGIN
                ks = lo[ax] if kmin < lo[ax] else max(lo[ax], np.int64(np.ceil(kmin)))
                ke = hi[ax] if kmax >= hi[ax] else min(hi[ax], np.int64(np.floor(kmax)) + 1)
            else:
                ks, ke = lo[ax], hi[ax]
            if mode == _BOUND:
                count += max(ke - ks, 0)
                continue
            for k in range(ks, ke):
                q = (0, 0, 0)
                if ax == 0:
                    q = (k, iu, iw)
                elif ax == 1:
                    q = (iw, k, iu)
                else:
                    q = (iu, iw, k)
                v = brick_lookup(directory, dims, bricks, q[0], q[1], q[2])
                if v < 0:
                    continue
                if not _overlaps(P, n, vs, q[0], q[1], q[2]):
                    continue
                if mode == _STORE:
                    out[start + count] = v
                elif mode == _ADD:
                    for j in range(10):
                        Q[v, j] += quadrics[t, j]
                count += 1
    return count


@nb.njit(cache=True, parallel=True)
def face_term(triangles, normals, quadrics, vs, res, directory, dims, bricks, Q, serial=False):
    """Stage B (spec 2.3): add each triangle's plane quadric to every existing voxel it overlaps, in triangle order.

    ``serial``: one pass on the calling thread (for small inputs); else a parallel search, then a sequential sum."""
    T = triangles.shape[0]
    dummy = np.zeros(1, dtype=np.int32)
    if serial:
        # One thread: test and add in one pass, in triangle order (the reference's order).
        for t in range(T):
            if normals[t, 0] != 0 or normals[t, 1] != 0 or normals[t, 2] != 0:  # else its quadric is zero
                _face_candidates(triangles[t], normals[t], vs, res, directory, dims, bricks, dummy, 0, _ADD, Q,
                                 quadrics, t)
        return
    counts = np.zeros(T + 1, dtype=np.int64)
    live = np.zeros(T, dtype=np.bool_)
    for t in range(T):
        live[t] = normals[t, 0] != 0 or normals[t, 1] != 0 or normals[t, 2] != 0
    # Pass 1: a cheap upper bound per triangle (candidate count, no look-ups); pass 2: the real tests, once.
    for t in nb.prange(T):
        if live[t]:  # a degenerate triangle's quadric is zero: nothing to add
            counts[t + 1] = _face_candidates(triangles[t], normals[t], vs, res, directory, dims, bricks, dummy, 0,
                                             _BOUND, Q, quadrics, t)
    offsets = np.cumsum(counts)
    hits = np.empty(offsets[T], dtype=np.int32)
    found = np.zeros(T, dtype=np.int64)
    for t in nb.prange(T):
        if live[t]:
            found[t] = _face_candidates(triangles[t], normals[t], vs, res, directory, dims, bricks, hits, offsets[t],
                                        _STORE, Q, quadrics, t)
    # Sequential in triangle order so every voxel's float32 sum has the reference's order.
    for t in range(T):
        for h in range(offsets[t], offsets[t] + found[t]):
            v = hits[h]
            for k in range(10):
                Q[v, k] += quadrics[t, k]


# ---------------------------------------------------------------------------------------------------------------
# Stage C: boundary term.


@nb.njit(cache=True)
def boundary_term(vertices, edges, weight, vs, res, directory, dims, bricks, Q):
    """Stage C (spec 2.4): add ``weight`` x the squared distance to each boundary edge's infinite line to every
    existing voxel that a 3-D DDA along the edge visits. ``edges`` (E, 2) int64 sorted, s < e per row."""
    gy, gz = np.int64(res[1]), np.int64(res[2])
    w32 = np.float32(weight)
    Qb = np.empty(10, dtype=np.float32)
    A = np.empty((3, 3), dtype=np.float32)
    bvec = np.empty(3, dtype=np.float32)
    row = np.empty(3, dtype=np.float32)
    for e in range(edges.shape[0]):
        ps = vertices[edges[e, 0]]
        pe = vertices[edges[e, 1]]
        # The reference's arithmetic: the difference in float32, its length and direction in float64 (squared norm
        # summed x + (y + z)), A = I - d d^T rounded to float32 entry by entry and everything after it in float32
        # (matrix-vector rows x + (y + z), dot products left to right: the pinned Eigen's reductions).
        d0 = np.float64(pe[0] - ps[0])
        d1 = np.float64(pe[1] - ps[1])
        d2 = np.float64(pe[2] - ps[2])
        length = np.sqrt(d0 * d0 + (d1 * d1 + d2 * d2))
        if length < 1e-6:
            continue
        d = (d0 / length, d1 / length, d2 / length)
        for i in range(3):
            for j in range(3):
                ddt = np.float32(d[i] * d[j])
                A[i, j] = (np.float32(1.0) if i == j else np.float32(0.0)) - ddt
        for i in range(3):
            # b = -A p_s, each row summed as x + (y + z)
            bvec[i] = -(A[i, 0] * ps[0] + (A[i, 1] * ps[1] + A[i, 2] * ps[2]))
        for j in range(3):
            row[j] = ps[0] * A[0, j] + (ps[1] * A[1, j] + ps[2] * A[2, j])
        cval = (row[0] * ps[0] + row[1] * ps[1]) + row[2] * ps[2]  # c = (p_s^T A) . p_s, a dot: left to right
        Qb[0], Qb[1], Qb[2], Qb[3] = A[0, 0], A[0, 1], A[0, 2], bvec[0]
        Qb[4], Qb[5], Qb[6] = A[1, 1], A[1, 2], bvec[1]
        Qb[7], Qb[8] = A[2, 2], bvec[2]
        Qb[9] = cval
        # Amanatides-Woo traversal from P_s.
        cur = np.empty(3, dtype=np.int64)
        step = np.empty(3, dtype=np.int64)
        tmax = np.empty(3, dtype=np.float64)
        tdelta = np.empty(3, dtype=np.float64)
        for i in range(3):
            cur[i] = np.int64(np.floor(np.float64(ps[i] / vs[i])))
            step[i] = 1 if d[i] > 0 else -1
            if d[i] == 0:
                tmax[i] = np.inf
                tdelta[i] = np.inf
            else:
                border = vs[i] * np.float32(cur[i] + (1 if step[i] > 0 else 0))
                tmax[i] = np.float64(border - ps[i]) / d[i]
                tdelta[i] = np.float64(vs[i]) / abs(d[i])
        while True:
            if 0 <= cur[0] < res[0] and 0 <= cur[1] < res[1] and 0 <= cur[2] < res[2]:
                v = brick_lookup(directory, dims, bricks, cur[0], cur[1], cur[2])
                if v >= 0:
                    for k in range(10):
                        Q[v, k] += w32 * Qb[k]
            if tmax[0] < tmax[1]:
                ax = 0 if tmax[0] < tmax[2] else 2
            else:
                ax = 1 if tmax[1] < tmax[2] else 2
            if tmax[ax] > length:
                break
            cur[ax] += step[ax]
            tmax[ax] += tdelta[ax]


# ---------------------------------------------------------------------------------------------------------------
# Stage D: regularisation and constrained solve, in the reference's float32 arithmetic.
#
# The reference solves with Eigen's column-pivoting Householder QR in float32 (3x3 for the unconstrained minimum,
# 2x2 for the face candidates). Float64 closed forms give a more accurate answer, but one that differs from the
# reference's on nearly every voxel (by ~1e-6 world units, and by up to a voxel where near-tied box candidates flip),
# so the QR is reproduced here operation by operation: the same pivots, reflectors, rounding and summation orders.

_F32_EPS = np.float32(np.finfo(np.float32).eps)
_F32_TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float: Eigen's threshold for a zero reflector
_NORM_DOWNDATE = np.float32(np.sqrt(_F32_EPS))  # when an updated column norm is recomputed (LAPACK xGEQPF rule)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@nb.njit(cache=True, inline="always")
def _col_sq_norm(M, n, r0, k):
    """Squared norm of M[r0:n, k]: a full 3-column sums x + (y + z) (Eigen's unrolled fixed-size reduction), a
    shorter tail sums left to right."""
    if r0 == 0 and n == 3:
        return M[0, k] * M[0, k] + (M[1, k] * M[1, k] + M[2, k] * M[2, k])
    s = M[r0, k] * M[r0, k]
    for r in range(r0 + 1, n):
        s += M[r, k] * M[r, k]
    return s


@nb.njit(cache=True, inline="always")  # inlined: n becomes a constant, the loops unroll
def _qr_factor(M, n, hc, perm, nrm_u, nrm_d, trans):
    """Column-pivoting Householder QR of M[:n, :n] in place (float32, n = 2 or 3), as Eigen's ColPivHouseholderQR
    computes it: R on and above the diagonal, reflector tails below it, coefficients in ``hc``, the column
    permutation in ``perm``. Returns the number of pivots above Eigen's rank threshold."""
    for k in range(n):
        nrm_d[k] = np.sqrt(_col_sq_norm(M, n, 0, k))
        nrm_u[k] = nrm_d[k]
    biggest = nrm_u[0]
    for k in range(1, n):
        if nrm_u[k] > biggest:
            biggest = nrm_u[k]
    t = biggest * _F32_EPS
    threshold = t * t / np.float32(n)
    nonzero = n
    for k in range(n):
        best = k  # first column of largest (updated) norm
        for j in range(k + 1, n):
            if nrm_u[j] > nrm_u[best]:
                best = j
        if nonzero == n and nrm_u[best] * nrm_u[best] < threshold * np.float32(n - k):
            nonzero = k
        trans[k] = best
        if best != k:
            for r in range(n):
                M[r, k], M[r, best] = M[r, best], M[r, k]
            nrm_u[k], nrm_u[best] = nrm_u[best], nrm_u[k]
            nrm_d[k], nrm_d[best] = nrm_d[best], nrm_d[k]
        # Householder reflector of M[k:, k]: H x = (beta, 0, ...), H = I - tau v v^T, v = (1, tail / (c0 - beta)).
        c0 = M[k, k]
        tau = _ZERO
        beta = c0
        if k + 1 < n:
            tail = _col_sq_norm(M, n, k + 1, k)
            if tail <= _F32_TINY:
                for r in range(k + 1, n):
                    M[r, k] = _ZERO
            else:
                beta = np.sqrt(c0 * c0 + tail)
                if c0 >= _ZERO:
                    beta = -beta
                for r in range(k + 1, n):
                    M[r, k] = M[r, k] / (c0 - beta)
                tau = (beta - c0) / beta
        hc[k] = tau
        M[k, k] = beta
        if tau != _ZERO:  # apply H to the remaining columns
            for j in range(k + 1, n):
                w = M[k + 1, k] * M[k + 1, j]
                for r in range(k + 2, n):
                    w += M[r, k] * M[r, j]
                w = w + M[k, j]
                M[k, j] = M[k, j] - tau * w
                for r in range(k + 1, n):
                    M[r, j] = M[r, j] - (tau * M[r, k]) * w
        for j in range(k + 1, n):  # downdate the remaining column norms
            if nrm_u[j] != _ZERO:
                t = abs(M[k, j]) / nrm_u[j]
                t = (_ONE + t) * (_ONE - t)
                if t < _ZERO:
                    t = _ZERO
                ratio = nrm_u[j] / nrm_d[j]
                if t * (ratio * ratio) <= _NORM_DOWNDATE:
                    nrm_d[j] = np.sqrt(_col_sq_norm(M, n, k + 1, j)) if k + 1 < n else _ZERO
                    nrm_u[j] = nrm_d[j]
                else:
                    nrm_u[j] = nrm_u[j] * np.sqrt(t)
    for k in range(n):
        perm[k] = k
    for k in range(n):
        perm[k], perm[trans[k]] = perm[trans[k]], perm[k]
    return nonzero


@nb.njit(cache=True, inline="always")
def _qr_solve(M, n, nonzero, hc, perm, c, out):
    """Solve with a factorisation from ``_qr_factor``: c (overwritten) holds the right-hand side; out gets x."""
    if nonzero == 0:
        for i in range(n):
            out[i] = _ZERO
        return
    for k in range(nonzero):  # c = Q^T c, reflector by reflector
        tau = hc[k]
        if k + 1 == n:
            c[k] = c[k] * (_ONE - tau)
        elif tau != _ZERO:
            w = M[k + 1, k] * c[k + 1]
            for r in range(k + 2, n):
                w += M[r, k] * c[r]
            w = w + c[k]
            c[k] = c[k] - tau * w
            for r in range(k + 1, n):
                c[r] = c[r] - (tau * M[r, k]) * w
    for i in range(nonzero - 1, -1, -1):  # back substitution by columns (Eigen's triangular_solve_vector)
        if c[i] != _ZERO:
            c[i] = c[i] / M[i, i]
            for r in range(i):
                c[r] = c[r] - c[i] * M[r, i]
    for i in range(n):
        out[perm[i]] = c[i] if i < nonzero else _ZERO


@nb.njit(cache=True, inline="always")
def _sum4(a0, a1, a2, a3):
    """A 4-term float32 sum as the reference's SSE reduction adds it: (0 + 2) + (1 + 3)."""
    return (a0 + a2) + (a1 + a3)


@nb.njit(cache=True, inline="always")
def _energy32(Qf, p):
    """[p, 1] Q [p, 1]^T in float32 (p[3] == 1): each entry of p^T Q and then their products with p summed with
    ``_sum4`` (of the orders tried, the one that reproduces the reference's choices between near-tied candidates)."""
    r0 = _sum4(p[0] * Qf[0, 0], p[1] * Qf[1, 0], p[2] * Qf[2, 0], p[3] * Qf[3, 0])
    r1 = _sum4(p[0] * Qf[0, 1], p[1] * Qf[1, 1], p[2] * Qf[2, 1], p[3] * Qf[3, 1])
    r2 = _sum4(p[0] * Qf[0, 2], p[1] * Qf[1, 2], p[2] * Qf[2, 2], p[3] * Qf[3, 2])
    r3 = _sum4(p[0] * Qf[0, 3], p[1] * Qf[1, 3], p[2] * Qf[2, 3], p[3] * Qf[3, 3])
    return _sum4(r0 * p[0], r1 * p[1], r2 * p[2], r3 * p[3])


_SOLVE_CHUNK = 1024


@nb.njit(cache=True, parallel=True)
def solve_dual_vertices(coords, psum, cnt, Q, reg_weight, vs):
    """Stage D (spec 2.5): regularise each quadric towards the mean crossing point, then minimise it inside the
    closed voxel box: the unconstrained minimum if inside, else the best of 6 faces, 12 edges, 8 corners (first
    strict minimum in the reference's candidate order). Float32, as the reference. Returns (N,3) float32, shifted
    frame."""
    N = coords.shape[0]
    out = np.empty((N, 3), dtype=np.float32)
    rw = np.float32(reg_weight)
    n_chunks = (N + _SOLVE_CHUNK - 1) // _SOLVE_CHUNK
    for chunk in nb.prange(n_chunks):
        # Scratch per chunk (allocating per voxel costs more than the solve).
        Qf = np.empty((4, 4), dtype=np.float32)
        M = np.empty((3, 3), dtype=np.float32)
        M2 = np.empty((2, 2), dtype=np.float32)
        hc = np.empty(3, dtype=np.float32)
        nrm_u = np.empty(3, dtype=np.float32)
        nrm_d = np.empty(3, dtype=np.float32)
        perm = np.empty(3, dtype=np.int64)
        trans = np.empty(3, dtype=np.int64)
        c = np.empty(3, dtype=np.float32)
        x = np.empty(3, dtype=np.float32)
        y = np.empty(2, dtype=np.float32)
        p = np.empty(4, dtype=np.float32)
        lo = np.empty(3, dtype=np.float32)
        hi = np.empty(3, dtype=np.float32)
        for v in range(chunk * _SOLVE_CHUNK, min(N, (chunk + 1) * _SOLVE_CHUNK)):
            k = 0
            for i in range(4):
                for j in range(i, 4):
                    Qf[i, j] = Q[v, k]
                    Qf[j, i] = Q[v, k]
                    k += 1
            if rw > _ZERO:
                m0, m1, m2 = psum[v, 0] / cnt[v], psum[v, 1] / cnt[v], psum[v, 2] / cnt[v]
                s = rw * cnt[v]
                for i in range(3):
                    Qf[i, i] += s * _ONE
                mm = (m0 * m0 + m1 * m1) + m2 * m2
                for i, mi in ((0, m0), (1, m1), (2, m2)):
                    Qf[i, 3] += s * -mi
                    Qf[3, i] += s * -mi
                Qf[3, 3] += s * mm
            for i in range(3):
                lo[i] = np.float32(coords[v, i]) * vs[i]
                hi[i] = np.float32(coords[v, i] + 1) * vs[i]
            # Unconstrained minimum: A x = -Q[:3, 3].
            for i in range(3):
                for j in range(3):
                    M[i, j] = Qf[i, j]
                c[i] = -Qf[i, 3]
            nz = _qr_factor(M, 3, hc, perm, nrm_u, nrm_d, trans)
            _qr_solve(M, 3, nz, hc, perm, c, x)
            if lo[0] <= x[0] <= hi[0] and lo[1] <= x[1] <= hi[1] and lo[2] <= x[2] <= hi[2]:
                out[v, 0], out[v, 1], out[v, 2] = x[0], x[1], x[2]
                continue
            best = np.float32(np.inf)
            p[3] = _ONE
            # 1. faces: fix axis f at lo then hi, solve the 2x2 system of the other two
            for f in range(3):
                g = (f + 1) % 3
                h = (f + 2) % 3
                M2[0, 0], M2[0, 1], M2[1, 0], M2[1, 1] = Qf[g, g], Qf[g, h], Qf[h, g], Qf[h, h]
                nz2 = _qr_factor(M2, 2, hc, perm, nrm_u, nrm_d, trans)
                for side in range(2):
                    beta = lo[f] if side == 0 else hi[f]
                    c[0] = -(Qf[g, f] * beta + Qf[g, 3] * _ONE)
                    c[1] = -(Qf[h, f] * beta + Qf[h, 3] * _ONE)
                    _qr_solve(M2, 2, nz2, hc, perm, c, y)
                    if lo[g] <= y[0] <= hi[g] and lo[h] <= y[1] <= hi[h]:
                        p[f], p[g], p[h] = beta, y[0], y[1]
                        e = _energy32(Qf, p)
                        if e < best:
                            best = e
                            x[0], x[1], x[2] = p[0], p[1], p[2]
            # 2. edges: free axis f, the other two at (lo,lo), (lo,hi), (hi,lo), (hi,hi)
            for f in range(3):
                g = (f + 1) % 3
                h = (f + 2) % 3
                a = Qf[f, f]
                for combo in range(4):
                    bg = lo[g] if combo < 2 else hi[g]
                    bh = lo[h] if combo % 2 == 0 else hi[h]
                    xf = -((Qf[f, g] * bg + Qf[f, h] * bh) + Qf[f, 3] * _ONE) / a  # a dot: left to right
                    if lo[f] <= xf <= hi[f]:
                        p[f], p[g], p[h] = xf, bg, bh
                        e = _energy32(Qf, p)
                        if e < best:
                            best = e
                            x[0], x[1], x[2] = p[0], p[1], p[2]
            # 3. corners, x slowest, hi before lo
            for corner in range(8):
                p[0] = hi[0] if (corner & 4) == 0 else lo[0]
                p[1] = hi[1] if (corner & 2) == 0 else lo[1]
                p[2] = hi[2] if (corner & 1) == 0 else lo[2]
                e = _energy32(Qf, p)
                if e < best:
                    best = e
                    x[0], x[1], x[2] = p[0], p[1], p[2]
            out[v, 0], out[v, 1], out[v, 2] = x[0], x[1], x[2]
    return out


@nb.njit(cache=True)
def first_touch_pairs(tri, axis, owner, res):
    """Every (triangle, voxel) incidence of the scan, de-duplicated per triangle, in scan order.

    Returns tri_index (P,) int64 and coords (P,3) int32.
    """
    M = tri.shape[0]
    out_t = np.empty(4 * M, dtype=np.int64)
    out_c = np.empty((4 * M, 3), dtype=np.int32)
    gy, gz = np.int64(res[1]), np.int64(res[2])
    # At most 4M voxels; size the table once so it never needs to grow.
    tk, tv = hashtable.new_table(4 * M + 16)
    last_tri = np.full(max(16, M + 16), -1, dtype=np.int64)  # per voxel: the last triangle that emitted it
    n_vox = 0
    n = 0
    for m in range(M):
        t = tri[m]
        c = axis[m]
        a = (c + 1) % 3
        b = (c + 2) % 3
        for da in range(2):
            for db in range(2):
                q = _around_edge(owner, m, a, b, da, db)
                key = (np.int64(q[0]) * gy + q[1]) * gz + q[2]
                v = hashtable.insert(tk, tv, key, n_vox)
                if v == n_vox:
                    n_vox += 1
                    if n_vox == last_tri.shape[0]:
                        grown = np.full(2 * n_vox, -1, dtype=np.int64)
                        grown[:n_vox] = last_tri
                        last_tri = grown
                if last_tri[v] != t:
                    last_tri[v] = t
                    out_t[n] = t
                    out_c[n, 0], out_c[n, 1], out_c[n, 2] = q[0], q[1], q[2]
                    n += 1
    return out_t[:n].copy(), out_c[:n].copy()


@nb.njit(cache=True)
def boundary_edge_keys(faces, num_vertices):
    """Keys ``min * V + max`` of the undirected edges used by exactly one face, ascending (the reference's edge
    order): a counting sort by the smaller vertex, then each vertex's short list of partners sorted and scanned for
    singletons. O(F) and no hash table: 5x faster than counting in one on a 69K-face mesh."""
    F = faces.shape[0]
    V = num_vertices
    start = np.zeros(V + 1, dtype=np.int64)
    for f in range(F):
        for j in range(3):
            a = faces[f, j]
            b = faces[f, (j + 1) % 3]
            start[min(a, b) + 1] += 1
    for i in range(V):
        start[i + 1] += start[i]
    fill = start[:-1].copy()
    partner = np.empty(3 * F, dtype=np.int64)
    for f in range(F):
        for j in range(3):
            a = faces[f, j]
            b = faces[f, (j + 1) % 3]
            lo, hi = min(a, b), max(a, b)
            partner[fill[lo]] = hi
            fill[lo] += 1
    out = np.empty(3 * F, dtype=np.int64)
    n = 0
    for a in range(V):
        s, e = start[a], start[a + 1]
        if e - s > 16:
            partner[s:e] = np.sort(partner[s:e])
        else:
            for i in range(s + 1, e):  # insertion sort: lists are a vertex's few partners
                x = partner[i]
                j = i - 1
                while j >= s and partner[j] > x:
                    partner[j + 1] = partner[j]
                    j -= 1
                partner[j + 1] = x
        i = s
        while i < e:
            j = i + 1
            while j < e and partner[j] == partner[i]:
                j += 1
            if j - i == 1:
                out[n] = a * V + partner[i]
                n += 1
            i = j
    return out[:n].copy()
