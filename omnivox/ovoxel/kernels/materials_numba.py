"""CPU kernels (numba) for textured mesh -> per-voxel PBR attributes (spec ovoxel.md section 4).

``number_pairs`` turns the scan's crossings into (triangle, voxel) pairs with first-touch voxel numbers;
``accumulate_pairs`` is the fused CPU version of ``omnivox.ovoxel.materials``' PyTorch path (barycentrics,
texture reads, channel rules, weighted sums) -- that PyTorch path is the reference it is tested against.
Arithmetic is float32 in the spec's operation order; the weighted sums run over the pairs in scan order.

Texture tables (built by ``omnivox.ovoxel.materials._texture_tables``), for ``X`` textures of ``L`` levels at
most: ``texels`` (sum of all level areas, 4) uint8; ``level_offset / level_width / level_height`` (X, L) int64;
``texture_info`` (X, 5) int64 = (num_mips, filter, wrap_s, wrap_t, uv_set); ``texture_transform`` (X, 6)
float32 = the first two rows of the UV matrix. Materials: ``material_textures`` (M, 3) int64 texture index of
base colour / metallic-roughness / emissive (-1 for none); ``material_factors`` (M, 10) float32 = base RGBA,
metallic, roughness, emissive RGB, alpha cutoff; ``material_alpha_mode`` (M,) int64.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_BYTE = np.float32(255.0)


@nb.njit(cache=True)
def number_pairs(tri, axis, owner, res):
    """Crossings -> (tri_index (P,) int64, voxel_of_pair (P,) int64, coords (N, 3) int32).

    Each crossing touches the 4 voxels around its edge, outer loop over the first perpendicular axis, inner
    over the second (spec 2.2); a triangle's crossings are contiguous, so remembering the last triangle per
    voxel de-duplicates per triangle. Voxels are numbered in first-touch order (= the geometry's order).
    """
    num_crossings = tri.shape[0]
    capacity_bits = 4
    while (1 << capacity_bits) < 4 * num_crossings + 16:  # load factor <= 0.5 even if every voxel is new
        capacity_bits += 1
    capacity = 1 << capacity_bits
    shift = np.uint64(64 - capacity_bits)
    table_keys = np.full(capacity, -1, dtype=np.int64)
    table_values = np.empty(capacity, dtype=np.int64)
    pair_tri = np.empty(4 * num_crossings, dtype=np.int64)
    pair_voxel = np.empty(4 * num_crossings, dtype=np.int64)
    coords = np.empty((4 * num_crossings, 3), dtype=np.int32)
    last_tri = np.empty(4 * num_crossings, dtype=np.int64)
    gy, gz = np.int64(res[1]), np.int64(res[2])
    num_voxels = 0
    num_pairs = 0
    for m in range(num_crossings):
        t = np.int64(tri[m])
        c = axis[m]
        for da in range(2):
            for db in range(2):
                q0, q1, q2 = owner[m, 0], owner[m, 1], owner[m, 2]
                # q[(c + 1) % 3] += da and q[(c + 2) % 3] += db, spelled out per axis.
                if c == 0:
                    q1 += da
                    q2 += db
                elif c == 1:
                    q2 += da
                    q0 += db
                else:
                    q0 += da
                    q1 += db
                key = (np.int64(q0) * gy + q1) * gz + q2
                slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> shift)
                while True:
                    stored = table_keys[slot]
                    if stored == key:
                        voxel = table_values[slot]
                        break
                    if stored == -1:
                        table_keys[slot] = key
                        table_values[slot] = num_voxels
                        voxel = num_voxels
                        coords[voxel, 0], coords[voxel, 1], coords[voxel, 2] = q0, q1, q2
                        last_tri[voxel] = -1
                        num_voxels += 1
                        break
                    slot = (slot + 1) & (capacity - 1)
                if last_tri[voxel] != t:
                    last_tri[voxel] = t
                    pair_tri[num_pairs] = t
                    pair_voxel[num_pairs] = voxel
                    num_pairs += 1
    return pair_tri[:num_pairs].copy(), pair_voxel[:num_pairs].copy(), coords[:num_voxels].copy()


@nb.njit(cache=True, inline="always")
def _wrap(k, size, mode):
    if mode == 1:  # CLAMP_TO_EDGE
        return min(max(k, 0), size - 1)
    if mode == 2:  # MIRRORED_REPEAT
        m = k % (2 * size)  # numba follows Python: non-negative for a positive divisor
        return m if m < size else 2 * size - m - 1
    return k % size


@nb.njit(cache=True, inline="always")
def _bilinear(texels, offset, width, height, x, y, wrap_s, wrap_t):
    """Bilinear RGBA read at texel coordinates (x, y) (texel centres at +0.5) -> 4 floats in [0, 1]."""
    x = x - _HALF
    y = y - _HALF
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    ix0, iy0 = np.int64(x0), np.int64(y0)
    c0, c1 = _wrap(ix0, width, wrap_s), _wrap(ix0 + 1, width, wrap_s)
    r0, r1 = offset + _wrap(iy0, height, wrap_t) * width, offset + _wrap(iy0 + 1, height, wrap_t) * width
    return (_mix(texels, r0 + c0, r0 + c1, r1 + c0, r1 + c1, 0, fx, fy),
            _mix(texels, r0 + c0, r0 + c1, r1 + c0, r1 + c1, 1, fx, fy),
            _mix(texels, r0 + c0, r0 + c1, r1 + c0, r1 + c1, 2, fx, fy),
            _mix(texels, r0 + c0, r0 + c1, r1 + c0, r1 + c1, 3, fx, fy))


@nb.njit(cache=True, inline="always")
def _mix(texels, i00, i10, i01, i11, ch, fx, fy):
    top = np.float32(texels[i00, ch]) * (_F1 - fx) + np.float32(texels[i10, ch]) * fx
    bottom = np.float32(texels[i01, ch]) * (_F1 - fx) + np.float32(texels[i11, ch]) * fx
    return (top * (_F1 - fy) + bottom * fy) / _BYTE


@nb.njit(cache=True)
def _sample(j, u, v, corners, corner_uv, vs_max, lod_offset, texels, level_offset, level_width, level_height,
            texture_info, texture_transform):
    """Texture ``j`` at (u, v) (before its UV transform) for the triangle ``corners`` -> RGBA floats."""
    a = texture_transform[j]
    tu = a[0] * u + a[1] * v + a[2]
    tv = a[3] * u + a[4] * v + a[5]
    num_mips, filter_mode, wrap_s, wrap_t = texture_info[j, 0], texture_info[j, 1], texture_info[j, 2], texture_info[j, 3]
    width0, height0 = level_width[j, 0], level_height[j, 0]
    if filter_mode == 0:  # NEAREST
        x = _wrap(np.int64(np.floor(tu * np.float32(width0))), width0, wrap_s)
        y = _wrap(np.int64(np.floor((_F1 - tv) * np.float32(height0))), height0, wrap_t)
        row = level_offset[j, 0] + y * width0 + x
        return (np.float32(texels[row, 0]) / _BYTE, np.float32(texels[row, 1]) / _BYTE,
                np.float32(texels[row, 2]) / _BYTE, np.float32(texels[row, 3]) / _BYTE)
    # Level of detail from the triangle's transformed UV parametrisation (spec 4.3 / 4.4); the transform is
    # affine, so transformed UV differences are its 2x2 part times the original differences.
    r1u, r1v = corner_uv[1, 0] - corner_uv[0, 0], corner_uv[1, 1] - corner_uv[0, 1]
    r2u, r2v = corner_uv[2, 0] - corner_uv[0, 0], corner_uv[2, 1] - corner_uv[0, 1]
    d1u, d1v = a[0] * r1u + a[1] * r1v, a[3] * r1u + a[4] * r1v
    d2u, d2v = a[0] * r2u + a[1] * r2v, a[3] * r2u + a[4] * r2v
    det = d1u * d2v - d1v * d2u
    level = _F0
    if abs(det) >= np.float32(1e-6):
        tangent_sq = _F0
        bitangent_sq = _F0
        for k in range(3):
            e1 = corners[1, k] - corners[0, k]
            e2 = corners[2, k] - corners[0, k]
            tk = d2v * e1 - d1v * e2
            bk = d1u * e2 - d2u * e1
            tangent_sq += tk * tk
            bitangent_sq += bk * bk
        product = (np.sqrt(tangent_sq) / det) * (np.sqrt(bitangent_sq) / det)
        lod = np.float32(np.log2(vs_max / np.sqrt(product) * np.float32(height0))) + lod_offset
        if np.isfinite(lod) and lod > _F0:
            level = min(lod, np.float32(num_mips))
    lower = np.int64(np.floor(level))
    fraction = level - np.float32(lower)
    w0, h0 = level_width[j, lower], level_height[j, lower]
    c0, c1, c2, c3 = _bilinear(texels, level_offset[j, lower], w0, h0, tu * np.float32(w0),
                               (_F1 - tv) * np.float32(h0), wrap_s, wrap_t)
    if fraction > _F0:
        upper = min(lower + 1, num_mips)
        w1, h1 = level_width[j, upper], level_height[j, upper]
        u0, u1, u2, u3 = _bilinear(texels, level_offset[j, upper], w1, h1, tu * np.float32(w1),
                                   (_F1 - tv) * np.float32(h1), wrap_s, wrap_t)
        keep = _F1 - fraction
        c0, c1, c2, c3 = c0 * keep + u0 * fraction, c1 * keep + u1 * fraction, c2 * keep + u2 * fraction, \
            c3 * keep + u3 * fraction
    return c0, c1, c2, c3


@nb.njit(cache=True, parallel=True)
def _pair_values(triangles, tri_index, voxel_of_pair, coords, vs, material_of_tri, uvs, colors,
                 material_textures, material_factors, material_alpha_mode, texels, level_offset, level_width,
                 level_height, texture_info, texture_transform, lod_offset, emissive):
    """Per pair: (value_k * w for base RGB, metallic, roughness, alpha[, emissive RGB], then w)."""
    num_pairs = tri_index.shape[0]
    width = 10 if emissive else 7
    out = np.empty((num_pairs, width), dtype=np.float32)
    vs_max = max(vs[0], max(vs[1], vs[2]))
    for p in nb.prange(num_pairs):
        t = tri_index[p]
        v = voxel_of_pair[p]
        corners = triangles[t]
        ax, ay, az = corners[1, 0] - corners[0, 0], corners[1, 1] - corners[0, 1], corners[1, 2] - corners[0, 2]
        bx, by, bz = corners[2, 0] - corners[0, 0], corners[2, 1] - corners[0, 1], corners[2, 2] - corners[0, 2]
        n0 = ay * bz - az * by
        n1 = az * bx - ax * bz
        n2 = ax * by - ay * bx
        length = np.sqrt(n0 * n0 + n1 * n1 + n2 * n2)
        if length > _F0:
            n0, n1, n2 = n0 / length, n1 / length, n2 / length
        c0 = (np.float32(coords[v, 0]) + _HALF) * vs[0] - corners[0, 0]
        c1 = (np.float32(coords[v, 1]) + _HALF) * vs[1] - corners[0, 1]
        c2 = (np.float32(coords[v, 2]) + _HALF) * vs[2] - corners[0, 2]
        distance = c0 * n0 + c1 * n1 + c2 * n2
        o0, o1, o2 = c0 - distance * n0, c1 - distance * n1, c2 - distance * n2
        d00 = ax * ax + ay * ay + az * az
        d01 = ax * bx + ay * by + az * bz
        d11 = bx * bx + by * by + bz * bz
        d20 = o0 * ax + o1 * ay + o2 * az
        d21 = o0 * bx + o1 * by + o2 * bz
        den = d00 * d11 - d01 * d01
        beta = (d11 * d20 - d01 * d21) / den if den != _F0 else _F0
        gamma = (d00 * d21 - d01 * d20) / den if den != _F0 else _F0
        alpha_b = _F1 - beta - gamma
        weight = _F1 - distance

        m = material_of_tri[t]
        f = material_factors[m]
        r, g, b, a = f[0], f[1], f[2], f[3]
        metallic, roughness = f[4], f[5]
        er, eg, eb = f[6], f[7], f[8]
        if colors.shape[0] > 0:
            cc = colors[t]
            r = r * min(max(alpha_b * cc[0, 0] + beta * cc[1, 0] + gamma * cc[2, 0], _F0), _F1)
            g = g * min(max(alpha_b * cc[0, 1] + beta * cc[1, 1] + gamma * cc[2, 1], _F0), _F1)
            b = b * min(max(alpha_b * cc[0, 2] + beta * cc[1, 2] + gamma * cc[2, 2], _F0), _F1)
            a = a * min(max(alpha_b * cc[0, 3] + beta * cc[1, 3] + gamma * cc[2, 3], _F0), _F1)
        for slot in range(3):
            j = material_textures[m, slot]
            if j < 0 or (slot == 2 and not emissive):
                continue
            s = texture_info[j, 4]
            u = alpha_b * uvs[s, t, 0, 0] + beta * uvs[s, t, 1, 0] + gamma * uvs[s, t, 2, 0]
            w = alpha_b * uvs[s, t, 0, 1] + beta * uvs[s, t, 1, 1] + gamma * uvs[s, t, 2, 1]
            x0, x1, x2, x3 = _sample(j, u, w, corners, uvs[s, t], vs_max, lod_offset, texels, level_offset,
                                     level_width, level_height, texture_info, texture_transform)
            if slot == 0:
                r, g, b = r * x0, g * x1, b * x2
                if material_alpha_mode[m] != 0:
                    a = a * x3
            elif slot == 1:
                metallic = metallic * x2
                roughness = roughness * x1
            else:
                er, eg, eb = er * x0, eg * x1, eb * x2
        mode = material_alpha_mode[m]
        if mode == 0:
            a = _F1
        elif mode == 1:
            a = _F1 if a >= f[9] else _F0
        out[p, 0], out[p, 1], out[p, 2] = r * weight, g * weight, b * weight
        out[p, 3], out[p, 4], out[p, 5] = metallic * weight, roughness * weight, a * weight
        if emissive:
            out[p, 6], out[p, 7], out[p, 8] = er * weight, eg * weight, eb * weight
        out[p, width - 1] = weight
    return out


@nb.njit(cache=True)
def _sum_by_voxel(values, voxel_of_pair, num_voxels):
    """Sums per voxel in pair order (sequential, so the float32 summation order is the scan order)."""
    sums = np.zeros((num_voxels, values.shape[1]), dtype=np.float32)
    for p in range(values.shape[0]):
        v = voxel_of_pair[p]
        for k in range(values.shape[1]):
            sums[v, k] += values[p, k]
    return sums


def accumulate_pairs(*args, num_voxels: int):
    """``_pair_values(*args)`` summed per voxel: (N, 7 or 10) float32 weighted sums, last column = sum of w."""
    values = _pair_values(*args)
    return _sum_by_voxel(values, args[2], num_voxels)


@nb.njit(cache=True)
def mip_pyramid(image):
    """(S, S, C) uint8, S a power of two -> (flat texels (sum of level areas, C) uint8, level offsets (L,) int64).

    Level k + 1 is the truncating 2x2 mean ``(a + b + c + d) // 4`` of level k (spec 4.4), down to 1x1.
    """
    side = image.shape[0]
    channels = image.shape[2]
    num_levels = 1
    while (side >> (num_levels - 1)) > 1:
        num_levels += 1
    offsets = np.zeros(num_levels, dtype=np.int64)
    total = 0
    for level in range(num_levels):
        offsets[level] = total
        size = side >> level
        total += size * size
    texels = np.empty((total, channels), dtype=np.uint8)
    for y in range(side):
        for x in range(side):
            for ch in range(channels):
                texels[y * side + x, ch] = image[y, x, ch]
    for level in range(1, num_levels):
        size = side >> level
        previous = size * 2
        source = offsets[level - 1]
        target = offsets[level]
        for y in range(size):
            top = source + 2 * y * previous
            bottom = top + previous
            for x in range(size):
                for ch in range(channels):
                    total_value = (np.int32(texels[top + 2 * x, ch]) + np.int32(texels[top + 2 * x + 1, ch])
                                   + np.int32(texels[bottom + 2 * x, ch]) + np.int32(texels[bottom + 2 * x + 1, ch]))
                    texels[target + y * size + x, ch] = np.uint8(total_value // 4)
    return texels, offsets
