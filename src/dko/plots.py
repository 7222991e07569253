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


# ----------------------------------------------------------------------------- comparison figures (dko.compare)
def plot_message(out_png: str | Path, message: str) -> Path:
    """A small figure that only says ``message`` (a disabled stage's slot in the report)."""
    fig = _new_figure(5.0, 1.2)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10)
    return _save(fig, out_png)


def plot_budget_curves(curves: dict, summary, costs, out_png: str | Path, offsets: dict | None = None) -> Path:
    """E2E validation AbsRel against its training time, with DKO (and the electronic CNN) at their budgets.

    Args:
        curves: ``{"e2e/<variant>": DataFrame}`` with ``wall_s`` (and ``cpu_s``) and ``val_abs_rel`` columns.
        summary: the :func:`dko.compare.summarize` table (test AbsRel and ``train_s`` / ``train_cpu_s`` per model).
        costs: the stage-cost table (its ``budget_basis`` column says whether E2E was given CPU seconds).
        offsets: ``{"e2e/<variant>": {"wall_s": s, "cpu_s": s}}``, the time of the stages an E2E variant builds
            on (the optics-only variant starts from the stage-1 back-end), added to its curve.
    The x axis is the total training time of a model including the stages it builds on: wall-clock seconds,
    or CPU seconds when an E2E budget was matched on CPU time. E2E curves are validation AbsRel during E2E
    training; markers are test AbsRel of the final models (DKO at stage 1 + stage 2, the electronic CNN at
    stage 1).
    """
    basis = " ".join(str(b) for b in costs.get("budget_basis", []))
    cpu = "cpu" in basis.lower()
    xcol, scol = ("cpu_s", "train_cpu_s") if cpu else ("wall_s", "train_s")
    fig = _new_figure(9.0, 4.2)
    ax = fig.subplots()
    plotted = False
    for i, (stage, frame) in enumerate(sorted(curves.items())):
        variant = stage.split("/", 1)[-1]
        if xcol not in frame or "val_abs_rel" not in frame:
            raise ValueError(f"E2E curves of '{stage}' need columns '{xcol}' and 'val_abs_rel' (got {list(frame.columns)})")
        va = frame.dropna(subset=["val_abs_rel"])
        shift = float((offsets or {}).get(stage, {}).get(xcol, 0.0))
        ax.plot(va[xcol] + shift, va["val_abs_rel"], "o-", ms=3, color=f"C{i + 2}",
                label=f"E2E {variant} (validation)" + (f", after {shift:.3g} s of prior stages" if shift else ""))
        end = summary[(summary["model"] == f"e2e_{variant}")]
        if len(end) and np.isfinite(float(end[scol].iloc[0])):
            ax.plot([float(end[scol].iloc[0])], [float(end["abs_rel"].iloc[0])], "X", ms=9,
                    color=f"C{i + 2}", label=f"E2E {variant} (test)")
        plotted = True
    for model, marker, color, label in (("dko", "*", "C0", "DKO at stage 1 + 2 budget (test)"),
                                        ("electronic", "s", "C1", "electronic CNN at stage 1 (test)")):
        row = summary[summary["model"] == model]
        if len(row) and np.isfinite(float(row[scol].iloc[0])):
            x, y = float(row[scol].iloc[0]), float(row["abs_rel"].iloc[0])
            ax.plot([x], [y], marker, ms=14 if marker == "*" else 8, color=color, label=label)
            if model == "dko":
                ax.axvline(x, color=color, ls=":", lw=1)
            plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no E2E or DKO model in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"training {'CPU' if cpu else 'wall-clock'} time (s)")
    ax.set_ylabel("AbsRel (lower is better)")
    ax.set_title("Accuracy against total training time (including the stages a model builds on)", fontsize=10)
    if plotted:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def plot_stage_costs(costs, out_png: str | Path) -> Path:
    """Bars per stage (log scale): wall and CPU seconds, time per step, peak memory, FLOPs per step and in total."""
    panels = [("wall_s", "wall-clock (s)"), ("cpu_s", "CPU (s)"), ("step_wall_s", "wall per step (s)"),
              ("peak_mem_mb", "peak memory (MB)"), ("flops_per_step", "FLOPs per step"), ("flops", "FLOPs total")]
    fig = _new_figure(11.0, 5.6)
    axes = fig.subplots(2, 3).ravel()
    stages = [str(s) for s in costs["stage"]]
    for ax, (col, label) in zip(axes, panels):
        values = np.asarray(costs[col], dtype=np.float64) if col in costs else np.full(len(stages), np.nan)
        ok = np.isfinite(values) & (values > 0)
        ax.bar(np.arange(len(stages))[ok], values[ok], color=[f"C{i}" for i in np.flatnonzero(ok)])
        for i in np.flatnonzero(ok):
            ax.text(i, values[i], f"{values[i]:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(np.arange(len(stages)), stages, rotation=20, fontsize=8)
        if ok.any():
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=9)
    kinds = sorted(set(str(k) for k in costs.get("mem_kind", [])))
    fig.suptitle(f"Cost per stage (memory: {', '.join(kinds) or '?'})", fontsize=10)
    return _save(fig, out_png)


