"""Work lists for the Triton submanifold convolution, derived once from a neighbour map with torch ops.

Both are performance values: pure functions of the ``(N, 27)`` neighbour table, cached on the `NeighborMap`
(``NeighborMap.derived``) so that every convolution at one scale shares them. They run on the table's device
and need no Triton, so the CPU tests check them directly.

`BlockSchedule` (forward and input gradient). Rows are sorted by their 27-bit neighbour pattern and cut into
blocks of ``block_rows``; each block lists only the taps some of its rows use (its *slots*), and for each slot
the neighbour row of every row of the block (``-1`` where that row has no neighbour there). A program then
walks one flat loop over (slot, channel chunk) pairs: no branch on the tap, so the compiler can software-pipeline
the gathers of the next step under the matrix products of this one. Each slot's neighbour rows are contiguous,
so loading them is one coalesced read instead of a strided read of the table.

`TapPairs` (weight gradient). For every tap ``v``, the pairs ``(i, table[i, v])`` of rows that have a neighbour
there, stored once for taps 0..13: by symmetry (``table[i, v] = j <=> table[j, 26 - v] = i``) tap ``26 - v`` has
the same pairs swapped. ``grad_W[v]`` is then a dense reduction over a packed list, with no masked rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KERNEL_VOLUME = 27
CENTER_TAP = 13

#: Sort rows by neighbour pattern over the whole set (see `block_schedule`'s ``sort_window``).
GLOBAL_SORT = 1 << 62

# Elements of the (slots, block_rows) index tensors built at once: bounds the int64 temporaries to ~128 MB.
_SLOT_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True, eq=False)
class BlockSchedule:
    """Rows in blocks, and per block the taps its rows use, with those taps' neighbour rows.

    Block ``b`` holds schedule positions ``b * block_rows ...`` (the last block may be partial) and slots
    ``slot_offsets[b] : slot_offsets[b + 1]``.

    Attributes:
        block_rows: rows per block (the kernel's ``BLOCK_N``).
        order: ``(N,) int32``; the row at each schedule position.
        slot_offsets: ``(num_blocks + 1,) int32``; start of each block's slots, then the slot count.
        slot_taps: ``(num_slots,) int32``; the tap of each slot, increasing within a block.
        slot_neighbors: ``(num_slots, block_rows) int32``; ``slot_neighbors[s, r] = table[order[b * block_rows + r],
            slot_taps[s]]`` for slot ``s`` of block ``b``, and ``-1`` past the last row.
    """

    block_rows: int
    order: torch.Tensor
    slot_offsets: torch.Tensor
    slot_taps: torch.Tensor
    slot_neighbors: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return self.slot_offsets.shape[0] - 1

    @property
    def num_slots(self) -> int:
        return self.slot_taps.shape[0]

    def __repr__(self) -> str:
        return (f"BlockSchedule(rows={self.order.shape[0]}, block_rows={self.block_rows}, "
                f"blocks={self.num_blocks}, slots={self.num_slots})")


def neighbor_patterns(table: torch.Tensor) -> torch.Tensor:
    """``(N,) int64``: bit ``v`` set where row ``i`` has a neighbour at tap ``v``."""
    pattern = torch.zeros(table.shape[0], dtype=torch.int64, device=table.device)
    for tap in range(KERNEL_VOLUME):  # one column at a time: no (N, 27) int64 temporary
        pattern |= (table[:, tap] >= 0).long() << tap
    return pattern


def block_schedule(table: torch.Tensor, block_rows: int, sort_window: int = GLOBAL_SORT) -> BlockSchedule:
    """Group rows with similar neighbour patterns into blocks and list each block's used taps.

    Args:
        table: ``(N, 27) int32`` neighbour map (``-1`` = no neighbour).
        block_rows: rows per block, >= 1.
        sort_window: rows are sorted by neighbour pattern inside consecutive windows of this many rows
            (1 keeps the input order; the default sorts globally, which skips the most taps).

    Returns:
        The `BlockSchedule`, on the table's device.
    """
    if table.dim() != 2 or table.shape[1] != KERNEL_VOLUME:
        raise ValueError(f"table must be (N, {KERNEL_VOLUME}), got {tuple(table.shape)}")
    if block_rows < 1 or sort_window < 1:
        raise ValueError(f"block_rows and sort_window must be >= 1, got {block_rows} and {sort_window}")
    device = table.device
    n = table.shape[0]
    num_blocks = -(-n // block_rows)
    pattern = neighbor_patterns(table)
    if sort_window > 1 and n > 1:
        window = torch.arange(n, device=device) // sort_window
        order = torch.argsort((window << KERNEL_VOLUME) | pattern, stable=True)
    else:
        order = torch.arange(n, device=device)
    # Taps each block uses: the OR of its rows' patterns, one bit column at a time.
    block_pattern = torch.zeros(num_blocks * block_rows, dtype=torch.int64, device=device)
    block_pattern[:n] = pattern[order]
    block_pattern = block_pattern.view(num_blocks, block_rows)
    used = torch.stack([((block_pattern >> tap) & 1).any(1) for tap in range(KERNEL_VOLUME)], 1)
    slot_offsets = torch.zeros(num_blocks + 1, dtype=torch.int32, device=device)
    slot_offsets[1:] = used.sum(1).cumsum(0)
    slot_block, slot_taps = used.nonzero(as_tuple=True)  # block-major, taps increasing
    padded_order = torch.full((num_blocks * block_rows,), -1, dtype=torch.int64, device=device)
    padded_order[:n] = order
    padded_order = padded_order.view(num_blocks, block_rows)
    flat_table = table.reshape(-1)
    slot_neighbors = torch.empty(slot_taps.shape[0], block_rows, dtype=torch.int32, device=device)
    step = max(1, _SLOT_CHUNK_ELEMENTS // block_rows)
    for start in range(0, slot_taps.shape[0], step):
        rows = padded_order[slot_block[start:start + step]]  # (slots, block_rows), -1 past the end
        flat = rows.clamp(min=0) * KERNEL_VOLUME + slot_taps[start:start + step, None]
        slot_neighbors[start:start + step] = torch.where(rows >= 0, flat_table[flat], -1)
    return BlockSchedule(block_rows=block_rows, order=order.to(torch.int32), slot_offsets=slot_offsets,
                         slot_taps=slot_taps.to(torch.int32), slot_neighbors=slot_neighbors)


@dataclass(frozen=True, eq=False)
class TapPairs:
    """For taps ``v = 0..13``, the rows ``i`` with a neighbour at ``v`` and that neighbour ``table[i, v]``.

    Pairs of tap ``v`` are ``rows[offsets[v]:offsets[v + 1]]`` with ``neighbors[...]`` (increasing ``i``). Tap
    ``26 - v`` has the same pairs with the roles swapped; tap 13 (the centre) pairs every row with itself.

    Attributes:
        offsets: ``(15,) int32``.
        rows: ``(P,) int32``.
        neighbors: ``(P,) int32``.
        centre_is_self: every row's centre neighbour is the row itself (true for every map built from
            coordinates), so the centre tap's pairs visit each row exactly once: the weight-gradient kernel then
            sums the bias gradient on them.
    """

    offsets: torch.Tensor
    rows: torch.Tensor
    neighbors: torch.Tensor
    centre_is_self: bool = False
    _share_bounds: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def share_bounds(self, num_shares: int, num_rows: int) -> torch.Tensor:
        """``(14, num_shares + 1) int32``: share ``s`` of listed tap ``v`` is pairs ``bounds[v, s]:bounds[v, s + 1]``,
        the pairs whose row ``i`` lies in the ``s``-th of ``num_shares`` equal ranges of ``range(num_rows)``.

        Splitting every tap at the same rows (not at the same pair counts) makes the programs of one share, which
        run side by side, read the same rows and their neighbours for all 27 taps: they share them in L2.
        Kept per ``(num_shares, num_rows)``.
        """
        key = (num_shares, num_rows)
        if key not in self._share_bounds:
            share_rows = -(-num_rows // num_shares)
            starts = (torch.arange(num_shares + 1, dtype=torch.int32, device=self.rows.device)
                      * share_rows).clamp(max=num_rows)
            offsets = self.offsets.tolist()
            self._share_bounds[key] = torch.stack([
                offsets[v] + torch.searchsorted(self.rows[offsets[v]:offsets[v + 1]], starts).to(torch.int32)
                for v in range(len(offsets) - 1)])
        return self._share_bounds[key]

    def counts(self) -> list:
        """Pairs per tap, all 27 taps (host list)."""
        half = (self.offsets[1:] - self.offsets[:-1]).tolist()
        return half + half[-2::-1]

    def __repr__(self) -> str:
        return f"TapPairs(pairs={self.rows.shape[0]}, listed_taps={self.offsets.shape[0] - 1})"


def tap_pairs(table: torch.Tensor) -> TapPairs:
    """The (row, neighbour) pairs of taps 0..13 (see `TapPairs`), on the table's device."""
    if table.dim() != 2 or table.shape[1] != KERNEL_VOLUME:
        raise ValueError(f"table must be (N, {KERNEL_VOLUME}), got {tuple(table.shape)}")
    rows, neighbors, counts = [], [], []
    for tap in range(CENTER_TAP + 1):
        i = (table[:, tap] >= 0).nonzero().squeeze(1)
        rows.append(i.to(torch.int32))
        neighbors.append(table[i, tap])
        counts.append(i.shape[0])
    offsets = torch.zeros(CENTER_TAP + 2, dtype=torch.int32, device=table.device)
    offsets[1:] = torch.tensor(counts, device=table.device).cumsum(0)
    centre = table[:, CENTER_TAP]
    centre_is_self = bool((centre == torch.arange(table.shape[0], device=table.device)).all())
    return TapPairs(offsets=offsets, rows=torch.cat(rows), neighbors=torch.cat(neighbors).to(torch.int32),
                    centre_is_self=centre_is_self)
