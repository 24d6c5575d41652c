"""Tensor twins of the `meshops` clean-up, for the exporter on the GPU (they run on any device).

On a CUDA export the surface arrives on the GPU and leaves the early decimation there; these functions clean it
where it is instead of copying it to the CPU for `meshops`' numpy and numba versions. Each twin keeps its numpy
original's rules and gives the same faces in the same order (tests compare them on real surfaces):

* `drop_degenerate_and_duplicate_faces` = `meshops.remove_degenerate_faces` then `meshops.remove_duplicate_faces`;
* `consistently_wound` = `meshops.consistently_wound`;
* `face_components` = `meshops.face_components` (labels numbered by each component's smallest face), by
  union-find in rounds: every shared edge hooks the larger of its two faces' roots under the smaller, then pointer
  jumping flattens the trees, until no edge joins two roots;
* `clean` = `meshops.clean` (degenerate, duplicate, small components, unused vertices);
* `remove_fringes` = `meshops.remove_fringes` (manifold parts are the components over edges with exactly two faces).

Areas and lengths are float64 on every device, as in `meshops`.
"""

from __future__ import annotations

import torch


def edge_table(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`meshops.edge_table` on tensors: half-edge ids sorted by undirected edge (stable), the undirected edge id
    of each half-edge, and the number of half-edges on each edge."""
    n = int(faces.max()) + 1 if faces.numel() else 1
    start = faces.reshape(-1)
    end = faces[:, [1, 2, 0]].reshape(-1)
    keys = torch.minimum(start, end) * n + torch.maximum(start, end)
    sorted_keys, order = torch.sort(keys, stable=True)
    first = torch.ones(len(order), dtype=torch.bool, device=faces.device)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    edge_of = torch.empty_like(order)
    edge_of[order] = torch.cumsum(first, 0) - 1
    starts = torch.nonzero(first).squeeze(1)
    face_count = torch.diff(torch.cat([starts, starts.new_tensor([len(first)])]))
    return order, edge_of, face_count


def face_areas(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F,) float64 triangle areas."""
    p = vertices.to(torch.float64)[faces]
    return torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]).norm(dim=1) / 2


def edge_lengths(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) float64 length of the edge from corner c to corner c + 1 of every face."""
    v = vertices.to(torch.float64)
    return (v[faces[:, [1, 2, 0]]] - v[faces]).norm(dim=2)


def connected_components(num_nodes: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(num_nodes,) int64 component labels of the graph with edges (a[i], b[i]), numbered 0..K-1 in order of each
    component's smallest node (as `meshops.connected_components`)."""
    root = torch.arange(num_nodes, device=a.device)
    while True:
        ra, rb = root[a], root[b]
        joins = ra != rb
        if not bool(joins.any()):
            break
        # Roots only ever point to smaller roots, so every tree ends at its component's smallest node.
        root.scatter_reduce_(0, torch.maximum(ra, rb)[joins], torch.minimum(ra, rb)[joins], reduce="amin")
        while True:
            jumped = root[root]
            if torch.equal(jumped, root):
                break
            root = jumped
    return torch.unique(root, return_inverse=True)[1]


def _adjacent_faces(order: torch.Tensor, edge_of: torch.Tensor, keep: torch.Tensor):
    """Face pairs joined by consecutive half-edges of one edge, where ``keep`` (per half-edge) holds."""
    sorted_edges = edge_of[order]
    same = (sorted_edges[1:] == sorted_edges[:-1]) & keep[order[1:]]
    return order[:-1][same] // 3, order[1:][same] // 3


def face_components(faces: torch.Tensor, table=None) -> torch.Tensor:
    """`meshops.face_components`: (F,) int64 labels of faces connected through shared edges (manifold or not)."""
    if len(faces) == 0:
        return torch.zeros(0, dtype=torch.int64, device=faces.device)
    order, edge_of, _ = edge_table(faces) if table is None else table
    a, b = _adjacent_faces(order, edge_of, torch.ones_like(edge_of, dtype=torch.bool))
    return connected_components(len(faces), a, b)


