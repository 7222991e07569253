"""Monocular depth metrics (Eigen et al. 2014): the only implementation in DKO.

Every evaluation (stage 1, DKO, E2E, reference predictors, tests) calls :func:`evaluate_depth_maps`
or :func:`image_errors`. Conventions follow the standard KITTI / NYUv2 evaluation (Monodepth2):

- a ground-truth pixel is valid when ``min_depth_m < gt < max_depth_m`` and inside the protocol's
  crop; invalid pixels (``gt == 0``) are excluded by the same test;
- the prediction is optionally median-scaled per image (``median(gt) / median(pred)`` over the
  valid pixels), then clipped to ``[min_depth_m, max_depth_m]``;
- per-image metrics are averaged over images (images without valid pixels are skipped and counted).

Protocols (KITTI's are named after Monodepth2's test splits):

- ``eigen`` (KITTI, Velodyne ground truth): depth cap 80 m (the effective upper bound is ``min(max_depth_m, 80)``)
  and the Garg crop, rows 0.40810811..0.99189189 and columns 0.03594771..0.96405229 of the image (normalised
  coordinates, so it applies at any resolution);
- ``eigen_benchmark`` (KITTI, annotated ground truth): every pixel with ground truth (``gt > 0``, no depth cap on
  the ground truth, no crop), predictions clipped to ``[min_depth_m, min(max_depth_m, 80)]`` as in Monodepth2;
- ``nyu``: cap 10 m and the Eigen crop, rows 45..471 of 480 and columns 41..601 of 640, scaled to the
  image size;
- ``synthetic``: the dataset's own ``[min_depth_m, max_depth_m]``, no crop.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
LOWER_IS_BETTER = {"abs_rel": True, "sq_rel": True, "rmse": True, "rmse_log": True, "a1": False, "a2": False,
                   "a3": False}

# Upper depth cap (metres) and crop (top, bottom, left, right as fractions of height / width) per protocol.
PROTOCOL_CAP_M = {"eigen": 80.0, "eigen_benchmark": 80.0, "nyu": 10.0, "synthetic": math.inf}
PROTOCOL_CROP = {
    "eigen": (0.40810811, 0.99189189, 0.03594771, 0.96405229),  # Garg et al. 2016
    "eigen_benchmark": None,
    "nyu": (45 / 480, 471 / 480, 41 / 640, 601 / 640),  # Eigen et al. 2014
    "synthetic": None,
}


PROTOCOL_GT_RANGE = {"eigen": True, "eigen_benchmark": False, "nyu": True, "synthetic": True}
"""Whether a ground-truth pixel must lie inside the depth range to count (eigen_benchmark: any ``gt > 0`` counts)."""


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOL_CAP_M:
        raise ValueError(f"unknown evaluation protocol '{protocol}' (expected one of {sorted(PROTOCOL_CAP_M)})")


def depth_range(protocol: str, min_depth_m: float, max_depth_m: float) -> tuple[float, float]:
    """The evaluated depth range ``(min, max)`` in metres: the dataset's range capped by the protocol."""
    _check_protocol(protocol)
    if not (0 < min_depth_m < max_depth_m):
        raise ValueError(f"depth range must satisfy 0 < min_depth_m < max_depth_m (got {min_depth_m}, {max_depth_m})")
    hi = min(float(max_depth_m), PROTOCOL_CAP_M[protocol])
    if hi <= min_depth_m:
        raise ValueError(f"protocol '{protocol}' caps depth at {hi} m, below min_depth_m={min_depth_m}")
    return float(min_depth_m), hi


