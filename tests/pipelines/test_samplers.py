"""Sampler schedules and CFG / interval / rescale arithmetic against hand-computed values (spec models.md 8)."""

import numpy as np
import pytest
import torch

from omnivox.pipelines.samplers import (SIGMA_MIN, FlowEulerSampler, Guidance, SamplerParams, euler_timesteps,
                                        guided_steps, item_std, network_calls)
from omnivox.pipelines.testing import released_samplers

SPEC_T5 = [1.0, .982143, .961538, .9375, .909091, .875, .833333, .78125, .714286, .625, .5, .3125, 0.0]
SPEC_T3 = [1.0, .970588, .9375, .9, .857143, .807692, .75, .681818, 0.6, .5, .375, .214286, 0.0]


@pytest.mark.parametrize("rescale_t, expected", [(5.0, SPEC_T5), (3.0, SPEC_T3)])
def test_euler_grid_matches_spec_values(rescale_t, expected):
    ts = euler_timesteps(12, rescale_t)
    assert len(ts) == 13 and all(isinstance(t, float) for t in ts)
    np.testing.assert_allclose(ts, expected, atol=5e-7)


def test_rescale_3_grid_hits_0_6_exactly_and_that_step_is_guided():
    ts = euler_timesteps(12, 3.0)
    assert ts[8] == 0.6  # exactly, in float64
    guidance = Guidance(7.5, 0.5, (0.6, 1.0))
    assert guidance.strength_at(ts[8]) == 7.5 and guidance.strength_at(ts[9]) == 1.0
    assert guided_steps(released_samplers()["shape_slat"]) == 9
    assert guided_steps(released_samplers()["tex_slat"]) == 0


def _hand_x0(x, t, v):
    return (1 - SIGMA_MIN) * x - (SIGMA_MIN + (1 - SIGMA_MIN) * t) * v


def _hand_v(x, t, x0):
    return ((1 - SIGMA_MIN) * x - x0) / (SIGMA_MIN + (1 - SIGMA_MIN) * t)


def test_cfg_with_rescale_dense_uses_unbiased_std():
    gen = torch.Generator().manual_seed(3)
    x, vp, vn = (torch.randn(2, 3, 4, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    t, g, phi = 0.8, 7.5, 0.7
    got = Guidance(g, phi, (0.6, 1.0)).combine(x, t, vp, vn)
    xn, vpn, vnn = x.numpy(), vp.numpy(), vn.numpy()
    expected = np.empty_like(xn)
    for b in range(2):
        v = g * vpn[b] + (1 - g) * vnn[b]
        x0p, x0c = _hand_x0(xn[b], t, vpn[b]), _hand_x0(xn[b], t, v)
        x0 = phi * x0c * x0p.std(ddof=1) / x0c.std(ddof=1) + (1 - phi) * x0c
        expected[b] = _hand_v(xn[b], t, x0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_cfg_with_rescale_sparse_uses_population_std_per_item():
    gen = torch.Generator().manual_seed(4)
    counts = [5, 9]
    batch_index = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))
    x, vp, vn = (torch.randn(14, 6, generator=gen, dtype=torch.float64) for _ in range(3))
    t, g, phi = 0.9, 3.0, 0.5
    got = Guidance(g, phi, (0.6, 1.0)).combine(x, t, vp, vn, batch_index, 2)
    expected = np.empty((14, 6))
    start = 0
    for n in counts:
        rows = slice(start, start + n)
        xb, vpb, vnb = x[rows].numpy(), vp[rows].numpy(), vn[rows].numpy()
        v = g * vpb + (1 - g) * vnb
        x0p, x0c = _hand_x0(xb, t, vpb), _hand_x0(xb, t, v)
        x0 = phi * x0c * x0p.std(ddof=0) / x0c.std(ddof=0) + (1 - phi) * x0c
        expected[rows] = _hand_v(xb, t, x0)
        start += n
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_cfg_without_rescale_and_outside_interval():
    x, vp, vn = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4,
                                                                                                       dtype=torch.float64)
    guidance = Guidance(2.0, 0.0, (0.6, 0.9))
    torch.testing.assert_close(guidance.combine(x, 0.9, vp, vn), 2 * vp - vn)  # inclusive upper end
    assert guidance.combine(x, 0.95, vp, None) is vp                          # outside: conditional only
    assert Guidance(0.0).combine(x, 0.5, None, vn) is vn


def test_item_std_sparse_equals_population_std():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    index = torch.tensor([0] * 4 + [1] * 6)
    std = item_std(x, index, 2)
    assert std.shape == (10, 1)
    assert abs(float(std[0]) - x[:4].numpy().std()) < 1e-12 and abs(float(std[9]) - x[4:].numpy().std()) < 1e-12


def test_unconditional_pass_skipped_where_guidance_is_one():
    calls = []

    def velocity(x, t, cond):
        calls.append((t, float(cond.sum())))
        return x * 0.1 + cond.mean()

    cond, neg = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    for params in released_samplers().values():
        calls.clear()
        FlowEulerSampler().sample(velocity, torch.randn(1, 4), cond, neg, params)
        assert len(calls) == network_calls(params)
        unconditional = [t for t, s in calls if s == 0]
        assert len(unconditional) == guided_steps(params)
        lo, hi = params.guidance_interval
        assert all(lo <= t <= hi for t in unconditional)
    assert network_calls(released_samplers()["tex_slat"]) == 12


def test_euler_update_by_hand():
    """Two steps with rescale_t = 2 and CFG 2 inside [0.5, 1]: v = 2 * (x + 1) - x = x + 2."""
    params = SamplerParams(steps=2, guidance_strength=2.0, guidance_interval=(0.5, 1.0), rescale_t=2.0)
    ts = euler_timesteps(2, 2.0)
    assert ts == [1.0, 2 * 0.5 / (1 + 0.5), 0.0]
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float32)
    got = FlowEulerSampler().sample(lambda x, t, c: x + c.mean(), x0, torch.ones(1, 1, 1), torch.zeros(1, 1, 1),
                                    params)
    x = x0.double()
    for t, t_prev in zip(ts[:-1], ts[1:]):
        v = (x + 2) if 0.5 <= t <= 1 else (x + 1)
        x = x - (t - t_prev) * v
    torch.testing.assert_close(got.double(), x, rtol=1e-6, atol=1e-6)


def test_sampler_params_json_round_trip_and_overrides():
    params = released_samplers()["sparse_structure"]
    again = SamplerParams.from_json(params.to_json())
    assert again == params
    assert params.replace(steps=3).steps == 3 and params.steps == 12
    with pytest.raises(ValueError, match="unknown sampler parameters"):
        params.replace(stepz=3)
    with pytest.raises(ValueError, match="unsupported sampler"):
        SamplerParams.from_json({"name": "DDIM"})
    with pytest.raises(ValueError, match="guidance_interval"):
        SamplerParams(guidance_interval=(1.0, 0.5))
