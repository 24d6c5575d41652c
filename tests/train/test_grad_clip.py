"""Gradient clipping and fp16 loss scaling against hand computations (spec training.md 8.18, 8.19)."""

import math

import numpy as np
import pytest
import torch

from omnivox.train.grad_clip import AdaptiveGradClipper, NormClipper
from omnivox.train.precision import DivergenceError, MixedPrecision


def _param_with_grad(values):
    p = torch.nn.Parameter(torch.zeros(len(values), dtype=torch.float64))
    p.grad = torch.tensor(values, dtype=torch.float64)
    return p


def test_adaptive_clipper_threshold_follows_the_percentile_of_recent_norms():
    clipper = AdaptiveGradClipper(max_norm=10.0, clip_percentile=50, buffer_size=4)
    norms = [3.0, 4.0, 5.0, 13.0, 2.0, 1.0]
    thresholds = []
    for n in norms:
        p = _param_with_grad([n * 0.6, n * 0.8])  # |g| = n
        before = clipper.threshold
        assert math.isclose(clipper([p]), n, rel_tol=1e-12)  # the pre-clip norm is returned
        # clipped at the old threshold (torch divides by norm + 1e-6)
        assert math.isclose(float(p.grad.norm()), min(n, before), rel_tol=1e-6)
        thresholds.append(clipper.threshold)
    # max_norm until 4 finite norms are buffered, then min(median of the last 4, max_norm)
    assert thresholds[:3] == [10.0, 10.0, 10.0]
    assert math.isclose(thresholds[3], np.percentile([3, 4, 5, 13], 50))  # 4.5
    assert math.isclose(thresholds[4], np.percentile([2, 4, 5, 13], 50))  # ring buffer replaced the oldest
    assert math.isclose(thresholds[5], np.percentile([2, 1, 5, 13], 50))


def test_adaptive_clipper_skips_non_finite_norms_and_round_trips():
    clipper = AdaptiveGradClipper(max_norm=1.0, buffer_size=3)
    clipper([_param_with_grad([float("inf"), 0.0])])
    assert clipper.buffer_length == 0
    for n in (0.5, 2.0, 0.25):
        clipper([_param_with_grad([n])])
    assert clipper.threshold == min(np.percentile([0.5, 2.0, 0.25], 95), 1.0)
    other = AdaptiveGradClipper(max_norm=1.0, buffer_size=3)
    other.load_state_dict(clipper.state_dict())
    assert other.state_dict() == clipper.state_dict()


def test_fixed_norm_clip():
    p = _param_with_grad([3.0, 4.0])
    assert NormClipper(1.0)([p]) == 5.0
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8], dtype=torch.float64))


def test_fp16_loss_scaling_skips_bad_steps_and_grows_on_good_ones():
    model = torch.nn.Linear(3, 2).half()
    params = list(model.parameters())
    mp = MixedPrecision("inflat_all", "float16", params, "cpu", scale_growth=1e-3)
    assert all(m.dtype == torch.float32 and m is not p for m, p in zip(mp.master_params, params))
    assert mp.loss_scale == 2.0 ** 20
    for p in params:
        p.grad = torch.ones_like(p) * 8.0
    assert mp.unscale_to_master()
    assert float(mp.master_params[0].grad[0, 0]) == 8.0 / 2 ** 20
    with torch.no_grad():
        mp.master_params[0].add_(1.0)
    mp.after_step(True)
    assert math.isclose(mp.log_scale, 20.001)
    assert torch.equal(params[0], mp.master_params[0].half())  # masters copied back
    before = [p.detach().clone() for p in params]
    params[0].grad[0, 0] = float("inf")
    assert not mp.unscale_to_master()
    mp.after_step(False)
    assert math.isclose(mp.log_scale, 19.001)
    assert all(torch.equal(a, b) for a, b in zip(before, params))  # a skipped step changes nothing
    mp.log_scale = 0.5
    with pytest.raises(DivergenceError):
        mp.after_step(False)


def test_bf16_never_scales():
    params = list(torch.nn.Linear(3, 2).parameters())
    mp = MixedPrecision("amp", "bfloat16", params, "cpu")
    assert mp.loss_scale == 1.0 and mp.state_dict() == {}
    assert all(m is p for m, p in zip(mp.master_params, params))  # float32 weights are their own masters
