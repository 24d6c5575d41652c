"""CPU kernels (numba) for making a triangle soup's winding consistent per connected component."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def propagate_winding(faces, edge_face, edge_start, edge_count, face_edges, edge_dir):
    """Breadth-first flood fill over manifold edges giving each face a flip bit so that neighbours agree.

    Args:
        faces: (F, 3) int64.
        edge_face / edge_start / edge_count: CSR lists of the faces using each undirected edge.
        face_edges: (F, 3) int64, the undirected edge id of each face corner edge (c, c+1).
        edge_dir: (F, 3) int8, +1 if the face walks that edge from its smaller to its larger vertex, else -1.

    Returns:
        flip (F,) bool, and component (F,) int64 ids in order of discovery (faces across non-manifold edges, used
        by more than two faces, start separate components).
    """
    F = faces.shape[0]
    flip = np.zeros(F, dtype=np.bool_)
    comp = np.full(F, -1, dtype=np.int64)
    queue = np.empty(F, dtype=np.int64)
    n_comp = 0
    for seed in range(F):
        if comp[seed] >= 0:
            continue
        comp[seed] = n_comp
        head = 0
        tail = 0
        queue[tail] = seed
        tail += 1
        while head < tail:
            f = queue[head]
            head += 1
            for c in range(3):
                e = face_edges[f, c]
                if edge_count[e] != 2:
                    continue
                s = edge_start[e]
                g = edge_face[s] if edge_face[s] != f else edge_face[s + 1]
                if g == f or comp[g] >= 0:
                    continue
                # Consistent neighbours traverse the shared edge in opposite directions.
                dir_f = edge_dir[f, c] * (-1 if flip[f] else 1)
                cg = 0
                for k in range(3):
                    if face_edges[g, k] == e:
                        cg = k
                dir_g = edge_dir[g, cg]
                flip[g] = dir_g == dir_f
                comp[g] = n_comp
                queue[tail] = g
                tail += 1
        n_comp += 1
    return flip, comp
