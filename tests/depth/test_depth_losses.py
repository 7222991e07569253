"""Scale-invariant log loss: hand values, zero for a perfect prediction, invariance to scale."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dko.depth.losses import multiscale_depth_loss, scale_invariant_log_loss


def test_hand_value_and_mask():
    gt = torch.tensor([1.0, 2.0, 4.0, 0.0]).view(1, 1, 1, 4)
    pred = torch.tensor([2.0, 2.0, 2.0, 7.0]).view(1, 1, 1, 4)
    valid = gt > 0
    d = [math.log(2.0), 0.0, math.log(0.5)]  # the masked pixel does not count
    md, md2 = sum(d) / 3, sum(v * v for v in d) / 3
    for lam in (0.0, 0.85, 1.0):
        assert float(scale_invariant_log_loss(pred, gt, valid, lam)) == pytest.approx(md2 - lam * md * md, rel=1e-6)


def test_perfect_prediction_is_zero_and_empty_images_are_ignored():
    gt = torch.rand(2, 1, 5, 6) * 50 + 1
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[1] = False
    assert float(scale_invariant_log_loss(gt.clone(), gt, valid, 0.85)) == pytest.approx(0.0, abs=1e-7)
    wrong = gt * 3
    one = scale_invariant_log_loss(wrong[:1], gt[:1], valid[:1], 0.0)
    assert float(scale_invariant_log_loss(wrong, gt, valid, 0.0)) == pytest.approx(float(one))


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.1, 10.0), seed=st.integers(0, 1000))
def test_fully_scale_invariant_at_lambda_one(scale, seed):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64) * 30 + 1
    pred = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64) * 30 + 1
    valid = torch.rand(2, 1, 4, 5, generator=g) > 0.3
    a = scale_invariant_log_loss(pred, gt, valid, 1.0)
    b = scale_invariant_log_loss(pred * scale, gt, valid, 1.0)
    assert float(b) == pytest.approx(float(a), rel=1e-9, abs=1e-12)


def test_multiscale_upsamples_every_scale():
    gt = torch.full((1, 1, 8, 8), 10.0)
    disps = {("disp", s): torch.full((1, 1, 8 // 2**s, 8 // 2**s), 0.5) for s in range(4)}
    to_depth = lambda d: 1.0 / (d / 5.0)  # noqa: E731 - disp 0.5 -> 10 m
    assert float(multiscale_depth_loss(disps, gt, gt > 0, to_depth)) == pytest.approx(0.0, abs=1e-7)
    disps[("disp", 3)] = torch.full((1, 1, 1, 1), 0.25)  # 20 m at the coarsest scale only
    expected = (math.log(2.0) ** 2) * (1 - 0.85) / 4
    assert float(multiscale_depth_loss(disps, gt, gt > 0, to_depth)) == pytest.approx(expected, rel=1e-5)
