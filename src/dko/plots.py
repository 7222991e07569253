"""Figures of the DKO pipeline (matplotlib, Agg; every figure is written atomically).

Each function takes data on disk or arrays and writes one PNG; nothing here changes results.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dko.io import atomic_path

log = logging.getLogger(__name__)


def _new_figure(width_in: float, height_in: float):
    """A figure that does not touch pyplot's global state (safe in worker processes and threads)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _save(fig, out_png: str | Path, dpi: int = 120) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return out_png


def linear_to_display(image_u8: np.ndarray) -> np.ndarray:
    """Linear uint8 RGB (H, W, 3) -> float sRGB-encoded in [0, 1] for display."""
    x = np.asarray(image_u8, dtype=np.float64) / 255.0
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).clip(0.0, 1.0)


def plot_dataset_preview(data_dir: str | Path, out_png: str | Path, n_images: int = 6, split: str = "train") -> Path:
    """Preview of a prepared dataset (see :mod:`dko.data.format`): images beside their depth maps.

    Args:
        data_dir: dataset folder containing ``meta.json`` and the splits.
        out_png: figure path (written atomically).
        n_images: number of rows, the first ``n_images`` of ``split`` (fewer if the split is smaller).
        split: which split to show.
    Images are shown with display gamma (stored values are linear); depth uses a perceptual colour map
    (log scale) over [min_depth_m, max_depth_m] with a colour bar in metres; invalid pixels (depth 0) are light grey.
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    from dko.data.format import load_split, read_meta

    if n_images < 1:
        raise ValueError(f"n_images must be >= 1 (got {n_images})")
    meta = read_meta(data_dir)
    data = load_split(data_dir, split)
    n = min(n_images, len(data))
    h, w = int(meta["height"]), int(meta["width"])
    lo, hi = float(meta["min_depth_m"]), float(meta["max_depth_m"])
    aspect = w / h
    fig = _new_figure(2 * 3.2 * min(aspect, 4.0) / 1.6 + 1.0, 0.25 + n * 3.2 / 1.6 * min(aspect, 4.0) / aspect + 0.4)
    axes = fig.subplots(n, 2, squeeze=False)
    cmap = colormaps["turbo"].with_extremes(bad=(0.82, 0.82, 0.82))
    im = None
    for i in range(n):
        image, depth = np.asarray(data.images[i]), np.asarray(data.depth[i], dtype=np.float64)
        axes[i, 0].imshow(linear_to_display(image), interpolation="nearest")
        masked = np.ma.masked_where(depth <= 0, depth)
        im = axes[i, 1].imshow(masked, cmap=cmap, norm=LogNorm(vmin=lo, vmax=hi), interpolation="nearest")
        valid = depth > 0
        text = f"valid {valid.mean():.0%}" + (f", {depth[valid].min():.1f}-{depth[valid].max():.1f} m" if valid.any() else "")
        axes[i, 1].set_title(text, fontsize=8)
        axes[i, 0].set_title(data.names[i], fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    cbar = fig.colorbar(im, ax=axes[:, 1].tolist(), shrink=0.9, pad=0.01)
    ticks = [t for t in (0.5, 1, 2, 3, 5, 10, 20, 40, 80, 160) if lo <= t <= hi]
    cbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    cbar.set_label("depth (m, log scale); grey = invalid")
    fig.suptitle(f"{meta.get('source', '?')} dataset, {split} split ({len(data)} images, {h}x{w}); "
                 f"images shown with display gamma", fontsize=10)
    return _save(fig, out_png)


# ----------------------------------------------------------------------------- stage 1 / evaluation figures
def plot_depth_examples(images: np.ndarray, gt_depth: np.ndarray, pred_depth: np.ndarray, out_png: str | Path,
                        min_depth_m: float, max_depth_m: float, names: list[str] | None = None,
                        title: str = "") -> Path:
    """Rows of input / ground truth / prediction / relative error for a few test images.

    Args:
        images: uint8 (N, H, W, 3) linear RGB.
        gt_depth: float (N, H, W) metres, 0 = invalid (grey).
        pred_depth: float (N, H, W) metres.
        min_depth_m, max_depth_m: colour range of the (log-scaled) depth maps.
    The error column shows |pred - gt| / gt on valid pixels (0 to 1).
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    images, gt_depth, pred_depth = np.asarray(images), np.asarray(gt_depth, np.float64), np.asarray(pred_depth, np.float64)
    if not (len(images) == len(gt_depth) == len(pred_depth)) or len(images) == 0:
        raise ValueError(f"need the same non-zero number of images, ground truths and predictions "
                         f"(got {len(images)}, {len(gt_depth)}, {len(pred_depth)})")
    n, h, w = gt_depth.shape
    aspect = w / h
    panel_w = 2.6
    fig = _new_figure(4 * panel_w + 0.6, 1.3 + n * (panel_w / aspect + 0.3))
    axes = fig.subplots(n, 4, squeeze=False)
    cmap = colormaps["turbo"].with_extremes(bad=(0.82, 0.82, 0.82))
    err_cmap = colormaps["magma"].with_extremes(bad=(0.82, 0.82, 0.82))
    norm = LogNorm(vmin=min_depth_m, vmax=max_depth_m)
    im_depth = im_err = None
    for i in range(n):
        gt, pred = gt_depth[i], np.clip(pred_depth[i], min_depth_m, max_depth_m)
        valid = (gt >= min_depth_m) & (gt <= max_depth_m)
        axes[i, 0].imshow(linear_to_display(images[i]), interpolation="nearest")
        im_depth = axes[i, 1].imshow(np.ma.masked_where(~valid, gt), cmap=cmap, norm=norm, interpolation="nearest")
        axes[i, 2].imshow(pred, cmap=cmap, norm=norm, interpolation="nearest")
        rel = np.ma.masked_where(~valid, np.abs(pred - gt) / np.where(valid, gt, 1.0))
        im_err = axes[i, 3].imshow(rel, cmap=err_cmap, norm=Normalize(0.0, 1.0), interpolation="nearest")
        axes[i, 0].set_title(names[i] if names is not None else f"image {i}", fontsize=8)
        axes[i, 1].set_title("ground truth", fontsize=8)
        axes[i, 2].set_title("prediction", fontsize=8)
        axes[i, 3].set_title(f"|pred-gt|/gt, mean {float(rel.mean()) if valid.any() else float('nan'):.3f}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    cbar = fig.colorbar(im_depth, ax=axes[:, 1:3].ravel().tolist(), shrink=0.9, pad=0.01, location="bottom")
    ticks = [t for t in (0.5, 1, 2, 3, 5, 10, 20, 40, 80, 160) if min_depth_m <= t <= max_depth_m]
    cbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    cbar.set_label("depth (m, log scale); grey = invalid")
    fig.colorbar(im_err, ax=axes[:, 3].tolist(), shrink=0.9, pad=0.01, location="bottom").set_label("relative error")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)


