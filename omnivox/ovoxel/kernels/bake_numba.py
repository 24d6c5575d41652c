"""CPU kernels (numba) of the texture bake (`omnivox.ovoxel.bake`): UV rasterisation, gutter filling, sparse
trilinear lookup.

Each is the ``"numba"`` backend of the `omnivox.ovoxel.bake` function of the same name, on numpy arrays; the PyTorch
path there (any device) is the reference they are tested against (``tests/ovoxel/test_export.py``,
``tests/test_backend.py``). ``texel_barycentrics`` is the one barycentric formula of every numba rasteriser (the
UV bake and the atlas's layout checks).
"""

from __future__ import annotations

import numba
import numpy as np

from omnivox.ovoxel.kernels import hashtable

# ------------------------------------------------------------------------------------------------ rasterize_uv


@numba.njit(cache=True, inline="always")
def texel_barycentrics(corners, x, y, twice_area):
    """Barycentric weights of the point ``(x, y)`` in the triangle ``corners`` ((3, 2), pixel units), from signed
    sub-triangle areas over the signed total ``twice_area`` (>= 0 inside for either winding): the arithmetic of
    the PyTorch rasterisers, shared by every numba one (``rasterize_uv``, the atlas's layout checks)."""
    w0 = ((corners[1, 0] - x) * (corners[2, 1] - y) - (corners[1, 1] - y) * (corners[2, 0] - x)) / twice_area
    w1 = ((corners[2, 0] - x) * (corners[0, 1] - y) - (corners[2, 1] - y) * (corners[0, 0] - x)) / twice_area
    return w0, w1, 1.0 - w0 - w1


@numba.njit(cache=True)
def rasterize_uv(uvs, faces, values, size):
    """``rasterize_uv`` on arrays: each triangle's bounding box of texel centres, the torch path's barycentrics."""
    channels = values.shape[1]
    image = np.zeros((size, size, channels), np.float32)
    mask = np.zeros((size, size), np.bool_)
    corners = np.empty((3, 2), np.float64)
    for f in range(faces.shape[0]):
        for k in range(3):
            corners[k, 0] = uvs[faces[f, k], 0] * size - 0.5
            corners[k, 1] = uvs[faces[f, k], 1] * size - 0.5
        twice_area = ((corners[1, 0] - corners[0, 0]) * (corners[2, 1] - corners[0, 1])
                      - (corners[1, 1] - corners[0, 1]) * (corners[2, 0] - corners[0, 0]))
        if abs(twice_area) <= 1e-12:
            continue
        lo_x = min(max(int(np.ceil(corners[:, 0].min())), 0), size - 1)
        hi_x = min(max(int(np.floor(corners[:, 0].max())), 0), size - 1)
        lo_y = min(max(int(np.ceil(corners[:, 1].min())), 0), size - 1)
        hi_y = min(max(int(np.floor(corners[:, 1].max())), 0), size - 1)
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        for row in range(lo_y, hi_y + 1):
            for col in range(lo_x, hi_x + 1):
                w0, w1, w2 = texel_barycentrics(corners, np.float64(col), np.float64(row), twice_area)
                if w0 >= -1e-9 and w1 >= -1e-9 and w2 >= -1e-9:
                    b0, b1, b2 = np.float32(w0), np.float32(w1), np.float32(w2)
                    for k in range(channels):
                        image[row, col, k] = b0 * values[a, k] + b1 * values[b, k] + b2 * values[c, k]
                    mask[row, col] = True
    return image, mask


# ------------------------------------------------------------------------------------------------ fill_gutter


@numba.njit(cache=True)
def fill_gutter(image, valid, dilation_steps):
    """``fill_gutter`` on (H, W, C) float32 / (H, W) bool arrays: the same rounds and pyramid, texel by texel."""
    height, width, channels = image.shape
    x = np.where(valid[:, :, None], image, np.float32(0.0)).astype(np.float32)
    valid = valid.copy()
    grow = np.zeros((height, width), np.bool_)
    for _ in range(dilation_steps):
        grown = np.zeros((height, width, channels), np.float32)
        any_grow = False
        for i in range(height):
            for j in range(width):
                grow[i, j] = False
                if valid[i, j]:
                    continue
                count = 0
                for di in range(-1, 2):
                    for dj in range(-1, 2):
                        a, b = i + di, j + dj
                        if 0 <= a < height and 0 <= b < width and valid[a, b]:
                            count += 1
                            for c in range(channels):
                                grown[i, j, c] += x[a, b, c]
                if count > 0:
                    grow[i, j] = True
                    any_grow = True
                    for c in range(channels):
                        grown[i, j, c] /= np.float32(count)
        if not any_grow:
            break
        for i in range(height):
            for j in range(width):
                if grow[i, j]:
                    valid[i, j] = True
                    for c in range(channels):
                        x[i, j, c] = grown[i, j, c]
    return push_pull(x, valid)