def drop_degenerate_and_duplicate_faces(vertices: torch.Tensor, faces: torch.Tensor,
                                        min_area: float = 1e-24) -> torch.Tensor:
    """`meshops.remove_degenerate_faces` then `meshops.remove_duplicate_faces` (same rules: a repeated corner or
    an area below ``min_area`` drops a face; of faces on the same three vertices, in either winding, the first is
    kept)."""
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    faces = faces[distinct & (face_areas(vertices, faces) >= min_area)]
    if len(faces) == 0:
        return faces
    corners = torch.sort(faces, dim=1).values
    n = int(corners.max()) + 1
    # Two int64 keys (V^3 can overflow at 1024^3 surfaces): sort by the largest corner, then stably by the rest.
    order = torch.argsort(corners[:, 2], stable=True)
    key = corners[order, 0] * n + corners[order, 1]
    order = order[torch.argsort(key, stable=True)]
    sorted_corners = corners[order]
    first = torch.ones(len(order), dtype=torch.bool, device=faces.device)
    first[1:] = (sorted_corners[1:] != sorted_corners[:-1]).any(dim=1)
    return faces[torch.sort(order[first]).values]


def consistently_wound(faces: torch.Tensor, table=None) -> bool:
    """`meshops.consistently_wound`: the two faces of every edge shared by exactly two faces run along it in
    opposite directions."""
    if len(faces) == 0:
        return True
    order, edge_of, face_count = edge_table(faces) if table is None else table
    sorted_edges = edge_of[order]
    starts = torch.ones(len(order), dtype=torch.bool, device=faces.device)
    starts[1:] = sorted_edges[1:] != sorted_edges[:-1]
    pair = torch.nonzero(starts & (face_count[sorted_edges] == 2)).squeeze(1)
    start_vertex = faces.reshape(-1)
    return bool((start_vertex[order[pair]] != start_vertex[order[pair + 1]]).all())


def compact(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`meshops.compact`: drop vertices no face uses; returns (vertices, remapped faces)."""
    used, inverse = torch.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3)


def clean(vertices: torch.Tensor, faces: torch.Tensor, min_component_area: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """`meshops.clean`: degenerate and duplicate faces, then small components, then unused vertices."""
    faces = drop_degenerate_and_duplicate_faces(vertices, faces)
    if len(faces) and min_component_area > 0:
        labels = face_components(faces)
        area = torch.zeros(int(labels.max()) + 1, dtype=torch.float64, device=faces.device)
        area.index_add_(0, labels, face_areas(vertices, faces))
        faces = faces[area[labels] >= min_component_area]
    if len(faces) == 0:
        return vertices[:0], faces
    return compact(vertices, faces)


def remove_fringes(vertices: torch.Tensor, faces: torch.Tensor, width: float, rounds: int = 3) -> torch.Tensor:
    """`meshops.remove_fringes`: (F,) bool, the faces to keep (the rule is explained there)."""
    num_faces = len(faces)
    index = torch.arange(num_faces, device=faces.device)
    areas_all = face_areas(vertices, faces)
    for _ in range(rounds):
        if len(faces) == 0:
            break
        order, edge_of, face_count = edge_table(faces)
        count = face_count[edge_of]  # per half-edge
        a, b = _adjacent_faces(order, edge_of, count == 2)
        part = connected_components(len(faces), a, b)
        length = edge_lengths(vertices, faces)
        count = count.reshape(-1, 3)
        num_parts = int(part.max()) + 1

        def per_part(values):
            out = torch.zeros(num_parts, dtype=torch.float64, device=faces.device)
            return out.index_add_(0, part, values)

        boundary = per_part((length * (count == 1)).sum(dim=1))
        junction = per_part((length * (count >= 3)).sum(dim=1))
        area = per_part(areas_all)
        fringe = (boundary > 0) & (junction >= 0.5 * boundary) & (area <= width * boundary)
        if not bool(fringe.any()):
            break
        keep = ~fringe[part]
        faces, areas_all, index = faces[keep], areas_all[keep], index[keep]
    keep = torch.zeros(num_faces, dtype=torch.bool, device=faces.device)
    keep[index] = True
    return keep