def plot_training_curves(curves_csv: str | Path, out_png: str | Path, title: str = "Stage 1 training") -> Path:
    """Training loss (log scale) and learning rate against step, and validation AbsRel / delta<1.25, from
    the ``curves.csv`` written by :func:`dko.depth.train.train_electronic`."""
    import pandas as pd

    df = pd.read_csv(curves_csv)
    if "step" not in df.columns or df.empty:
        raise ValueError(f"curves file '{curves_csv}' has no rows with a 'step' column")
    fig = _new_figure(10.0, 3.6)
    ax_loss, ax_val = fig.subplots(1, 2)
    tr = df.dropna(subset=["train_loss"]) if "train_loss" in df else df.iloc[:0]
    if len(tr):
        ax_loss.plot(tr["step"], tr["train_loss"], color="C0", label="train loss")
        ax_loss.set_yscale("log")
        ax_lr = ax_loss.twinx()
        ax_lr.plot(tr["step"], tr["lr"], color="C1", lw=1, ls="--", label="learning rate")
        ax_lr.set_ylabel("learning rate", color="C1")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("scale-invariant log loss", color="C0")
    ax_loss.set_title("training")
    va = df.dropna(subset=["val_abs_rel"]) if "val_abs_rel" in df else df.iloc[:0]
    if len(va):
        ax_val.plot(va["step"], va["val_abs_rel"], "o-", color="C3", label="AbsRel")
        ax_val.set_ylabel("validation AbsRel", color="C3")
        ax_a1 = ax_val.twinx()
        ax_a1.plot(va["step"], va["val_a1"], "s--", color="C2", label="delta<1.25")
        ax_a1.set_ylabel("validation delta<1.25", color="C2")
    ax_val.set_xlabel("step")
    ax_val.set_title("validation")
    fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)
