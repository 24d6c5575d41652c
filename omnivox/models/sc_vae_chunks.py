"""Low-memory decoding of an SC-VAE decoder's last stages, in spatial chunks (issue #5).

Most of a decoder's activation memory is spent at its last two levels (at 1024: about 1M voxels at 512^3 and
3.8M at 1024^3). Splitting per-voxel work by rows (``chunk_rows``) does not help there, because the
convolutions and the channel-to-space step still see every voxel at once. Here the *tail* of the decoder
(the blocks of the second-to-last stage, the last `UpsampleBlock`, the blocks of the last stage and the output
head) runs on groups of the tail's input voxels instead:

1. the input voxels are ordered by Morton (Z-order) key, so consecutive voxels are spatially close, and cut
   into groups of ``chunk_voxels`` "own" voxels;
2. each group is grown by a halo: every voxel within ``tail_halo`` steps of an own voxel through the 3x3x3
   neighbour graph of the active voxels. Information in a submanifold network only travels along that graph,
   one step per convolution, so the own voxels (and all their descendants) see exactly the neighbourhood they
   see in the full run;
3. the grown group runs through the tail, and only the outputs that descend from own voxels are kept.

The kept outputs are then put back in the order of the unchunked decoder. Results equal the unchunked ones
up to GEMM rounding (matrix products over a different number of rows may round differently; on an H100 they
were bit-identical, docs/benchmarks/models.md).

What stays full-size: the tail's input, its neighbour map, the final outputs and everything before the tail.
The mode is meant for inference (``torch.no_grad()``): under autograd every group's activations are kept for
the backward pass, so the peak does not drop.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from omnivox.sparse.functional import neighbor_map
from omnivox.sparse.maps import DownsampleMap
from omnivox.sparse.tensor import SparseTensor


def tail_halo(blocks_before: int, blocks_after: int) -> int:
    """Halo width, in voxels of the tail's input level, that makes the chunked tail exact.

    The tail is ``blocks_before`` ConvNeXt blocks (one 3x3x3 conv each) and the upsampling block's ``conv1`` at
    the coarse level, then the upsampling block's ``conv2`` and ``blocks_after`` ConvNeXt blocks at the fine
    level. ``r`` fine steps from a fine voxel reach fine voxels whose parents are at most ``ceil(r / 2)`` coarse
    steps away (and a child's existence depends only on its parent's features, so this also covers which
    children exist).

    Args:
        blocks_before: ConvNeXt blocks of the second-to-last stage (4 in the released decoders).
        blocks_after: ConvNeXt blocks of the last stage (0 in the released decoders).

    Returns:
        Number of neighbour-graph steps at the coarse level (6 for the released decoders).
    """
    fine_steps = blocks_after + 1
    return blocks_before + 1 + math.ceil(fine_steps / 2)


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between the low 21 bits of ``v`` (int64), for 3-D Morton keys."""
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def morton_order(coords: torch.Tensor) -> torch.Tensor:
    """Row order that sorts ``(N, 4) int32`` voxels by batch item, then by Morton key of ``(x, y, z)``.

    Returns:
        ``(N,) int64`` permutation.
    """
    c = coords.long()
    key = _spread_bits(c[:, 1]) | (_spread_bits(c[:, 2]) << 1) | (_spread_bits(c[:, 3]) << 2)
    order = torch.sort(key, stable=True).indices
    return order.index_select(0, torch.sort(c[order, 0], stable=True).indices)


