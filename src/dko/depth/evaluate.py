"""Depth evaluation of any predictor on a prepared dataset split, with :mod:`dko.metrics`.

A *predictor* is a function ``predict(images) -> depth``: uint8 (B, H, W, 3) stored codes (decoded as the
dataset's meta.json says, :func:`dko.data.format.input_decoding`) -> float (B, H, W) metres. :func:`evaluate_predictor` runs one over a split. A *builder* makes a predictor from a
:class:`PredictorContext` (``build_electronic``, ``build_mean``, ``build_rowmean`` here; the opto-electronic
models' builders live in :mod:`dko.frontend`); the model catalogue (:mod:`dko.catalogue`) maps model names to
builders, so the workflow's single ``evaluate`` rule serves every model through its ``{model}`` wildcard:
:func:`evaluate_predictor_model` builds the predictor, evaluates the test split and writes ``metrics.json`` and an
example figure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dko.config import Config
from dko.data.format import Split, load_split, read_meta
from dko.io import atomic_path, write_json
from dko.metrics import MetricAccumulator, training_mask, upsample_prediction

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


def evaluate_predictor(predict_fn: PredictFn, split: Split, protocol: str, min_depth_m: float, max_depth_m: float,
                       median_scaling: bool = False, batch_size: int = 16, progress: bool = False) -> dict:
    """Mean Eigen metrics of ``predict_fn`` over ``split`` (see :func:`dko.metrics.evaluate_depth_maps`).

    When the split holds native-size ground truth (``split.native``, real data's test split) every prediction is
    upsampled to its frame's ground truth (:func:`dko.metrics.upsample_prediction`) and scored there, as the
    published KITTI / NYUv2 protocols do; otherwise it is scored against ``split.depth``.
    Returns the metrics result plus ``per_image_abs_rel`` (list, one per evaluated image, skipped images
    omitted), ``predict_s`` (seconds spent inside ``predict_fn``) and ``resolution`` (``native`` or ``dataset``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    acc = MetricAccumulator(protocol, min_depth_m, max_depth_m, median_scaling)
    per_image = []
    predict_s = 0.0
    n = len(split)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="evaluate", unit="batch")
    for start in starts:
        images = np.asarray(split.images[start:start + batch_size])
        gts = np.asarray(split.depth[start:start + batch_size], dtype=np.float32)
        t = time.perf_counter()
        # predictors that model depth-dependent image formation declare ``needs_depth`` and get the ground truth
        preds = np.asarray(predict_fn(images, gts) if getattr(predict_fn, "needs_depth", False)
                           else predict_fn(images), dtype=np.float64)
        predict_s += time.perf_counter() - t
        if preds.shape != gts.shape:
            raise ValueError(f"predictor returned shape {preds.shape}, expected {gts.shape}")
        for i, (gt, pred) in enumerate(zip(gts, preds)):
            if split.native is not None:
                gt = split.native[start + i]
                pred = upsample_prediction(pred, gt.shape)
            m = acc.add(gt, pred)
            if m is not None:
                per_image.append(m["abs_rel"])
    out = acc.result()
    out["per_image_abs_rel"] = per_image
    out["predict_s"] = predict_s
    out["resolution"] = "native" if split.native is not None else "dataset"
    return out


# ----------------------------------------------------------------------------- predictors
def model_predictor(model, device: Any = "cpu", *, decoding: str) -> PredictFn:
    """Predictor of a :class:`dko.depth.model.DepthNet` (eval mode, no gradients).

    ``decoding``: how the uint8 images become the network's input, :func:`dko.data.format.input_decoding` of
    the dataset (``"none"``: code / 255; ``"srgb"``: sRGB codes decoded to linear light).
    """
    import torch

    from dko.data.format import DECODINGS, batch_to_tensors

    if decoding not in DECODINGS:
        raise ValueError(f"unknown image decoding {decoding!r} (expected one of {DECODINGS})")
    model = model.to(device).eval()

    def predict(images: np.ndarray) -> np.ndarray:
        img, _ = batch_to_tensors(np.array(images), np.zeros(images.shape[:3], np.float32), decoding)
        with torch.no_grad():
            depth = model.predict_depth(img.to(device))
        return depth[:, 0].float().cpu().numpy()

    return predict


class MeanDepthPredictor:
    """Predicts the training set's mean valid depth (metres) at every pixel of every image."""

    def __init__(self, train_depth: np.ndarray, min_depth_m: float, max_depth_m: float):
        total, count = 0.0, 0
        for d in train_depth:  # image by image: memory-mapped splits stay on disk
            d = np.asarray(d, dtype=np.float64)
            v = training_mask(d, min_depth_m, max_depth_m)
            total += float(d[v].sum())
            count += int(v.sum())
        if count == 0:
            raise ValueError("training split has no valid depth pixel to fit the mean-depth predictor")
        self.mean_depth_m = total / count

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.full(images.shape[:3], self.mean_depth_m, dtype=np.float32)


class RowMeanPredictor:
    """Predicts, for each image row, the training set's mean valid depth of that row (what perspective
    alone gives on a ground plane); rows without valid training pixels get the global mean."""

    def __init__(self, train_depth: np.ndarray, min_depth_m: float, max_depth_m: float):
        height = train_depth.shape[1]
        sums, counts = np.zeros(height), np.zeros(height)
        for d in train_depth:
            d = np.asarray(d, dtype=np.float64)
            v = training_mask(d, min_depth_m, max_depth_m)
            sums += np.where(v, d, 0.0).sum(axis=1)
            counts += v.sum(axis=1)
        if counts.sum() == 0:
            raise ValueError("training split has no valid depth pixel to fit the row-mean predictor")
        global_mean = sums.sum() / counts.sum()
        self.row_depth_m = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        b, h, w = images.shape[:3]
        if h != self.row_depth_m.size:
            raise ValueError(f"row-mean predictor was fit on {self.row_depth_m.size} rows, images have {h}")
        return np.broadcast_to(self.row_depth_m[None, :, None], (b, h, w)).astype(np.float32)


# ----------------------------------------------------------------------------- predictor builders
@dataclass
class PredictorContext:
    """What a predictor builder gets: config, dataset folder, the rule's named inputs, device."""

    cfg: Any
    data_dir: Path
    meta: dict
    inputs: Mapping[str, str] = field(default_factory=dict)
    device: Any = "cpu"


PredictorBuilder = Callable[[PredictorContext], PredictFn]
"""``build(ctx) -> PredictFn``: what a catalogue entry (:data:`dko.catalogue.MODELS`) holds."""


def _depth_range(meta: dict) -> tuple[float, float]:
    return float(meta["min_depth_m"]), float(meta["max_depth_m"])


def build_electronic(ctx: PredictorContext) -> PredictFn:
    """The stage-1 network of input ``model`` (a DepthNet checkpoint)."""
    from dko.depth.checkpoint import load_depthnet

    if "model" not in ctx.inputs:
        raise ValueError("evaluating model 'electronic' needs the input 'model' (stage1/model.pt)")
    from dko.data.format import input_decoding

    decoding = input_decoding(ctx.meta)  # before loading: a bad meta.json fails without the model read
    model, _ = load_depthnet(ctx.inputs["model"], ctx.device)
    return model_predictor(model, ctx.device, decoding=decoding)


def build_mean(ctx: PredictorContext) -> PredictFn:
    """The training split's mean depth everywhere (a reference)."""
    return MeanDepthPredictor(load_split(ctx.data_dir, "train").depth, *_depth_range(ctx.meta))


def build_rowmean(ctx: PredictorContext) -> PredictFn:
    """The training split's mean depth per image row (a reference)."""
    return RowMeanPredictor(load_split(ctx.data_dir, "train").depth, *_depth_range(ctx.meta))


def evaluate_predictor_model(cfg: Config, model: str, build: PredictorBuilder, data_dir: str | Path,
                             out_dir: str | Path, inputs: Mapping[str, str] | None = None, device: Any = "cpu",
                             split: str = "test", figure: str | Path | None = None,
                             examples: str | Path | None = None) -> dict:
    """Evaluate the predictor that ``build`` makes on ``split`` of the dataset and write ``out_dir/metrics.json``.

    The workflow calls this through :func:`dko.catalogue.evaluate_model`, which looks ``build`` up by model name.

    Args:
        cfg: :class:`dko.config.Config` (``eval`` section: median_scaling, n_figure_images).
        model: the model's name (written into the outputs).
        build: ``build(ctx: PredictorContext) -> PredictFn``.
        data_dir: prepared dataset folder (``meta.json``).
        inputs: files the predictor needs, e.g. ``{"model": ".../stage1/model.pt"}``.
        figure: PNG path of the input / ground truth / prediction figure (default ``out_dir/examples.png``).
        examples: NPZ path of the figure's arrays (default ``out_dir/examples.npz``): ``images`` uint8
            (N, H, W, 3), ``depth`` float32 (N, H, W) ground truth, ``pred`` float32 (N, H, W), ``names``;
            ``dko.compare`` shows every model's predictions side by side from these files.
    Returns:
        The metrics dict written to ``metrics.json`` (metrics, counts, protocol, range, median scaling).
    """
    from dko.plots import plot_depth_examples

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    meta = read_meta(data_dir)
    ctx = PredictorContext(cfg=cfg, data_dir=data_dir, meta=meta, inputs=dict(inputs or {}), device=device)
    predict = build(ctx)
    data = load_split(data_dir, split)
    lo, hi = _depth_range(meta)
    t = time.perf_counter()
    result = evaluate_predictor(predict, data, meta["protocol"], lo, hi, median_scaling=cfg.eval.median_scaling)
    result.update(model=model, split=split, dataset_source=meta.get("source"),
                  ground_truth=meta.get("ground_truth", {}).get(split), eval_s=time.perf_counter() - t)
    if callable(getattr(predict, "extra_metrics", None)):  # e.g. conv1 fidelity / agreement with the teacher
        result["extra_metrics"] = predict.extra_metrics()
    write_json(out_dir / "metrics.json", result)
    n_fig = min(cfg.eval.n_figure_images, len(data))
    images = np.asarray(data.images[:n_fig])
    preds = np.asarray(predict(images, np.asarray(data.depth[:n_fig], dtype=np.float32))
                       if getattr(predict, "needs_depth", False) else predict(images), dtype=np.float32)
    with atomic_path(examples or out_dir / "examples.npz") as tmp:
        np.savez_compressed(tmp, images=images, depth=np.asarray(data.depth[:n_fig], dtype=np.float32), pred=preds,
                            names=np.asarray(list(data.names[:n_fig])), model=np.asarray(model))
    plot_depth_examples(images, np.asarray(data.depth[:n_fig]), preds, figure or out_dir / "examples.png",
                        min_depth_m=lo, max_depth_m=hi, names=data.names[:n_fig],
                        title=f"{model} on {meta.get('source', '?')} {split}: AbsRel {result['metrics']['abs_rel']:.3f}"
                              + (" (median-scaled)" if cfg.eval.median_scaling else ""))
    log.info("evaluated %s on %d %s images: %s", model, result["n_images"], split,
             ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()))
    return result
