"""EMA against the closed form (spec training.md 8.17)."""

import torch

from omnivox.train.ema import EMA


def test_ema_of_frozen_weights_follows_the_closed_form():
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64))
    e0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ema = EMA([p], [0.9, 0.5])
    for rate in ema.rates:
        ema.shadows[rate] = [e0.float().clone()]
    for _ in range(7):
        ema.update([p])
    for rate in (0.9, 0.5):
        expected = p.detach() + (e0 - p.detach()) * rate ** 7  # e = p + (e0 - p) rho^k
        rel = (ema.shadows[rate][0].double() - expected).norm() / expected.norm()
        assert rel < 1e-6


def test_ema_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EMA([p], [0.75])
    with torch.no_grad():
        p.copy_(torch.tensor([5.0, 2.0]))
    ema.update([p])  # 0.75 * [1, -2] + 0.25 * [5, 2] = [2, -1]
    assert ema.shadows[0.75][0].tolist() == [2.0, -1.0]
    with torch.no_grad():
        p.copy_(torch.tensor([2.0, 3.0]))
    ema.update([p])  # 0.75 * [2, -1] + 0.25 * [2, 3] = [2, 0]
    assert ema.shadows[0.75][0].tolist() == [2.0, 0.0]


def test_ema_keeps_float32_for_low_precision_weights():
    p = torch.nn.Parameter(torch.full((4,), 1.0, dtype=torch.bfloat16))
    ema = EMA([p], [0.999])
    with torch.no_grad():
        p.fill_(2.0)
    ema.update([p])
    assert ema.shadows[0.999][0].dtype == torch.float32
    torch.testing.assert_close(ema.shadows[0.999][0], torch.full((4,), 1.001), rtol=0, atol=1e-6)