def chunk_groups(x: SparseTensor, chunk_voxels: int, halo: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Cut ``x``'s voxels into spatially coherent groups and grow each by ``halo`` neighbour steps.

    Args:
        x: the tail's input (its 3x3x3 neighbour map is built or reused from its cache).
        chunk_voxels: own voxels per group (the last group may have fewer).
        halo: neighbour-graph steps to add around the own voxels.

    Returns:
        One ``(rows, own)`` pair per group: ``rows (K,) int64`` increasing row indices of ``x`` (own voxels
        plus halo) and ``own (K,) bool``, true for the group's own voxels. Every row of ``x`` is own in
        exactly one group.
    """
    table = neighbor_map(x).table
    groups = []
    for own_rows in morton_order(x.coords).split(chunk_voxels):
        own_mask = torch.zeros(x.num_voxels, dtype=torch.bool, device=x.device)
        own_mask[own_rows] = True
        grown = own_mask.clone()
        for _ in range(halo):
            neighbours = table[grown].reshape(-1)
            grown[neighbours[neighbours >= 0].long()] = True
        rows = torch.nonzero(grown).squeeze(1)
        groups.append((rows, own_mask[rows]))
    return groups


def _sub_map(full_map: DownsampleMap, rows: torch.Tensor, coarse: SparseTensor, num_full: int):
    """The part of ``full_map`` whose parents are ``rows``; returns ``(map, original fine rows)``."""
    lookup = torch.full((num_full,), -1, dtype=torch.int64, device=rows.device)
    lookup[rows] = torch.arange(rows.shape[0], device=rows.device)
    new_parent = lookup[full_map.parent]
    fine_rows = torch.nonzero(new_parent >= 0).squeeze(1)
    sub = DownsampleMap(fine_coords=full_map.fine_coords[fine_rows], coarse_coords=coarse.coords,
                        parent=new_parent[fine_rows], child=full_map.child[fine_rows], batch_size=coarse.batch_size)
    return sub, fine_rows


def decode_tail_in_chunks(decoder, h: SparseTensor, guide, chunk_voxels: int, chunk_rows: Optional[int]):
    """Run a decoder's tail (see the module docstring) on groups of ``chunk_voxels`` voxels of ``h``.

    Args:
        decoder: a `SparseUnetVaeDecoder` (or subclass).
        h: the input of the second-to-last stage, ``(N, C)`` features, on the full voxel set.
        guide: the last upsampling's guide, already checked against ``h``: None (predict), a ``(N, 8)``
            logits `SparseTensor` on ``h``'s coords, or a `DownsampleMap` whose coarse voxels are ``h``'s.
        chunk_voxels: own voxels per group.
        chunk_rows: passed on to the blocks (row-chunked per-voxel work).

    Returns:
        ``(voxels, logits)``: the decoder output ``voxels (M, out_channels) float32`` in the unchunked
        decoder's row order, and the last upsampling's predicted ``(N, 8)`` logits on ``h`` (None unless
        predicted).
    """
    before, upsample = decoder.blocks[-2][:-1], decoder.blocks[-2][-1]
    after = decoder.blocks[-1]
    halo = tail_halo(len(before), len(after))
    logits_full = None
    keys, coords, feats = [], [], []
    fine_scale = None
    for rows, own in chunk_groups(h, chunk_voxels, halo):
        x = SparseTensor(h.coords.index_select(0, rows), h.feats.index_select(0, rows), h.batch_size, h.scale)
        for block in before:
            x = block(x, chunk_rows)
        if isinstance(guide, DownsampleMap):
            sub_map, fine_rows = _sub_map(guide, rows, x, h.num_voxels)
            fine = upsample(x, downsample_map=sub_map, chunk_rows=chunk_rows)
            parent, key = sub_map.parent, fine_rows
        else:
            if guide is None:
                logits = upsample.to_subdiv(x.feats)
                if logits_full is None:
                    logits_full = logits.new_empty(h.num_voxels, 8)
                logits_full[rows[own]] = logits[own]
                mask = logits > 0
            else:
                mask = guide.feats.index_select(0, rows) > 0
            fine = upsample(x, subdivision=mask, chunk_rows=chunk_rows)
            parent = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), mask.sum(1))
            key = rows[parent]  # the coarse ancestor, in the full tensor's rows
        del x
        for block in after:
            fine = block(fine, chunk_rows)
        keep = own[parent]
        keys.append(key[keep])
        coords.append(fine.coords[keep])
        feats.append(decoder._head(fine.feats[keep], chunk_rows))
        fine_scale = fine.scale
        del fine
    if isinstance(guide, DownsampleMap):
        # Each fine row descends from exactly one own voxel: scatter back to the encoder's row order.
        rows_back = torch.cat(keys)
        out = feats[0].new_empty(guide.fine_coords.shape[0], feats[0].shape[1])
        out[rows_back] = torch.cat(feats)
        out_coords = guide.fine_coords
    else:
        # Channel-to-space emits children parent-major and the chunks keep each parent's children in
        # order, so a stable sort by coarse ancestor restores the unchunked row order.
        order = torch.sort(torch.cat(keys), stable=True).indices
        out = torch.cat(feats).index_select(0, order)
        out_coords = torch.cat(coords).index_select(0, order)
    voxels = SparseTensor(out_coords, out, h.batch_size, fine_scale)
    return voxels, (None if logits_full is None else h.replace(logits_full))


def check_chunk_voxels(chunk_voxels, num_stages: int) -> None:
    """Raise a clear error for a bad ``chunk_voxels`` argument."""
    if chunk_voxels is None:
        return
    if isinstance(chunk_voxels, bool) or not isinstance(chunk_voxels, int) or chunk_voxels <= 0:
        raise ValueError(f"chunk_voxels must be a positive int or None, got {chunk_voxels!r}")
    if num_stages < 2:
        raise ValueError("chunk_voxels needs a decoder with at least one upsampling stage")