def crop_mask(protocol: str, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of the protocol's evaluation crop (all True without a crop).

    Crop bounds are ``floor(fraction * size)``; at 480x640 the NYU crop is exactly rows 45:471,
    columns 41:601, and at KITTI's 375x1242 the Garg crop is rows 153:371, columns 44:1197.
    """
    _check_protocol(protocol)
    mask = np.zeros((height, width), dtype=bool)
    crop = PROTOCOL_CROP[protocol]
    if crop is None:
        mask[:] = True
        return mask
    top, bottom, left, right = crop
    t, b = int(math.floor(top * height + 1e-9)), int(math.floor(bottom * height + 1e-9))
    left_px, right_px = int(math.floor(left * width + 1e-9)), int(math.floor(right * width + 1e-9))
    mask[t:b, left_px:right_px] = True
    return mask


def compute_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven Eigen metrics of 1-D arrays of valid ground truth and prediction (metres, both > 0).

    abs_rel = mean(|gt - pred| / gt); sq_rel = mean((gt - pred)^2 / gt); rmse = sqrt(mean((gt - pred)^2));
    rmse_log = sqrt(mean((ln gt - ln pred)^2)); a_k = fraction with max(gt/pred, pred/gt) < 1.25^k.
    """
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in size ({gt.size} vs {pred.size})")
    if gt.size == 0:
        raise ValueError("no valid pixels to evaluate")
    if np.any(gt <= 0) or np.any(pred <= 0):
        raise ValueError("depths passed to compute_errors must be positive")
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25**2)),
        "a3": float(np.mean(thresh < 1.25**3)),
    }


def valid_mask(gt: np.ndarray, protocol: str, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    """Pixels of a (H, W) ground-truth map that count: ``lo < gt < hi`` inside the protocol crop (``eigen_benchmark``:
    ``gt > 0``, see :data:`PROTOCOL_GT_RANGE`)."""
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"ground-truth depth must be (H, W), got shape {gt.shape}")
    lo, hi = depth_range(protocol, min_depth_m, max_depth_m)
    in_range = (gt > lo) & (gt < hi) if PROTOCOL_GT_RANGE[protocol] else (gt > 0) & np.isfinite(gt)
    return in_range & crop_mask(protocol, *gt.shape)


