"""CPU kernels (numba) of the mesh clean-up in ``omnivox.ovoxel.meshops``: per-face measures, edge-table
bookkeeping, face components and the fringe rule in single passes, without the (F, 3, 3) float64 temporaries and
the sorts of the numpy formulation.

Every kernel gives the numpy formulation's result bit for bit: floating-point sums run in the same order (per-face
values in corner order, per-group sums in face order, as ``np.bincount`` adds them) and numba contracts no
multiply-add (no fastmath). ``tests/ovoxel/test_meshops.py`` compares each with the numpy formulation.

Tables are ``meshops.edge_table``'s: ``order`` (3F,) half-edge ids sorted by undirected edge, ``edge_of`` (3F,)
undirected edge of each half-edge (ids ascending along ``order``), ``face_count`` (E,) half-edges per edge; half-edge
``3 * f + c`` runs from corner c of face f to corner c + 1.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def face_areas(vertices, faces):
    """(F,) float64 triangle areas: half the length of the cross product of the edges from corner 0."""
    out = np.empty(faces.shape[0])
    for i in range(faces.shape[0]):
        a, b, c = faces[i, 0], faces[i, 1], faces[i, 2]
        ax, ay, az = np.float64(vertices[a, 0]), np.float64(vertices[a, 1]), np.float64(vertices[a, 2])
        ux, uy, uz = np.float64(vertices[b, 0]) - ax, np.float64(vertices[b, 1]) - ay, np.float64(vertices[b, 2]) - az
        vx, vy, vz = np.float64(vertices[c, 0]) - ax, np.float64(vertices[c, 1]) - ay, np.float64(vertices[c, 2]) - az
        x = uy * vz - uz * vy
        y = uz * vx - ux * vz
        z = ux * vy - uy * vx
        out[i] = 0.5 * np.sqrt(x * x + y * y + z * z)
    return out


@nb.njit(cache=True)
def edge_lengths(vertices, faces):
    """(F, 3) float64 length of the edge from corner c to corner c + 1 of every face."""
    out = np.empty((faces.shape[0], 3))
    for i in range(faces.shape[0]):
        for c in range(3):
            p, q = faces[i, c], faces[i, (c + 1) % 3]
            dx = np.float64(vertices[q, 0]) - np.float64(vertices[p, 0])
            dy = np.float64(vertices[q, 1]) - np.float64(vertices[p, 1])
            dz = np.float64(vertices[q, 2]) - np.float64(vertices[p, 2])
            out[i, c] = np.sqrt(dx * dx + dy * dy + dz * dz)
    return out


# Buckets of a counting sort with more entries than this are sorted by a merge sort instead of insertion.
INSERTION_SORT_LIMIT = 32


@nb.njit(cache=True)
def _bucket_by(keys, num_buckets):
    """Stable counting sort by small non-negative ``keys``: (order, bucket_start (num_buckets + 1,))."""
    start = np.zeros(num_buckets + 1, np.int64)
    for i in range(keys.shape[0]):
        start[keys[i] + 1] += 1
    for b in range(num_buckets):
        start[b + 1] += start[b]
    slot = start[:-1].copy()
    order = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        order[slot[keys[i]]] = i
        slot[keys[i]] += 1
    return order, start


@nb.njit(cache=True)
def _sort_run(keys, items, lo, hi):
    """Stable sort of ``keys[lo:hi]`` with ``items[lo:hi]`` alongside, in place."""
    if hi - lo <= INSERTION_SORT_LIMIT:
        for k in range(lo + 1, hi):
            key, item = keys[k], items[k]
            j = k - 1
            while j >= lo and keys[j] > key:
                keys[j + 1] = keys[j]
                items[j + 1] = items[j]
                j -= 1
            keys[j + 1] = key
            items[j + 1] = item
    else:
        by_key = np.argsort(keys[lo:hi], kind="mergesort")
        keys[lo:hi] = keys[lo:hi][by_key]
        items[lo:hi] = items[lo:hi][by_key]


@nb.njit(cache=True)
def edge_table(faces, num_vertices):
    """``meshops.edge_table``: half-edges stably sorted by (smaller, larger) endpoint, by a counting sort on the
    smaller endpoint and a sort of each (short) run by the larger. Returns (order, edge_of, face_count)."""
    count = faces.shape[0] * 3
    start = np.zeros(num_vertices + 1, np.int64)
    for f in range(faces.shape[0]):
        for c in range(3):
            start[min(faces[f, c], faces[f, (c + 1) % 3]) + 1] += 1
    for v in range(num_vertices):
        start[v + 1] += start[v]
    slot = start[:-1].copy()
    order = np.empty(count, np.int64)
    larger = np.empty(count, np.int64)  # the larger endpoint, in sorted order
    for f in range(faces.shape[0]):
        for c in range(3):
            a, b = faces[f, c], faces[f, (c + 1) % 3]
            k = slot[min(a, b)]
            order[k] = 3 * f + c
            larger[k] = max(a, b)
            slot[min(a, b)] += 1
    for v in range(num_vertices):
        if start[v + 1] - start[v] > 1:
            _sort_run(larger, order, start[v], start[v + 1])
    edge_of = np.empty(count, np.int64)
    face_count = np.empty(count, np.int64)
    edges = -1
    for v in range(num_vertices):
        for k in range(start[v], start[v + 1]):
            if k == start[v] or larger[k] != larger[k - 1]:
                edges += 1
                face_count[edges] = 0
            edge_of[order[k]] = edges
            face_count[edges] += 1
    return order, edge_of, face_count[:edges + 1].copy()


@nb.njit(cache=True)
def first_of_duplicates(faces, num_vertices):
    """(F,) bool: faces with no face of lower index on the same three vertices (either winding)."""
    num_faces = faces.shape[0]
    smallest = np.empty(num_faces, np.int64)
    middle = np.empty(num_faces, np.int64)
    largest = np.empty(num_faces, np.int64)
    for f in range(num_faces):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        if a > b:
            a, b = b, a
        if b > c:
            b, c = c, b
        if a > b:
            a, b = b, a
        smallest[f], middle[f], largest[f] = a, b, c
    order, start = _bucket_by(smallest, num_vertices)  # face order within each bucket
    first = np.ones(num_faces, np.bool_)
    for v in range(num_vertices):
        lo, hi = start[v], start[v + 1]
        if hi - lo <= INSERTION_SORT_LIMIT:
            for k in range(lo + 1, hi):
                f = order[k]
                for j in range(lo, k):
                    g = order[j]
                    if middle[g] == middle[f] and largest[g] == largest[f]:
                        first[f] = False
                        break
        else:
            run = order[lo:hi]
            keys = np.empty(hi - lo, np.int64)
            for k in range(hi - lo):
                keys[k] = middle[run[k]] * num_vertices + largest[run[k]]
            by_key = np.argsort(keys, kind="mergesort")  # stable: lower face index first among equal keys
            for k in range(1, hi - lo):
                if keys[by_key[k]] == keys[by_key[k - 1]]:
                    first[run[by_key[k]]] = False
    return first


@nb.njit(cache=True, inline="always")
def find_root(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@nb.njit(cache=True, inline="always")
def join(parent, i, j):
    ri = find_root(parent, i)
    rj = find_root(parent, j)
    if ri < rj:  # the smaller root stays: every root is its component's smallest node
        parent[rj] = ri
    elif rj < ri:
        parent[ri] = rj


@nb.njit(cache=True)
def labels_from_roots(parent):
    # Labels 0..K-1 in order of each component's smallest node (its root, which comes before its other nodes).
    label = np.empty(parent.shape[0], np.int64)
    count = 0
    for i in range(parent.shape[0]):
        r = find_root(parent, i)
        if r == i:
            label[i] = count
            count += 1
        else:
            label[i] = label[r]
    return label


@nb.njit(cache=True)
def face_components(num_faces, order, edge_of):
    """(F,) int64 labels of the faces connected through shared edges, numbered by each component's smallest face
    (``meshops.face_components``)."""
    parent = np.arange(num_faces)
    for k in range(1, order.shape[0]):
        if edge_of[order[k]] == edge_of[order[k - 1]]:
            join(parent, order[k - 1] // 3, order[k] // 3)
    return labels_from_roots(parent)


@nb.njit(cache=True)
def exclusive_ranks(mask):
    """(n,) int64: how many of ``mask[:i]`` are set, for every i (the new index of a kept item), and that count
    over the whole mask."""
    rank = np.empty(mask.shape[0], np.int64)
    count = 0
    for i in range(mask.shape[0]):
        rank[i] = count
        if mask[i]:
            count += 1
    return rank, count


@nb.njit(cache=True)
def compact_faces(num_vertices, faces):
    """``meshops.compact``'s numbering: (V,) bool, the vertices some face uses, and the faces renumbered to count
    only those (in index order)."""
    used = np.zeros(num_vertices, np.bool_)
    for f in range(faces.shape[0]):
        for c in range(3):
            used[faces[f, c]] = True
    new_index, _ = exclusive_ranks(used)
    remapped = np.empty_like(faces)
    for f in range(faces.shape[0]):
        for c in range(3):
            remapped[f, c] = new_index[faces[f, c]]
    return used, remapped


@nb.njit(cache=True)
def subset_edge_table(order, edge_of, face_count, keep):
    """``meshops.subset_edge_table``: the table of the faces ``keep`` (F,) bool, from the whole mesh's. One pass
    along ``order`` where the edge ids ascend along it (every table ``meshops`` makes), else by ranking the
    edges that keep a face."""
    new_face, kept = exclusive_ranks(keep)
    sub_order = np.empty(3 * kept, np.int64)
    sub_edge = np.empty(3 * kept, np.int64)
    sub_count = np.zeros(face_count.shape[0], np.int64)
    j = 0
    edges = -1
    last = -1
    for k in range(order.shape[0]):
        h = order[k]
        e = edge_of[h]
        if e < last:
            return _subset_edge_table_by_rank(order, edge_of, face_count, keep, new_face, kept)
        if keep[h // 3]:
            if e != last:
                edges += 1
                last = e
            new_half_edge = 3 * new_face[h // 3] + h % 3
            sub_order[j] = new_half_edge
            j += 1
            sub_edge[new_half_edge] = edges
            sub_count[edges] += 1
    return sub_order, sub_edge, sub_count[:edges + 1].copy()


@nb.njit(cache=True)
def _subset_edge_table_by_rank(order, edge_of, face_count, keep, new_face, kept):
    count = np.zeros(face_count.shape[0], np.int64)
    for h in range(edge_of.shape[0]):
        if keep[h // 3]:
            count[edge_of[h]] += 1
    rank = np.empty(face_count.shape[0], np.int64)
    present = 0
    for e in range(face_count.shape[0]):
        rank[e] = present
        if count[e] > 0:
            present += 1
    sub_count = np.empty(present, np.int64)
    for e in range(face_count.shape[0]):
        if count[e] > 0:
            sub_count[rank[e]] = count[e]
    sub_order = np.empty(3 * kept, np.int64)
    sub_edge = np.empty(3 * kept, np.int64)
    j = 0
    for k in range(order.shape[0]):
        h = order[k]
        if keep[h // 3]:
            sub_order[j] = 3 * new_face[h // 3] + h % 3
            j += 1
    for h in range(edge_of.shape[0]):
        if keep[h // 3]:
            sub_edge[3 * new_face[h // 3] + h % 3] = rank[edge_of[h]]
    return sub_order, sub_edge, sub_count


@nb.njit(cache=True)
def rewound_edge_table(order, edge_of, flipped):
    """``meshops.rewound_edge_table``: (order, edge_of) after the ``flipped`` faces were re-wound [a, b, c] ->
    [a, c, b] (corner edge c of a flipped face is its old corner edge 2 - c)."""
    new_order = np.empty_like(order)
    new_edge = np.empty_like(edge_of)
    for k in range(order.shape[0]):
        h = order[k]
        new_order[k] = h + 2 - 2 * (h % 3) if flipped[h // 3] else h
    for h in range(edge_of.shape[0]):
        new_edge[h] = edge_of[h + 2 - 2 * (h % 3)] if flipped[h // 3] else edge_of[h]
    return new_order, new_edge


@nb.njit(cache=True)
def consistently_wound(faces, order, edge_of, face_count):
    """``meshops.consistently_wound``: the two half-edges of every edge with exactly two faces start at different
    vertices."""
    flat = faces.reshape(-1)
    for k in range(order.shape[0] - 1):
        e = edge_of[order[k]]
        if face_count[e] == 2 and e == edge_of[order[k + 1]] and flat[order[k]] == flat[order[k + 1]]:
            return False
    return True


@nb.njit(cache=True)
def manifold_adjacency(faces, order, edge_of, face_count):
    """The faces' neighbours through edges with exactly two faces, as ``meshops._manifold_parts`` lists them:
    CSR (adj_start (F + 1,), adj_face, adj_same) where adj_same is 1 when both faces run along the edge in the same
    direction. Per face, first the neighbours where it holds the first of the two sorted half-edges, then those
    where it holds the second, each in sorted-edge order."""
    num_faces = faces.shape[0]
    flat = faces.reshape(-1)
    degree = np.zeros(num_faces + 1, np.int64)
    pairs = 0
    for k in range(order.shape[0] - 1):
        e = edge_of[order[k]]
        if e == edge_of[order[k + 1]] and face_count[e] == 2:
            degree[order[k] // 3 + 1] += 1
            degree[order[k + 1] // 3 + 1] += 1
            pairs += 1
    adj_start = np.cumsum(degree)
    slot = adj_start[:-1].copy()
    adj_face = np.empty(2 * pairs, np.int64)
    adj_same = np.empty(2 * pairs, np.int8)
    for side in range(2):
        for k in range(order.shape[0] - 1):
            e = edge_of[order[k]]
            if e == edge_of[order[k + 1]] and face_count[e] == 2:
                a, b = order[k], order[k + 1]
                same = np.int8(1) if flat[a] == flat[b] else np.int8(0)
                if side == 1:
                    a, b = b, a
                f = a // 3
                adj_face[slot[f]] = b // 3
                adj_same[slot[f]] = same
                slot[f] += 1
    return adj_start, adj_face, adj_same


@nb.njit(cache=True)
def remove_fringes(order, edge_of, face_count, length, areas, width, rounds):
    """``meshops.remove_fringes`` after its per-face measures: (F,) bool, the faces to keep.

    ``length`` (F, 3) edge lengths, ``areas`` (F,) face areas. Each round labels the manifold parts of the faces
    looked at (through consecutive sorted half-edges on an edge with exactly two kept faces), sums each part's
    boundary, junction and area in face order, drops the fringes, and looks next at the parts that shared an edge
    with a dropped face.
    """
    num_faces = areas.shape[0]
    keep = np.ones(num_faces, np.bool_)
    count = face_count.copy()  # of the kept faces
    looked = np.ones(num_faces, np.bool_)
    part = np.zeros(num_faces, np.int64)  # of every kept face; later rounds' labels come after earlier ones'
    next_label = 0
    parent = np.arange(num_faces)
    label_of_root = np.full(num_faces, -1, np.int64)
    for _ in range(rounds):
        for f in range(num_faces):
            if looked[f]:
                parent[f] = f
        previous = -1
        for k in range(order.shape[0]):
            h = order[k]
            if not looked[h // 3]:
                continue
            if previous >= 0 and edge_of[previous] == edge_of[h] and count[edge_of[h]] == 2:
                join(parent, previous // 3, h // 3)
            previous = h
        first_label = next_label
        for f in range(num_faces):
            if looked[f]:
                r = find_root(parent, f)
                if r == f:
                    label_of_root[f] = next_label
                    next_label += 1
                part[f] = label_of_root[r]
        num_parts = next_label - first_label
        boundary = np.zeros(num_parts)
        junction = np.zeros(num_parts)
        area = np.zeros(num_parts)
        for f in range(num_faces):
            if not looked[f]:
                continue
            p = part[f] - first_label
            n0, n1, n2 = count[edge_of[3 * f]], count[edge_of[3 * f + 1]], count[edge_of[3 * f + 2]]
            # numpy's (length * (count == 1)).sum(axis=1): products by 0 or 1, added in corner order.
            boundary[p] += (length[f, 0] * (1.0 if n0 == 1 else 0.0) + length[f, 1] * (1.0 if n1 == 1 else 0.0)
                            ) + length[f, 2] * (1.0 if n2 == 1 else 0.0)
            junction[p] += (length[f, 0] * (1.0 if n0 >= 3 else 0.0) + length[f, 1] * (1.0 if n1 >= 3 else 0.0)
                            ) + length[f, 2] * (1.0 if n2 >= 3 else 0.0)
            area[p] += areas[f]
        fringe = (boundary > 0) & (junction >= 0.5 * boundary) & (area <= width * boundary)
        if not fringe.any():
            break
        touched_edge = np.zeros(count.shape[0], np.bool_)
        for f in range(num_faces):
            if looked[f] and fringe[part[f] - first_label]:
                keep[f] = False
                for c in range(3):
                    count[edge_of[3 * f + c]] -= 1
                    touched_edge[edge_of[3 * f + c]] = True
        # Parts that shared an edge with a removed face may have changed; nothing else did.
        touched_part = np.zeros(next_label, np.bool_)
        for f in range(num_faces):
            if keep[f] and (touched_edge[edge_of[3 * f]] or touched_edge[edge_of[3 * f + 1]]
                            or touched_edge[edge_of[3 * f + 2]]):
                touched_part[part[f]] = True
        any_looked = False
        for f in range(num_faces):
            looked[f] = keep[f] and touched_part[part[f]]
            any_looked = any_looked or looked[f]
        if not any_looked:
            break
    return keep
