"""CPU kernels (numba) for flexible dual grid -> mesh: quad assembly, diagonal choice, consistent winding."""

from __future__ import annotations

import numba as nb
import numpy as np

from omnivox.ovoxel.kernels import hashtable

# Corner offsets per axis (spec ovoxel.md section 3 table): [axis, corner, xyz].
QUAD_OFFSETS = np.array(
    [
        [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]],
        [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]],
        [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]],
    ],
    dtype=np.int64,
)


@nb.njit(cache=True)
def assemble_quads(coords, flags, res, offsets):
    """(Q, 4) int64 voxel indices of every complete quad (voxel order, then axis x, y, z) and (Q,) its axis."""
    n = coords.shape[0]
    gy, gz = np.int64(res[1]), np.int64(res[2])
    tk, tv = hashtable.new_table(n)
    for i in range(n):
        hashtable.insert(tk, tv, (np.int64(coords[i, 0]) * gy + coords[i, 1]) * gz + coords[i, 2], i)
    total = 0
    for i in range(n):
        for a in range(3):
            if flags[i, a]:
                total += 1
    quads = np.empty((total, 4), dtype=np.int64)
    axes = np.empty(total, dtype=np.int64)
    q = 0
    for i in range(n):
        for a in range(3):
            if not flags[i, a]:
                continue
            ok = True
            for k in range(4):
                x = coords[i, 0] + offsets[a, k, 0]
                y = coords[i, 1] + offsets[a, k, 1]
                z = coords[i, 2] + offsets[a, k, 2]
                if x >= res[0] or y >= res[1] or z >= res[2]:
                    ok = False
                    break
                v = hashtable.lookup(tk, tv, (np.int64(x) * gy + y) * gz + z)
                if v < 0:
                    ok = False
                    break
                quads[q, k] = v
            if ok:
                axes[q] = a
                q += 1
    return quads[:q].copy(), axes[:q].copy()


@nb.njit(cache=True, inline="always")
def _tri_normal(v, i, j, k):
    ax, ay, az = v[j, 0] - v[i, 0], v[j, 1] - v[i, 1], v[j, 2] - v[i, 2]
    bx, by, bz = v[k, 0] - v[i, 0], v[k, 1] - v[i, 1], v[k, 2] - v[i, 2]
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@nb.njit(cache=True, inline="always")
def _cos(n1, n2):
    l1 = np.sqrt(n1[0] * n1[0] + n1[1] * n1[1] + n1[2] * n1[2])
    l2 = np.sqrt(n2[0] * n2[0] + n2[1] * n2[1] + n2[2] * n2[2])
    if l1 == 0 or l2 == 0:
        return -1.0
    return (n1[0] * n2[0] + n1[1] * n2[1] + n1[2] * n2[2]) / (l1 * l2)


@nb.njit(cache=True, parallel=True)
def first_diagonal_by_angle(quads, vertices):
    """True where the q0-q2 diagonal's two triangles bend less than the q1-q3 diagonal's (ties: q0-q2)."""
    Q = quads.shape[0]
    out = np.empty(Q, dtype=np.bool_)
    v = vertices.astype(np.float64)
    for i in nb.prange(Q):
        q0, q1, q2, q3 = quads[i, 0], quads[i, 1], quads[i, 2], quads[i, 3]
        c02 = _cos(_tri_normal(v, q0, q1, q2), _tri_normal(v, q0, q2, q3))
        c13 = _cos(_tri_normal(v, q0, q1, q3), _tri_normal(v, q3, q1, q2))
        out[i] = c02 >= c13
    return out


