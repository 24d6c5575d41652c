"""Work lists of the Triton convolution (kernels/schedule.py), checked against brute force on the CPU.

The Triton kernels trust these lists completely: a tap missing from a block's list, or a neighbour row put in
the wrong slot, would silently drop terms. So every list is rebuilt here the slow, obvious way.
"""

import pytest
import torch

from omnivox.sparse import functional as SF
from omnivox.sparse.kernels import reference as R
from omnivox.sparse.kernels import schedule as S
from sparse_inputs import random_sparse, rel_err


def _real_table(seed: int, resolution: int = 6) -> torch.Tensor:
    x = random_sparse(torch.Generator().manual_seed(seed), channels=1, resolution=resolution)
    return SF.neighbor_map(x).table


def _hand_made_table(block_rows: int, generator: torch.Generator) -> torch.Tensor:
    """Block 0: rows with no neighbour at all; block 1: rows with all 27 taps; then 1.5 blocks of random rows
    (the last block ragged)."""
    n = 3 * block_rows + block_rows // 2
    table = torch.randint(-1, n, (n, 27), generator=generator, dtype=torch.int32)
    table[:block_rows] = -1
    table[block_rows:2 * block_rows] = torch.randint(0, n, (block_rows, 27), generator=generator, dtype=torch.int32)
    return table


