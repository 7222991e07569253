"""Collapse detection for the depth-training loops (stage 1 and E2E): fail loudly instead of saving garbage.

A learning rate far too high can drive the disparity decoder's sigmoid into saturation within a few steps:
the network then predicts one depth everywhere (at ``train.lr: 1`` on the smoke config, ``min_depth_m`` at
every pixel: validation AbsRel 0.9004, a1 = 0), the loss stays finite and training used to finish "successfully".
:class:`CollapseMonitor` watches every validation (one implementation for :func:`dko.depth.train.train_electronic`
and :func:`dko.e2e.train_e2e`) and raises :class:`TrainingCollapse` naming the config key to change when

- **non-finite**: a validation prediction is NaN or infinite (its weights overflowed);
- **saturated**: at least :data:`SATURATED_FRACTION` of the validation split's valid pixels are predicted at the
  network's depth bounds ``min_depth_m`` / ``max_depth_m`` (disparity at its maximum / minimum);
- **constant**: the spread of the predicted depth over those pixels (standard deviation of ln(depth)) is below
  :data:`SPREAD_TOL`;
- **no better than the mean-depth predictor** (:class:`dko.depth.evaluate.MeanDepthPredictor`, the ``mean``
  reference of the ``evaluate`` rule, fit on the training split), once warmed up (at least :data:`WARMUP_FRACTION`
  of the training and :data:`WARMUP_MIN_STEPS` steps done): neither the validation rmse_log nor a1 beats the
  reference's by the margin :data:`REFERENCE_MARGIN`. Both are compared after per-image median scaling, so a
  network whose absolute scale is still off (``train.si_lambda`` near 1) is judged on its structure; AbsRel is not
  used because it rewards predicting too near (the collapse above has AbsRel 0.90, the mean predictor 1.20).

The first three apply at every validation after step 0 (E2E validates its initialisation at step 0; non-finite
predictions fail there too). Measured spreads of normal trainings: 2.3e-3 to 1.0 (tests' tiny configs, smoke,
default config, first validations included), collapsed ones 0 to 1.2e-7 with 100 % of the pixels saturated. The
warm-up keeps short runs out of the last test: the smoke config's 12 stage-1 steps are still worse than the mean
predictor; the default config beats it from its first validation (step 125: median-scaled rmse_log 0.49 vs 0.78).
``train.collapse_check: false`` turns the monitor off.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from dko.depth.evaluate import MeanDepthPredictor, PredictFn, evaluate_predictor
from dko.metrics import MetricAccumulator, valid_mask

log = logging.getLogger(__name__)

__all__ = ["TrainingCollapse", "CollapseMonitor", "prediction_spread", "SPREAD_TOL", "SATURATED_FRACTION",
           "WARMUP_FRACTION", "WARMUP_MIN_STEPS", "REFERENCE_MARGIN"]

SPREAD_TOL = 1e-5
SATURATED_FRACTION = 0.99
WARMUP_FRACTION = 0.5
WARMUP_MIN_STEPS = 100
REFERENCE_MARGIN = 0.01
_BOUND_RTOL = 1e-4  # a depth within this relative distance of min / max depth counts as saturated


class TrainingCollapse(RuntimeError):
    """Training collapsed (constant or saturated predictions, or no better than the mean-depth predictor)."""


class _SpreadAccumulator:
    """Streaming spread of predicted depth over valid ground-truth pixels (:func:`dko.metrics.valid_mask`)."""

    def __init__(self, protocol: str, min_depth_m: float, max_depth_m: float):
        self.protocol, self.lo, self.hi = protocol, float(min_depth_m), float(max_depth_m)
        self.n = 0
        self.n_low = self.n_high = 0
        self.sum = self.sumsq = 0.0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        d = np.clip(np.asarray(pred, dtype=np.float64)[valid_mask(gt, self.protocol, self.lo, self.hi)], 1e-12, None)
        ln = np.log(d)
        self.n += int(d.size)
        self.n_low += int((d <= self.lo * (1 + _BOUND_RTOL)).sum())
        self.n_high += int((d >= self.hi * (1 - _BOUND_RTOL)).sum())
        self.sum += float(ln.sum())
        self.sumsq += float((ln * ln).sum())

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("no valid ground-truth pixel in the validation split to check the predictions on")
        mean = self.sum / self.n
        return {"log_depth_std": float(np.sqrt(max(0.0, self.sumsq / self.n - mean * mean))),
                "saturated_fraction": (self.n_low + self.n_high) / self.n, "at_min_fraction": self.n_low / self.n,
                "at_max_fraction": self.n_high / self.n, "n_pixels": self.n}


def prediction_spread(gts, preds, protocol: str, min_depth_m: float, max_depth_m: float) -> dict[str, float]:
    """Spread of predicted depth over the valid ground-truth pixels (:func:`dko.metrics.valid_mask`).

    Args:
        gts, preds: matching (N, H, W) ground truth / prediction in metres; min_depth_m, max_depth_m: the
            network's depth range.
    Returns:
        ``{"log_depth_std": std of ln(pred), "saturated_fraction": share of pixels within a relative 1e-4 of
        min_depth_m or max_depth_m, "at_min_fraction", "at_max_fraction" (the two parts), "n_pixels"}``.
    """
    acc = _SpreadAccumulator(protocol, min_depth_m, max_depth_m)
    for gt, pred in zip(gts, preds, strict=True):
        acc.add(gt, pred)
    return acc.result()


class CollapseMonitor:
    """Checks a training loop's validations for a collapse; see the module docstring.

    Args:
        train_depth: (N, H, W) training-split depth (fits the mean-depth reference).
        val_split: the validation :class:`dko.data.format.Split`; meta: dataset ``meta.json``.
        stage: what trains, for the message (``stage 1``, ``E2E scratch``).
        keys: the config keys to change, with their values, for the message (``train.lr (1.0)``).
        enabled: ``train.collapse_check``; a disabled monitor passes predictions through and checks nothing.
    Use: ``validate(..., predict_wrapper=monitor.wrap)``, then ``monitor.check(step, fraction_done)``.
    """

    def __init__(self, train_depth: np.ndarray, val_split, meta: Mapping, *, stage: str, keys: str,
                 enabled: bool = True):
        self.enabled = bool(enabled)
        self.stage, self.keys = stage, keys
        self.val_split = val_split
        self.protocol = meta["protocol"]
        self.lo, self.hi = float(meta["min_depth_m"]), float(meta["max_depth_m"])
        self._spread: _SpreadAccumulator | None = None
        self._scaled: MetricAccumulator | None = None
        self._seen = 0
        self.reference: dict[str, float] = {}
        if self.enabled:
            ref = MeanDepthPredictor(train_depth, self.lo, self.hi)
            self.reference = evaluate_predictor(ref, val_split, self.protocol, self.lo, self.hi,
                                                median_scaling=True)["metrics"]

    def wrap(self, predict_fn: PredictFn) -> PredictFn:
        """``predict_fn`` that also accumulates, image by image, what the next :meth:`check` tests. Meant for one
        pass over the validation split in order (:func:`dko.depth.evaluate.evaluate_predictor`)."""
        self._spread = _SpreadAccumulator(self.protocol, self.lo, self.hi)
        self._scaled = MetricAccumulator(self.protocol, self.lo, self.hi, median_scaling=True)
        self._seen = 0
        if not self.enabled:
            return predict_fn

        def predict(images: np.ndarray) -> np.ndarray:
            out = predict_fn(images)
            bad = int(np.size(out) - np.isfinite(out).sum())
            if bad:
                raise TrainingCollapse(f"{self.stage} collapsed: it predicts {bad} non-finite depths in a validation "
                                       f"batch (its weights overflowed); {self._fix()}")
            gts = np.asarray(self.val_split.depth[self._seen:self._seen + len(out)], dtype=np.float32)
            self._seen += len(out)
            for gt, pred in zip(gts, np.asarray(out), strict=True):
                self._spread.add(gt, pred)
                self._scaled.add(gt, pred)
            return out

        return predict

    def _fix(self) -> str:
        return f"lower {self.keys}, or set train.collapse_check: false to keep such a network"

    def stats(self) -> dict[str, float]:
        """Spread and median-scaled rmse_log / a1 of the predictions seen since the last :meth:`wrap`."""
        if self._spread is None or self._seen == 0:
            raise RuntimeError("CollapseMonitor.stats() needs a validation through CollapseMonitor.wrap first")
        out = self._spread.result()
        scaled = self._scaled.result()["metrics"]
        out.update(rmse_log_ms=scaled["rmse_log"], a1_ms=scaled["a1"])
        return out

    def check(self, step: int, fraction_done: float, metrics: Mapping[str, float] | None = None) -> dict | None:
        """Raise :class:`TrainingCollapse` if the last validation (at ``step``, ``fraction_done`` of the training)
        shows a collapse; returns the statistics checked (None when disabled or at step 0)."""
        if not self.enabled or step <= 0:
            return None
        s = self.stats()
        unscaled = ""
        if metrics:
            nan = float("nan")
            unscaled = (f"; validation AbsRel {metrics.get('abs_rel', nan):.4f}, "
                        f"rmse_log {metrics.get('rmse_log', nan):.4f}, a1 {metrics.get('a1', nan):.4f}")
        where = f"{self.stage} collapsed at step {step}"
        fix = self._fix()
        if s["saturated_fraction"] >= SATURATED_FRACTION:
            raise TrainingCollapse(
                f"{where}: its disparity is saturated ({100 * s['saturated_fraction']:.1f} % of the valid validation "
                f"pixels predicted at a depth bound: {100 * s['at_min_fraction']:.1f} % at min_depth_m {self.lo:g} m, "
                f"{100 * s['at_max_fraction']:.1f} % at max_depth_m {self.hi:g} m{unscaled}); {fix}")
        if s["log_depth_std"] < SPREAD_TOL:
            raise TrainingCollapse(
                f"{where}: it predicts a constant depth (std of ln(depth) over {s['n_pixels']} valid validation "
                f"pixels {s['log_depth_std']:.2e} < {SPREAD_TOL:g}{unscaled}); {fix}")
        ref = self.reference
        warmed = fraction_done >= WARMUP_FRACTION and step >= WARMUP_MIN_STEPS
        better = (s["rmse_log_ms"] < (1.0 - REFERENCE_MARGIN) * ref["rmse_log"]
                  or s["a1_ms"] > ref["a1"] + REFERENCE_MARGIN)
        if warmed and not better:
            raise TrainingCollapse(
                f"{where}: after {100 * fraction_done:.0f} % of the training it is no better than the mean-depth "
                f"predictor (median-scaled validation rmse_log {s['rmse_log_ms']:.4f} vs {ref['rmse_log']:.4f}, "
                f"a1 {s['a1_ms']:.4f} vs {ref['a1']:.4f}{unscaled}); {fix}")
        log.debug("%s step %d: collapse check passed (%s)", self.stage, step, s)
        return s