def training_mask(depth, min_depth_m: float, max_depth_m: float):
    """Pixels a training loss sees: ``depth > 0`` (measured) and ``min_depth_m <= depth <= max_depth_m``.

    ``depth`` is a numpy array or a torch tensor of any shape (metres); the mask has its type and shape. Unlike
    :func:`valid_mask` (evaluation) the bounds are inclusive, no protocol cap or crop applies.
    """
    return (depth > 0) & (depth >= min_depth_m) & (depth <= max_depth_m)


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``i0``, ``i1`` and weight of ``i1`` for half-pixel-centre linear resampling of ``n_in`` samples
    to ``n_out``: source coordinate ``(j + 0.5) * n_in / n_out - 0.5`` clamped to ``[0, n_in - 1]`` (OpenCV's
    INTER_LINEAR and torch's ``align_corners=False``)."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def upsample_prediction(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A predicted depth map resized to a ground-truth map's size as Monodepth2's evaluation does: its disparity
    (1 / depth) resampled bilinearly (half-pixel centres, ``cv2.resize``'s default), then inverted.

    Args:
        pred: (h, w) predicted depth in metres, > 0.
        shape: (H, W) of the ground truth.
    Returns:
        float64 (H, W) depth in metres (``pred`` itself, as float64, when the sizes agree).
    """
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim != 2:
        raise ValueError(f"prediction must be (h, w), got shape {pred.shape}")
    if tuple(pred.shape) == tuple(shape):
        return pred
    if not np.all(pred > 0):
        raise ValueError("upsampling a prediction needs positive depths (it resamples the disparity 1 / depth)")
    disp = 1.0 / pred
    r0, r1, wr = _linear_weights(pred.shape[0], int(shape[0]))
    c0, c1, wc = _linear_weights(pred.shape[1], int(shape[1]))
    rows = disp[r0] * (1 - wr)[:, None] + disp[r1] * wr[:, None]
    out = rows[:, c0] * (1 - wc)[None, :] + rows[:, c1] * wc[None, :]
    return 1.0 / out


def image_errors(gt: np.ndarray, pred: np.ndarray, protocol: str, min_depth_m: float, max_depth_m: float,
                 median_scaling: bool = False) -> tuple[dict[str, float], float] | None:
    """Metrics of one image.

    Args:
        gt: (H, W) ground-truth depth in metres, 0 = invalid.
        pred: (H, W) predicted depth in metres (same size as ``gt``).
        protocol: ``eigen``, ``eigen_benchmark``, ``nyu`` or ``synthetic``.
        min_depth_m, max_depth_m: the dataset's depth range (capped further by the protocol).
        median_scaling: scale the prediction by median(gt) / median(pred) over the valid pixels first.
    Returns:
        ``(metrics, scale)`` where ``scale`` is the median-scaling ratio applied (1.0 without it),
        or None when the image has no valid pixel.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if not np.all(np.isfinite(pred)):
        raise ValueError("prediction contains NaN or infinite depths")
    mask = valid_mask(gt, protocol, min_depth_m, max_depth_m)
    if not mask.any():
        return None
    lo, hi = depth_range(protocol, min_depth_m, max_depth_m)
    g, p = gt[mask], pred[mask]
    scale = 1.0
    if median_scaling:
        med = float(np.median(p))
        if med <= 0:
            raise ValueError("median-scaling needs a positive median predicted depth")
        scale = float(np.median(g)) / med
        p = p * scale
    p = np.clip(p, lo, hi)
    return compute_errors(g, p), scale


def evaluate_depth_maps(gts: Iterable[np.ndarray], preds: Iterable[np.ndarray], protocol: str, min_depth_m: float,
                        max_depth_m: float, median_scaling: bool = False) -> dict:
    """Mean of per-image metrics over a set of images.

    Args:
        gts, preds: matching iterables (or (N, H, W) arrays) of ground-truth / predicted depth maps in metres.
    Returns:
        ``{"metrics": {name: mean}, "n_images": evaluated, "n_skipped": without valid pixels,
        "protocol", "min_depth_m", "max_depth_m" (effective range), "crop", "median_scaling",
        "median_scale_mean", "median_scale_std" (ratios applied; 1 without scaling), "n_pixels"}``.
    """
    acc = MetricAccumulator(protocol, min_depth_m, max_depth_m, median_scaling)
    for gt, pred in zip(gts, preds, strict=True):
        acc.add(gt, pred)
    return acc.result()


class MetricAccumulator:
    """Streaming form of :func:`evaluate_depth_maps`: ``add(gt, pred)`` per image, then ``result()``."""

    def __init__(self, protocol: str, min_depth_m: float, max_depth_m: float, median_scaling: bool = False):
        self.protocol = protocol
        self.min_depth_m, self.max_depth_m = depth_range(protocol, min_depth_m, max_depth_m)
        self._raw_range = (float(min_depth_m), float(max_depth_m))
        self.median_scaling = bool(median_scaling)
        self.per_image: list[dict[str, float]] = []
        self.scales: list[float] = []
        self.n_skipped = 0
        self.n_pixels = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> dict[str, float] | None:
        """Add one image ((H, W) metres); returns its metrics, or None if it had no valid pixel."""
        out = image_errors(gt, pred, self.protocol, *self._raw_range, median_scaling=self.median_scaling)
        if out is None:
            self.n_skipped += 1
            return None
        metrics, scale = out
        self.per_image.append(metrics)
        self.scales.append(scale)
        self.n_pixels += int(valid_mask(np.asarray(gt), self.protocol, *self._raw_range).sum())
        return metrics

    def result(self) -> dict:
        if not self.per_image:
            raise ValueError("no image with valid ground-truth pixels was evaluated")
        metrics = {name: float(np.mean([m[name] for m in self.per_image])) for name in METRIC_NAMES}
        scales = np.asarray(self.scales)
        return {
            "metrics": metrics,
            "n_images": len(self.per_image),
            "n_skipped": self.n_skipped,
            "n_pixels": self.n_pixels,
            "protocol": self.protocol,
            "min_depth_m": self.min_depth_m,
            "max_depth_m": self.max_depth_m,
            "crop": list(PROTOCOL_CROP[self.protocol]) if PROTOCOL_CROP[self.protocol] else None,
            "median_scaling": self.median_scaling,
            "median_scale_mean": float(scales.mean()),
            "median_scale_std": float(scales.std()),
        }


def metrics_table(results: Sequence[tuple[str, dict]]) -> str:
    """A fixed-width text table of ``[(name, evaluate_depth_maps result), ...]`` for logs."""
    head = f"{'model':<14}" + "".join(f"{n:>10}" for n in METRIC_NAMES)
    lines = [head]
    for name, res in results:
        lines.append(f"{name:<14}" + "".join(f"{res['metrics'][n]:>10.4f}" for n in METRIC_NAMES))
    return "\n".join(lines)
