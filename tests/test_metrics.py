"""dko.metrics against hand-computed values and properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dko.metrics import (MetricAccumulator, compute_errors, crop_mask, depth_range, evaluate_depth_maps,
                         image_errors)


def test_compute_errors_hand_values():
    gt = np.array([2.0, 4.0, 10.0, 1.0])
    pred = np.array([1.0, 5.0, 10.0, 1.3])
    # |gt-pred|/gt = 0.5, 0.25, 0, 0.3 -> mean 1.05/4
    # (gt-pred)^2/gt = 0.5, 0.25, 0, 0.09 -> 0.84/4
    # (gt-pred)^2 = 1, 1, 0, 0.09 -> rmse sqrt(2.09/4)
    # ratios max(gt/pred, pred/gt) = 2, 1.25, 1, 1.3 -> a1: only 1 (<1.25 strict) -> 1/4;
    # a2 (< 1.5625): 1.25, 1, 1.3 -> 3/4; a3 (< 1.953125): still not 2 -> 3/4
    e = compute_errors(gt, pred)
    assert e["abs_rel"] == pytest.approx(1.05 / 4)
    assert e["sq_rel"] == pytest.approx(0.84 / 4)
    assert e["rmse"] == pytest.approx(math.sqrt(2.09 / 4))
    logs = [math.log(2.0), math.log(4 / 5), 0.0, math.log(1 / 1.3)]
    assert e["rmse_log"] == pytest.approx(math.sqrt(sum(v * v for v in logs) / 4))
    assert e["a1"] == pytest.approx(0.25)
    assert e["a2"] == pytest.approx(0.75)
    assert e["a3"] == pytest.approx(0.75)


def test_image_errors_masks_caps_and_clips():
    # 2x3 image: invalid 0, one pixel beyond the cap (90 m), one below min; prediction clipped to [1, 80].
    gt = np.array([[0.0, 90.0, 0.5], [2.0, 40.0, 10.0]])
    pred = np.array([[5.0, 5.0, 5.0], [4.0, 200.0, 0.01]])
    metrics, scale = image_errors(gt, pred, "synthetic", 1.0, 80.0)
    assert scale == 1.0
    # valid: 2 -> 4, 40 -> 80 (clipped), 10 -> 1 (clipped): abs rel 1.0, 1.0, 0.9
    assert metrics["abs_rel"] == pytest.approx((1.0 + 1.0 + 0.9) / 3)
    assert metrics["a3"] == pytest.approx(0.0)  # ratios 2, 2, 10 all >= 1.953
    assert image_errors(np.zeros((2, 2)), np.ones((2, 2)), "synthetic", 1.0, 80.0) is None


def test_median_scaling_hand_values():
    gt = np.array([[2.0, 4.0, 6.0]])
    pred = np.array([[1.0, 3.0, 4.0]])
    metrics, scale = image_errors(gt, pred, "synthetic", 1.0, 80.0, median_scaling=True)
    assert scale == pytest.approx(4.0 / 3.0)
    scaled = pred[0] * 4 / 3
    assert metrics["abs_rel"] == pytest.approx(np.mean(np.abs(gt[0] - scaled) / gt[0]))


def test_protocol_caps_and_crops():
    assert depth_range("eigen", 1e-3, 100.0) == (1e-3, 80.0)
    assert depth_range("nyu", 1e-3, 80.0) == (1e-3, 10.0)
    assert depth_range("synthetic", 1.0, 120.0) == (1.0, 120.0)
    nyu = crop_mask("nyu", 480, 640)
    rows, cols = np.nonzero(nyu)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (45, 471, 41, 601)
    kitti = crop_mask("eigen", 375, 1242)
    rows, cols = np.nonzero(kitti)
    # Monodepth2: int(0.40810811*375)=153, int(0.99189189*375)=371, int(0.03594771*1242)=44, int(0.96405229*1242)=1197
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (153, 371, 44, 1197)
    assert crop_mask("synthetic", 4, 5).all()
    # Pixels outside the KITTI crop do not count: a wrong prediction there leaves the metrics perfect.
    gt = np.full((375, 1242), 10.0)
    pred = gt.copy()
    pred[:100] = 70.0
    res = evaluate_depth_maps([gt], [pred], "eigen", 1e-3, 80.0)
    assert res["metrics"]["abs_rel"] == 0.0
    with pytest.raises(ValueError, match="protocol"):
        crop_mask("middlebury", 4, 4)


def test_mean_over_images_and_skips():
    gts = [np.full((2, 2), 2.0), np.full((2, 2), 4.0), np.zeros((2, 2))]
    preds = [np.full((2, 2), 3.0), np.full((2, 2), 4.0), np.ones((2, 2))]
    res = evaluate_depth_maps(gts, preds, "synthetic", 1.0, 80.0)
    assert res["metrics"]["abs_rel"] == pytest.approx((0.5 + 0.0) / 2)
    assert res["n_images"] == 2 and res["n_skipped"] == 1 and res["n_pixels"] == 8
    assert res["median_scaling"] is False
    with pytest.raises(ValueError, match="no image"):
        MetricAccumulator("synthetic", 1.0, 80.0).result()


depth_maps = arrays(np.float64, (4, 5), elements=st.floats(1.5, 60.0, allow_nan=False))


@settings(max_examples=40, deadline=None)
@given(gt=depth_maps, pred=depth_maps, scale=st.floats(0.05, 20.0))
def test_median_scaled_metrics_are_scale_invariant(gt, pred, scale):
    # Wide caps so that clipping never acts.
    a = evaluate_depth_maps([gt], [pred], "synthetic", 1e-3, 1e4, median_scaling=True)["metrics"]
    b = evaluate_depth_maps([gt], [pred * scale], "synthetic", 1e-3, 1e4, median_scaling=True)["metrics"]
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(gt=depth_maps)
def test_perfect_prediction(gt):
    m = evaluate_depth_maps([gt], [gt.copy()], "synthetic", 1.0, 80.0)["metrics"]
    assert m["abs_rel"] == m["sq_rel"] == m["rmse"] == m["rmse_log"] == 0.0
    assert m["a1"] == m["a2"] == m["a3"] == 1.0


def test_training_mask_is_inclusive_and_the_same_for_numpy_and_torch():
    import torch

    from dko.metrics import training_mask

    depth = np.array([[0.0, 1.0, 5.0, 80.0, 80.5, -1.0]], np.float32)
    expected = np.array([[False, True, True, True, False, False]])
    assert (training_mask(depth, 1.0, 80.0) == expected).all()
    assert torch.equal(training_mask(torch.from_numpy(depth), 1.0, 80.0), torch.from_numpy(expected))
    # zero (no measurement) stays out even where min_depth_m allows it
    assert not training_mask(np.zeros(1), 0.0, 1.0).any()


def test_eigen_benchmark_counts_every_ground_truth_pixel_and_clips_the_prediction():
    """Monodepth2's eigen_benchmark: mask gt > 0 (no crop, no cap on the ground truth), prediction clipped to
    [1e-3, 80]. By hand: gt 90 m counts (pred 100 -> 80: |90-80|/90), gt 0 does not, the corner counts."""
    gt = np.zeros((10, 20))
    gt[0, 0], gt[5, 5], gt[9, 19] = 90.0, 10.0, 2e-4          # (0, 0) lies outside the Garg crop
    pred = np.full((10, 20), 100.0)
    pred[5, 5] = 12.0
    pred[9, 19] = 1e-5
    res = evaluate_depth_maps([gt], [pred], "eigen_benchmark", 1e-3, 80.0)
    by_hand = np.mean([10 / 90, 2 / 10, abs(2e-4 - 1e-3) / 2e-4])
    assert res["n_pixels"] == 3 and res["crop"] is None
    assert res["metrics"]["abs_rel"] == pytest.approx(by_hand, rel=1e-12)
    # the same maps under eigen: only (5, 5) is inside the crop and the range
    eigen = evaluate_depth_maps([gt], [pred], "eigen", 1e-3, 80.0)
    assert eigen["n_pixels"] == 1 and eigen["metrics"]["abs_rel"] == pytest.approx(0.2)


def test_upsample_prediction_resamples_the_disparity_like_opencv():
    """Half-pixel-centre bilinear resampling of 1 / depth (cv2.resize's default, torch's align_corners=False)."""
    import torch

    from dko.metrics import upsample_prediction

    pred = np.array([[1.0, 4.0]])                 # disparities 1 and 0.25
    up = upsample_prediction(pred, (1, 4))
    # output columns map to source x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1
    disp = np.array([1.0, 0.75 * 1 + 0.25 * 0.25, 0.25 * 1 + 0.75 * 0.25, 0.25])
    np.testing.assert_allclose(up[0], 1 / disp, rtol=1e-14)
    rng = np.random.default_rng(3)
    small = rng.uniform(1.0, 80.0, (7, 23))
    reference = 1 / torch.nn.functional.interpolate(torch.tensor(1 / small)[None, None], size=(40, 125),
                                                    mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(upsample_prediction(small, (40, 125)), reference, rtol=1e-12)
    assert np.array_equal(upsample_prediction(small, (7, 23)), small)
    with pytest.raises(ValueError, match="positive"):
        upsample_prediction(np.zeros((2, 2)), (4, 4))