def _assert_schedule_matches_brute_force(table: torch.Tensor, schedule: S.BlockSchedule, sort_window: int):
    n, bn = table.shape[0], schedule.block_rows
    order = schedule.order.long()
    assert schedule.order.dtype == schedule.slot_offsets.dtype == schedule.slot_taps.dtype == torch.int32
    assert schedule.slot_neighbors.dtype == torch.int32
    assert torch.equal(order.sort().values, torch.arange(n)), "order is not a permutation"
    # rows stay inside their sort window, sorted by neighbour pattern there
    assert torch.equal(order // sort_window, torch.arange(n) // sort_window)
    pattern = S.neighbor_patterns(table)[order]
    same_window = (torch.arange(1, n) // sort_window) == (torch.arange(n - 1) // sort_window)
    if sort_window > 1:
        assert bool((pattern[1:] >= pattern[:-1])[same_window].all())
    num_blocks = -(-n // bn)
    assert schedule.num_blocks == num_blocks
    assert schedule.slot_offsets[0] == 0 and schedule.slot_offsets[-1] == schedule.num_slots
    assert schedule.slot_neighbors.shape == (schedule.num_slots, bn)
    for b in range(num_blocks):
        rows = order[b * bn:(b + 1) * bn]
        taps_used = [v for v in range(27) if bool((table[rows, v] >= 0).any())]
        first, last = int(schedule.slot_offsets[b]), int(schedule.slot_offsets[b + 1])
        assert schedule.slot_taps[first:last].tolist() == taps_used, f"block {b}"
        expected = torch.full((last - first, bn), -1, dtype=torch.int32)
        expected[:, :rows.shape[0]] = table[rows][:, taps_used].T
        assert torch.equal(schedule.slot_neighbors[first:last], expected), f"block {b}"


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("sort_window", [1, 5, S.GLOBAL_SORT])
def test_block_schedule_lists_exactly_the_taps_each_block_uses(block_rows, sort_window):
    table = _real_table(seed=block_rows + sort_window % 97)
    schedule = S.block_schedule(table, block_rows, sort_window)
    _assert_schedule_matches_brute_force(table, schedule, min(sort_window, table.shape[0]))


def test_block_schedule_blocks_without_neighbours_with_all_taps_and_ragged():
    g = torch.Generator().manual_seed(11)
    table = _hand_made_table(16, g)
    schedule = S.block_schedule(table, 16, sort_window=1)
    assert schedule.slot_offsets[:3].tolist() == [0, 0, 27]  # no slot, then all 27 taps
    assert schedule.num_blocks == 4  # 3.5 blocks of rows
    _assert_schedule_matches_brute_force(table, schedule, 1)
    # sorted: the neighbour-less rows (pattern 0) still come first and still get no slot
    sorted_schedule = S.block_schedule(table, 16)
    assert sorted_schedule.slot_offsets[1] == 0
    _assert_schedule_matches_brute_force(table, sorted_schedule, table.shape[0])


def test_block_schedule_built_in_chunks_is_the_same(monkeypatch):
    table = _real_table(seed=12)
    whole = S.block_schedule(table, 8)
    monkeypatch.setattr(S, "_SLOT_CHUNK_ELEMENTS", 24)  # 3 slots per chunk
    chunked = S.block_schedule(table, 8)
    for name in ("order", "slot_offsets", "slot_taps", "slot_neighbors"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name


def _convolve_by_schedule(feats, schedule: S.BlockSchedule, weight, bias):
    """What the forward kernel computes, step by step in float64: every slot of every block adds its
    gathered rows times its tap's weight; rows are written back through ``order``."""
    n = feats.shape[0]
    bn = schedule.block_rows
    padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])  # row n = zeros for "no neighbour"
    out = torch.zeros(schedule.num_blocks * bn, weight.shape[0], dtype=torch.float64)
    for b in range(schedule.num_blocks):
        for s in range(int(schedule.slot_offsets[b]), int(schedule.slot_offsets[b + 1])):
            nb = schedule.slot_neighbors[s].long()
            nb = torch.where(nb >= 0, nb, n)
            out[b * bn:(b + 1) * bn] += padded[nb] @ weight[:, int(schedule.slot_taps[s])].T
    result = torch.empty(n, weight.shape[0], dtype=torch.float64)
    result[schedule.order.long()] = out[:n] + bias
    return result


@pytest.mark.parametrize("c_in,c_out,block_rows", [(3, 5, 4), (16, 16, 16), (37, 70, 128)])
def test_forward_by_schedule_equals_reference(c_in, c_out, block_rows):
    g = torch.Generator().manual_seed(c_in)
    x = random_sparse(g, channels=c_in)
    table = SF.neighbor_map(x).table
    weight = torch.randn(c_out, 27, c_in, generator=g, dtype=torch.float64)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    got = _convolve_by_schedule(x.feats, S.block_schedule(table, block_rows), weight, bias)
    assert rel_err(got, R.submanifold_conv3d_reference(x.feats, table, weight, bias)) < 1e-13


def test_tap_pairs_list_every_neighbour_pair_once():
    table = _real_table(seed=13)
    pairs = S.tap_pairs(table)
    assert pairs.offsets.shape == (15,) and pairs.rows.dtype == pairs.neighbors.dtype == torch.int32
    counts = pairs.counts()
    assert counts == (table >= 0).sum(0).tolist()  # mirrored taps have as many pairs as their mirror
    for v in range(27):
        listed = min(v, 26 - v)
        first, last = int(pairs.offsets[listed]), int(pairs.offsets[listed + 1])
        i, j = pairs.rows[first:last].long(), pairs.neighbors[first:last].long()
        if v > 13:
            i, j = j, i
        expected_i = (table[:, v] >= 0).nonzero().squeeze(1)
        assert torch.equal(i.sort().values, expected_i), f"tap {v}"
        assert torch.equal(table[i, v].long(), j), f"tap {v}"
    assert torch.equal(pairs.rows[pairs.offsets[13]:pairs.offsets[14]].long(), torch.arange(table.shape[0]))


@pytest.mark.parametrize("num_shares", [1, 3, 7, 500])
def test_tap_pair_shares_cut_every_tap_at_the_same_rows(num_shares):
    table = _real_table(seed=15)
    n = table.shape[0]
    pairs = S.tap_pairs(table)
    bounds = pairs.share_bounds(num_shares, n)
    assert bounds.shape == (14, num_shares + 1) and bounds.dtype == torch.int32
    assert torch.equal(bounds[:, 0], pairs.offsets[:-1]) and torch.equal(bounds[:, -1], pairs.offsets[1:])
    share_rows = -(-n // num_shares)
    for v in range(14):
        for s in range(num_shares):
            rows = pairs.rows[bounds[v, s]:bounds[v, s + 1]].long()
            assert bool(((rows >= s * share_rows) & (rows < (s + 1) * share_rows)).all()), (v, s)
    assert pairs.share_bounds(num_shares, n) is bounds  # kept


def test_weight_grad_by_tap_pairs_equals_reference():
    g = torch.Generator().manual_seed(14)
    x = random_sparse(g, channels=6)
    table = SF.neighbor_map(x).table
    grad_out = torch.randn(x.num_voxels, 9, generator=g, dtype=torch.float64)
    pairs = S.tap_pairs(table)
    got = torch.empty(9, 27, 6, dtype=torch.float64)
    for v in range(27):
        listed = min(v, 26 - v)
        first, last = int(pairs.offsets[listed]), int(pairs.offsets[listed + 1])
        out_rows, in_rows = pairs.rows[first:last].long(), pairs.neighbors[first:last].long()
        if v > 13:
            out_rows, in_rows = in_rows, out_rows
        got[:, v] = grad_out[out_rows].T @ x.feats[in_rows]
    _, want = R.submanifold_conv3d_backward_reference(grad_out, x.feats, table, torch.zeros(9, 27, 6,
                                                      dtype=torch.float64), needs_input_grad=False)
    assert rel_err(got, want) < 1e-13


def test_schedules_of_an_empty_map_and_bad_tables():
    empty = torch.zeros(0, 27, dtype=torch.int32)
    schedule = S.block_schedule(empty, 16)
    assert schedule.num_blocks == 0 and schedule.num_slots == 0 and schedule.order.shape == (0,)
    assert S.tap_pairs(empty).counts() == [0] * 27
    with pytest.raises(ValueError, match="27"):
        S.block_schedule(torch.zeros(4, 26, dtype=torch.int32), 16)
    with pytest.raises(ValueError, match="block_rows"):
        S.block_schedule(empty, 0)
    with pytest.raises(ValueError, match="27"):
        S.tap_pairs(torch.zeros(4, 9, dtype=torch.int32))
