"""Scale-invariant log loss: hand values, zero for a perfect prediction, invariance to scale."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dko.depth.losses import kernel_roughness, multiscale_depth_loss, scale_invariant_log_loss


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


def test_kernel_roughness_hand_computed_and_scale_free():
    const = torch.full((2, 3, 5, 5), 0.7)
    assert float(kernel_roughness(const)) == 0.0
    # a 2 x 2 checkerboard [[1, -1], [-1, 1]]: 2 horizontal + 2 vertical differences of 2^2 each / energy 4 = 4
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).reshape(1, 1, 2, 2)
    assert float(kernel_roughness(checker)) == pytest.approx(4.0)
    # a ramp 0, 1, 2 in x, constant in y (3 x 3): 6 differences of 1 / energy 3 * (0 + 1 + 4) = 15
    ramp = torch.arange(3.0).repeat(3, 1).reshape(1, 1, 3, 3)
    assert float(kernel_roughness(ramp)) == pytest.approx(6 / 15)
    # mean over kernels, independent of each kernel's scale
    both = torch.cat([checker, 10 * checker], dim=0)
    assert float(kernel_roughness(both)) == pytest.approx(4.0)
    torch.manual_seed(0)
    white = torch.randn(64, 3, 7, 7)
    assert 3.0 < float(kernel_roughness(white)) < 4.0  # 2 * 2 * 42/49 in expectation
    with pytest.raises(ValueError, match="kernel_roughness"):
        kernel_roughness(torch.zeros(3, 7, 7))


def test_kernel_roughness_gradient_smooths_kernels():
    torch.manual_seed(1)
    w = torch.randn(8, 3, 7, 7, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    start, norm = float(kernel_roughness(w).detach()), float(w.detach().norm())
    for _ in range(50):
        opt.zero_grad()
        kernel_roughness(w).backward()
        opt.step()
    assert float(kernel_roughness(w).detach()) < 0.3 * start
    assert float(w.detach().norm()) > 0.5 * norm  # smoothed, not shrunk to zero