@numba.njit(cache=True)
def push_pull(x, valid):
    """`omnivox.ovoxel.bake`'s ``_push_pull`` on (H, W, C) arrays (x zero where not valid): a masked-mean pyramid, then bilinear upsampling
    (PyTorch's ``align_corners=False`` sampling) into the holes, finest level last."""
    height, width, channels = x.shape
    all_valid = True
    for i in range(height):
        for j in range(width):
            if not valid[i, j]:
                all_valid = False
    if all_valid or (height == 1 and width == 1):
        return x
    ch, cw = (height + 1) // 2, (width + 1) // 2
    coarse = np.zeros((ch, cw, channels), np.float32)
    coarse_valid = np.zeros((ch, cw), np.bool_)
    for i in range(ch):
        for j in range(cw):
            inside = 0
            count = 0
            sums = np.zeros(channels, np.float32)
            for a in range(2 * i, min(2 * i + 2, height)):
                for b in range(2 * j, min(2 * j + 2, width)):
                    inside += 1
                    if valid[a, b]:
                        count += 1
                        for c in range(channels):
                            sums[c] += x[a, b, c]
            if count > 0:
                coarse_valid[i, j] = True
                # (sum / inside) / (count / inside), as the pooled means divide
                weight = np.float32(count) / np.float32(inside)
                for c in range(channels):
                    coarse[i, j, c] = (sums[c] / np.float32(inside)) / weight
    coarse = push_pull(coarse, coarse_valid)
    out = x.copy()
    scale_i = np.float32(ch) / np.float32(height)
    scale_j = np.float32(cw) / np.float32(width)
    for i in range(height):
        si = max(scale_i * (np.float32(i) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
        i0 = int(si)
        i1 = i0 + 1 if i0 < ch - 1 else i0
        li = si - np.float32(i0)
        for j in range(width):
            if valid[i, j]:
                continue
            sj = max(scale_j * (np.float32(j) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
            j0 = int(sj)
            j1 = j0 + 1 if j0 < cw - 1 else j0
            lj = sj - np.float32(j0)
            for c in range(channels):
                top = (np.float32(1.0) - lj) * coarse[i0, j0, c] + lj * coarse[i0, j1, c]
                bottom = (np.float32(1.0) - lj) * coarse[i1, j0, c] + lj * coarse[i1, j1, c]
                out[i, j, c] = (np.float32(1.0) - li) * top + li * bottom
    return out


# ------------------------------------------------------------------------------------ sample_sparse_trilinear


@numba.njit(parallel=True, cache=True)
def sample_sparse_trilinear(g, resolution, slot_keys, slot_rows, table, radius, out, found):
    """``sample_sparse_trilinear`` for grid-space points ``g (P, 3)`` float64 into ``out (P, C)`` / ``found (P,)``:
    active voxels in the hash table ``slot_keys``/``slot_rows`` (rows of ``table (N, C)``), then the nearest active
    centre within ``radius`` voxels where no trilinear neighbour is active."""
    channels = table.shape[1]
    rx, ry, rz = resolution[0], resolution[1], resolution[2]
    for p in numba.prange(g.shape[0]):
        total = 0.0
        acc = np.zeros(channels)
        bx = np.floor(g[p, 0] - 0.5)
        by = np.floor(g[p, 1] - 0.5)
        bz = np.floor(g[p, 2] - 0.5)
        fx = g[p, 0] - 0.5 - bx
        fy = g[p, 1] - 0.5 - by
        fz = g[p, 2] - 0.5 - bz
        for corner in range(8):
            dx = (corner >> 2) & 1
            dy = (corner >> 1) & 1
            dz = corner & 1
            cx = np.int64(bx) + dx
            cy = np.int64(by) + dy
            cz = np.int64(bz) + dz
            if cx < 0 or cy < 0 or cz < 0 or cx >= rx or cy >= ry or cz >= rz:
                continue
            row = hashtable.lookup(slot_keys, slot_rows, (cx * ry + cy) * rz + cz)
            if row < 0:
                continue
            w = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy) * (fz if dz else 1.0 - fz)
            total += w
            for c in range(channels):
                acc[c] += w * table[row, c]
        if total > 0:
            for c in range(channels):
                out[p, c] = acc[c] / max(total, 1e-12)
            found[p] = True
            continue
        # Nearest active voxel centre within the radius.
        hx = np.int64(np.floor(g[p, 0]))
        hy = np.int64(np.floor(g[p, 1]))
        hz = np.int64(np.floor(g[p, 2]))
        best = np.inf
        best_row = -1
        for ox in range(-radius, radius + 1):
            for oy in range(-radius, radius + 1):
                for oz in range(-radius, radius + 1):
                    cx, cy, cz = hx + ox, hy + oy, hz + oz
                    if cx < 0 or cy < 0 or cz < 0 or cx >= rx or cy >= ry or cz >= rz:
                        continue
                    row = hashtable.lookup(slot_keys, slot_rows, (cx * ry + cy) * rz + cz)
                    if row < 0:
                        continue
                    d = (cx + 0.5 - g[p, 0]) ** 2 + (cy + 0.5 - g[p, 1]) ** 2 + (cz + 0.5 - g[p, 2]) ** 2
                    if d < best:
                        best = d
                        best_row = row
        if best_row >= 0:
            for c in range(channels):
                out[p, c] = table[best_row, c]
            found[p] = True
