"""Checkpoint files and the resumable batch stream (spec training.md 1.10, 1.11, 8.16, 8.22)."""

import random

import numpy as np
import pytest
import torch

from omnivox.train import checkpoint as ckpt
from omnivox.train.data_stream import BatchStream, balanced_groups


class Numbers(torch.utils.data.Dataset):
    def __init__(self, n, loads=None):
        self.n = n
        if loads is not None:
            self.loads = loads

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"i": i}


def _indices(micro):
    return [int(v) for m in micro for v in m["i"]]


def test_ranks_get_disjoint_covering_shares_of_each_epoch():
    streams = [BatchStream(Numbers(23), 6, rank, 2, 1, seed=3) for rank in range(2)]
    seen = [sum((_indices(s.next()) for _ in range(3)), []) for s in streams]
    assert not set(seen[0]) & set(seen[1])
    order = streams[0].epoch_order(0)
    assert sorted(seen[0] + seen[1]) == sorted(order[:18])  # 23 // 6 = 3 full global batches, the rest dropped
    assert _indices(streams[0].next()) and streams[0].epoch == 1  # next epoch, new permutation


def test_stream_resumes_at_its_cursor():
    straight = BatchStream(Numbers(20), 4, 0, 1, 2, seed=0)
    batches = [_indices(straight.next()) for _ in range(8)]  # crosses an epoch boundary (5 per epoch)
    first = BatchStream(Numbers(20), 4, 0, 1, 2, seed=0)
    for _ in range(3):
        first.next()
    resumed = BatchStream(Numbers(20), 4, 0, 1, 2, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert [_indices(resumed.next()) for _ in range(5)] == batches[3:]


def test_balanced_shares_keep_token_totals_within_the_greedy_bound():
    g = torch.Generator().manual_seed(0)
    loads = torch.randint(1, 1000, (64,), generator=g).tolist()
    groups = balanced_groups(list(range(64)), loads, 4)
    assert sorted(sum(groups, [])) == list(range(64)) and {len(x) for x in groups} == {16}
    totals = [sum(loads[i] for i in group) for group in groups]
    assert max(totals) - min(totals) <= max(loads)
    streams = [BatchStream(Numbers(64, loads), 16, r, 4, 1, seed=0) for r in range(4)]
    shares = [_indices(s.next()) for s in streams]
    assert sorted(sum(shares, [])) == sorted(streams[0].epoch_order(0)[:16])


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    ckpt.write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        ckpt.write_json_atomic(tmp_path / "a.json", {"x": object()})  # not JSON: the old file stays intact
    assert ckpt.read_json(tmp_path / "a.json") == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    for _ in range(2):
        sum(p.square().sum() for p in params).backward()
        opt.step()
    tensors, rest = ckpt.flatten_optimizer_state(opt.state_dict())
    ckpt.write_safetensors_atomic(tmp_path / "opt.safetensors", tensors)
    ckpt.write_json_atomic(tmp_path / "opt.json", rest)
    again = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-3)
    again.load_state_dict(ckpt.unflatten_optimizer_state(ckpt.read_safetensors(tmp_path / "opt.safetensors"),
                                                         ckpt.read_json(tmp_path / "opt.json")))
    for a, b in zip(opt.state_dict()["state"].values(), again.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.param_groups[0]["betas"] == [0.9, 0.95]


def test_rng_states_round_trip():
    tensors, rest = ckpt.capture_rng_states(torch.device("cpu"))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng_states(tensors, rest, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_latest_step_ignores_incomplete_checkpoints(tmp_path):
    (tmp_path / "misc_step0000010.json").write_text("{}")
    (tmp_path / "misc_step0000020.safetensors").write_bytes(b"")  # JSON not written yet: incomplete
    assert ckpt.find_latest_step(tmp_path) == 10
    assert ckpt.find_latest_step(tmp_path / "absent") is None