@nb.njit(cache=True, nogil=True)  # nogil: the pipelines run it on a worker thread beside GPU work
def orient_components(faces, vertices, hint_flip):
    """Consistent winding per connected component, then each component's side (see ``extract.orient_faces``).

    Returns:
        flip: (F,) bool flip bit of every face.
        component: (F,) int64 label of each face's component (connected through manifold edges).
        closed: (K,) bool per component, True when every edge of it has exactly two faces.
    """
    F = faces.shape[0]
    edge_of, _, count = hashtable.number_edges(faces, vertices.shape[0])
    # The first two faces on every edge (enough to cross the manifold ones).
    first = np.full((count.shape[0], 2), -1, dtype=np.int64)
    seen = np.zeros(count.shape[0], dtype=np.int32)
    for f in range(F):
        for c in range(3):
            e = edge_of[f, c]
            if seen[e] < 2:
                first[e, seen[e]] = f
            seen[e] += 1
    flip = np.zeros(F, dtype=np.bool_)
    comp = np.full(F, -1, dtype=np.int64)
    queue = np.empty(F, dtype=np.int64)
    n_comp = 0
    for seed in range(F):
        if comp[seed] >= 0:
            continue
        comp[seed] = n_comp
        head, tail = 0, 1
        queue[0] = seed
        while head < tail:
            f = queue[head]
            head += 1
            for c in range(3):
                e = edge_of[f, c]
                if count[e] != 2:
                    continue
                g = first[e, 0] if first[e, 1] == f else first[e, 1]
                if g == f or comp[g] >= 0:
                    continue
                # Direction in which f walks the edge (after its own flip), and in which g walks it.
                a, b = faces[f, c], faces[f, (c + 1) % 3]
                f_forward = (a < b) != flip[f]
                g_forward = False
                for k in range(3):
                    if edge_of[g, k] == e:
                        g_forward = faces[g, k] < faces[g, (k + 1) % 3]
                # Consistent neighbours walk a shared edge in opposite directions.
                flip[g] = g_forward == f_forward
                comp[g] = n_comp
                queue[tail] = g
                tail += 1
        n_comp += 1
    volume = np.zeros(n_comp)
    area = np.zeros(n_comp)
    disagree = np.zeros(n_comp)
    closed = np.ones(n_comp, dtype=np.bool_)
    for f in range(F):
        i, j, k = faces[f, 0], faces[f, 1], faces[f, 2]
        nx, ny, nz = _tri_normal64(vertices, i, j, k)
        vol = vertices[i, 0] * nx + vertices[i, 1] * ny + vertices[i, 2] * nz
        a = np.sqrt(nx * nx + ny * ny + nz * nz)
        s = -1.0 if flip[f] else 1.0
        volume[comp[f]] += s * vol
        area[comp[f]] += a
        if hint_flip[f] != flip[f]:
            disagree[comp[f]] += a
        for c in range(3):
            if count[edge_of[f, c]] != 2:
                closed[comp[f]] = False
    for f in range(F):
        k = comp[f]
        side = volume[k] < 0 if closed[k] else disagree[k] > area[k] / 2
        if side:
            flip[f] = not flip[f]
    return flip, comp, closed


@nb.njit(cache=True, inline="always")
def _tri_normal64(v, i, j, k):
    ax = np.float64(v[j, 0]) - v[i, 0]
    ay = np.float64(v[j, 1]) - v[i, 1]
    az = np.float64(v[j, 2]) - v[i, 2]
    bx = np.float64(v[k, 0]) - v[i, 0]
    by = np.float64(v[k, 1]) - v[i, 1]
    bz = np.float64(v[k, 2]) - v[i, 2]
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@nb.njit(cache=True, parallel=True, nogil=True)
def winding_numbers(points, triangles):
    """Generalized winding number of a triangle soup at each point: the sum of signed solid angles over 4 pi.

    Van Oosterom & Strackee's formula per triangle; for a closed, consistently wound surface the result is +-1
    inside and 0 outside (sign by the winding).

    Args:
        points: (P, 3) float64.
        triangles: (T, 3, 3) float64 corner positions.

    Returns:
        (P,) float64.
    """
    out = np.zeros(points.shape[0])
    for p in nb.prange(points.shape[0]):
        total = 0.0
        for t in range(triangles.shape[0]):
            ax = triangles[t, 0, 0] - points[p, 0]
            ay = triangles[t, 0, 1] - points[p, 1]
            az = triangles[t, 0, 2] - points[p, 2]
            bx = triangles[t, 1, 0] - points[p, 0]
            by = triangles[t, 1, 1] - points[p, 1]
            bz = triangles[t, 1, 2] - points[p, 2]
            cx = triangles[t, 2, 0] - points[p, 0]
            cy = triangles[t, 2, 1] - points[p, 1]
            cz = triangles[t, 2, 2] - points[p, 2]
            la = np.sqrt(ax * ax + ay * ay + az * az)
            lb = np.sqrt(bx * bx + by * by + bz * bz)
            lc = np.sqrt(cx * cx + cy * cy + cz * cz)
            det = ax * (by * cz - bz * cy) - ay * (bx * cz - bz * cx) + az * (bx * cy - by * cx)
            denominator = (la * lb * lc + (ax * bx + ay * by + az * bz) * lc + (bx * cx + by * cy + bz * cz) * la
                           + (cx * ax + cy * ay + cz * az) * lb)
            total += 2.0 * np.arctan2(det, denominator)
        out[p] = total / (4.0 * np.pi)
    return out