def plot_depth_comparison(examples: dict, abs_rel: dict, out_png: str | Path, protocol: str, min_depth_m: float,
                          max_depth_m: float) -> Path:
    """Depth maps of every model side by side: columns = test images; rows = input, ground truth, one per model.

    Args:
        examples: ``{model: {"images", "depth", "pred"}}`` (the ``examples.npz`` arrays of rule evaluate);
            every model must hold the same images.
        abs_rel: ``{model: test AbsRel}`` shown in the row labels.
    Each panel's title gives that image's AbsRel (:func:`dko.metrics.image_errors`).
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    from dko.metrics import image_errors

    if not examples:
        raise ValueError("no model examples to show")
    models = list(examples)
    ref = examples[models[0]]
    images, gts = np.asarray(ref["images"]), np.asarray(ref["depth"], np.float64)
    for m in models[1:]:
        if np.asarray(examples[m]["depth"]).shape != gts.shape or not np.array_equal(examples[m]["images"], images):
            raise ValueError(f"model '{m}' was evaluated on other example images than '{models[0]}'")
    n, h, w = gts.shape
    rows = 2 + len(models)
    panel_w = min(3.2, 9.0 / n)
    fig = _new_figure(n * panel_w + 1.6, 1.3 + rows * (panel_w * h / w + 0.3))
    axes = fig.subplots(rows, n, squeeze=False)
    cmap = colormaps["turbo"].with_extremes(bad=(0.82, 0.82, 0.82))
    norm = LogNorm(vmin=min_depth_m, vmax=max_depth_m)
    im = None
    for i in range(n):
        axes[0, i].imshow(linear_to_display(images[i]), interpolation="nearest")
        valid = (gts[i] >= min_depth_m) & (gts[i] <= max_depth_m)
        im = axes[1, i].imshow(np.ma.masked_where(~valid, gts[i]), cmap=cmap, norm=norm, interpolation="nearest")
        for j, m in enumerate(models):
            pred = np.asarray(examples[m]["pred"][i], np.float64)
            axes[2 + j, i].imshow(np.clip(pred, min_depth_m, max_depth_m), cmap=cmap, norm=norm, interpolation="nearest")
            err = image_errors(gts[i], pred, protocol, min_depth_m, max_depth_m)
            axes[2 + j, i].set_title(f"AbsRel {err[0]['abs_rel']:.3f}" if err else "no valid pixel", fontsize=7)
    labels = ["input", "ground truth"] + [m + (f"\n(test {abs_rel[m]:.3f})" if m in abs_rel else "") for m in models]
    for r, label in enumerate(labels):
        axes[r, 0].set_ylabel(label, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01, location="bottom")
    ticks = [t for t in (0.5, 1, 2, 3, 5, 10, 20, 40, 80, 160) if min_depth_m <= t <= max_depth_m]
    cbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    cbar.set_label("depth (m, log scale); grey = invalid")
    fig.suptitle("Depth maps of every model on the same test images (row label: test-split AbsRel)", fontsize=10)
    return _save(fig, out_png)


def plot_psf_kernel_grid(pairs: dict, out_png: str | Path, max_elements: int = 24) -> Path:
    """Target PSFs (kernel parts) above the realised PSFs, per element, in a common window.

    Args:
        pairs: :func:`dko.compare.load_psf_pairs` output (``targets``, ``psfs`` (E, w, w) sum-normalised,
            ``labels``).
        max_elements: at most this many elements, evenly spread over the bank.
    Each pair shares one colour scale; the number under a realised PSF is its relative L2 error to the target.
    """
    targets, psfs, labels = pairs["targets"], pairs["psfs"], list(pairs["labels"])
    e = len(targets)
    if e == 0:
        raise ValueError("no PSF / kernel pairs to show")
    idx = np.unique(np.linspace(0, e - 1, min(e, max_elements)).round().astype(int))
    ncol = min(len(idx), 8)
    nrow = -(-len(idx) // ncol)
    fig = _new_figure(1.4 * ncol + 0.4, 2.9 * nrow + 0.6)
    axes = fig.subplots(2 * nrow, ncol, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for n, el in enumerate(idx):
        r, c = 2 * (n // ncol), n % ncol
        vmax = float(max(targets[el].max(), psfs[el].max()))
        axes[r, c].imshow(targets[el], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        axes[r + 1, c].imshow(psfs[el], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        rel = float(np.linalg.norm(psfs[el] - targets[el]) / max(np.linalg.norm(targets[el]), 1e-30))
        axes[r, c].set_title(f"target {labels[el]}", fontsize=7)
        axes[r + 1, c].set_title(f"realised, err {rel:.2f}", fontsize=7)
    fig.suptitle(f"Kernel targets (upper) vs realised PSFs (lower), {len(idx)} of {e} elements, "
                 f"{targets.shape[-1]}x{targets.shape[-1]} px window", fontsize=9)
    return _save(fig, out_png)


def plot_sweep_groups(groups, group_keys: list[str], out_png: str | Path, value: str = "abs_rel") -> Path:
    """Mean test ``value`` per model and sweep group, error bars = sample std, whiskers to min / max."""
    fig = _new_figure(8.0, 4.2)
    ax = fig.subplots()
    labels = [", ".join(f"{k}={r[k]}" for k in group_keys) or "all points" for _, r in groups.iterrows()]
    group_names = list(dict.fromkeys(labels))
    models = list(dict.fromkeys(groups["model"]))
    width = 0.8 / max(len(group_names), 1)
    for g, name in enumerate(group_names):
        rows = groups[[lab == name for lab in labels]].set_index("model")
        x = np.arange(len(models)) + (g - (len(group_names) - 1) / 2) * width
        mean = np.array([rows.loc[m, f"{value}_mean"] if m in rows.index else np.nan for m in models], float)
        std = np.nan_to_num(np.array([rows.loc[m, f"{value}_std"] if m in rows.index else np.nan for m in models], float))
        lo = np.array([rows.loc[m, f"{value}_min"] if m in rows.index else np.nan for m in models], float)
        hi = np.array([rows.loc[m, f"{value}_max"] if m in rows.index else np.nan for m in models], float)
        ax.bar(x, mean, width * 0.9, yerr=std, capsize=2, color=f"C{g}", alpha=0.8, label=name)
        ax.vlines(x, lo, hi, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(models)), models, rotation=30, fontsize=8)
    ax.set_ylabel(f"test {value} (mean, bar = std, line = min..max)")
    ax.set_title(f"Sweep: {value} per model and group (n = {int(groups['n'].min())}..{int(groups['n'].max())} points)",
                 fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out_png)


# ----------------------------------------------------------------------------- stage 2 (DKO) figures
def plot_dko_kernel_fit(targets: np.ndarray, realised: np.ndarray, rel_l2: np.ndarray, out_channel: np.ndarray,
                        in_channel: np.ndarray, sign: np.ndarray, out_png: str | Path, max_elements: int = 512) -> Path:
    """Target vs realised kernel of every element (each pair on its own colour scale; realised sum-normalised).

    Args:
        targets: (E, k, k) target PSFs (sum 1). realised: (E, k, k) realised PSF in the kernel window.
        rel_l2: (E,) relative L2 error shown in each title. out_channel, in_channel, sign: (E,) labels.
    """
    targets, realised = np.asarray(targets, np.float64), np.asarray(realised, np.float64)
    n = min(len(targets), max_elements)
    cols = 8  # 8 pairs per row
    rows = -(-n // cols)
    fig = _new_figure(cols * 2 * 0.75 + 0.4, rows * 0.9 + 0.6)
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for e in range(n):
        r, c = divmod(e, cols)
        t = targets[e]
        q = realised[e] / max(realised[e].sum(), 1e-30)
        vmax = max(t.max(), q.max(), 1e-30)
        axes[r, 2 * c].imshow(t, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        axes[r, 2 * c + 1].imshow(q, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        axes[r, 2 * c].set_title(f"k{int(out_channel[e])}c{int(in_channel[e])}{'+' if sign[e] > 0 else '-'}", fontsize=5)
        axes[r, 2 * c + 1].set_title(f"{100 * float(rel_l2[e]):.1f}%", fontsize=5)
    fig.suptitle(f"DKO kernels: target (left) vs realised (right, rel. L2 error), {n} elements", fontsize=9)
    return _save(fig, out_png, dpi=100)


def plot_dko_loss_curves(histories: dict, out_png: str | Path) -> Path:
    """Stage-2 loss, shape term and light fraction in the k x k window against step, one line per shard.

    Args:
        histories: ``{shard: [{"loss", "shape", "window_fraction", ...} per step]}``.
    """
    fig = _new_figure(10.0, 3.6)
    ax_loss, ax_frac = fig.subplots(1, 2)
    for shard, hist in sorted(histories.items()):
        if not hist:
            continue
        steps = np.arange(len(hist))
        line, = ax_loss.plot(steps, [h["loss"] for h in hist], lw=1, label=f"shard {shard}")
        ax_loss.plot(steps, [h["shape"] for h in hist], lw=0.8, ls="--", color=line.get_color())
        ax_frac.plot(steps, [h["window_fraction"] for h in hist], lw=1, color=line.get_color())
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (solid), shape term (dashed)")
    ax_loss.legend(fontsize=7)
    ax_frac.set_xlabel("step")
    ax_frac.set_ylabel("incident light in the k x k window")
    ax_frac.set_ylim(0, 1)
    fig.suptitle("Stage 2 (DKO) optimisation", fontsize=10)
    return _save(fig, out_png)


def plot_dko_fidelity_vs_distance(rows: list[dict], out_png: str | Path) -> Path:
    """Median (and 10-90 % band) of the kernel error, light fraction in the kernel window and NCC against
    object distance, from the rows of ``fidelity.csv``."""
    dists = sorted({float(r["object_distance_m"]) for r in rows})
    finite = [d for d in dists if np.isfinite(d)]
    far = 2 * max(finite) if finite else 1.0
    x = np.array([d if np.isfinite(d) else far for d in dists])
    fig = _new_figure(11.0, 3.4)
    axes = fig.subplots(1, 3)
    for ax, key, label in zip(axes, ("rel_l2", "energy_k", "ncc"),
                              ("relative L2 kernel error", "transmitted light in k x k window", "NCC")):
        vals = [np.array([r[key] for r in rows if float(r["object_distance_m"]) == d]) for d in dists]
        med = np.array([np.median(v) for v in vals])
        lo = np.array([np.percentile(v, 10) for v in vals])
        hi = np.array([np.percentile(v, 90) for v in vals])
        ax.fill_between(x, lo, hi, alpha=0.25)
        ax.plot(x, med, "o-")
        ax.set_xscale("log")
        ax.set_xlabel("object distance (m)" + ("; rightmost = infinity" if any(~np.isfinite(dists)) else ""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Kernel fidelity vs object distance (median, 10-90 % of elements)", fontsize=10)
    return _save(fig, out_png)
