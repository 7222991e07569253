"""Comparison of every evaluated model: one summary table, stage costs, headline ratios, sweep aggregation.

Inputs are the files the other stages write under ``<results_dir>/<experiment>/`` (paths relative to it,
see :func:`required_files`):

- ``evaluate/<model>/metrics.json`` (:func:`dko.depth.evaluate.evaluate_model`) and ``examples.npz``;
- ``stage1/budget.json``, ``dko/budget.json``, ``e2e/<variant>/budget.json`` (:mod:`dko.budget`) and the
  training curves ``stage1/curves.csv``, ``e2e/<variant>/curves.csv`` (``step, wall_s, cpu_s, ..., val_abs_rel``);
- ``dko/frontend.npz`` (realised PSFs and their kernel targets) for the PSF-vs-kernel figure.

What a model is (method, variant, noise, the training stages it depends on) comes from the model catalogue
(:data:`dko.catalogue.MODELS`): ``electronic`` (stage 1), ``dko*`` (stage 1 + stage 2), ``e2e_optics*`` (stage-1
back-end frozen, so stage 1 + its E2E stage), ``e2e_scratch*`` (its E2E stage), the references ``mean`` and
``rowmean``. A model's training cost is the sum of the stages it depends on. Only the models listed (the
configuration's :func:`dko.catalogue.evaluated_models`) are collected, so a config that disables a stage simply has
fewer rows.

:func:`summarize` builds the table (one row per model, variant, seed and noise setting),
:func:`stage_costs` the per-stage cost table, :func:`headline` the DKO-vs-E2E ratios, and
:func:`aggregate_sweep` the table over all sweep points with mean / std / min / max / n per group
(group = every swept key except ``seed``, plus the model).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from dko import catalogue
from dko.catalogue import Model
from dko.io import read_json, write_json, write_text

log = logging.getLogger(__name__)

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
COSTS = ("train_s", "train_cpu_s", "peak_mem_mb", "flops")
STAGE_NAMES = {"stage1": "stage 1 (electronic CNN)", "dko": "stage 2 (DKO)"}
# Keys of an E2E budget.json that may name what its budget was matched on (wall, cpu or steps).
BUDGET_BASIS_KEYS = ("budget_basis", "basis", "budget_mode", "budget_kind")


# ----------------------------------------------------------------------------- models and files
def model_info(name: str) -> Model:
    """The catalogue entry of model ``name`` (method, variant, noise, the stages it depends on)."""
    return catalogue.model(name)


def budget_file(stage: str) -> str:
    """``stage1/budget.json``, ``dko/budget.json``, ``e2e/<variant>/budget.json`` (relative paths)."""
    return catalogue.STAGES[stage].budget_file


def required_files(models: Sequence[str]) -> dict[str, list[str]]:
    """Files (relative to the experiment folder) that the comparison of ``models`` reads, by kind."""
    infos = [model_info(m) for m in models]
    stages = catalogue.model_stages(models)
    return {
        "metrics": [f"evaluate/{m}/metrics.json" for m in models],
        "examples": [f"evaluate/{m}/examples.npz" for m in models],
        "budgets": [budget_file(s) for s in stages],
        "curves": [catalogue.STAGES[s].curves_file for s in stages if s.startswith("e2e/")],
        "frontend": ["dko/frontend.npz"] if any(i.method == "dko" for i in infos) else [],
    }


# ----------------------------------------------------------------------------- costs
def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def stage_cost(budget: Mapping[str, Any]) -> dict[str, Any]:
    """The cost numbers of one stage's ``budget.json``.

    ``peak_mem_mb`` is the GPU's max allocated memory when the stage ran on CUDA, else the peak CPU RSS
    (``mem_kind`` says which); ``flops`` is ``flops_total`` (NaN when not counted). A sharded stage's file
    (DKO: ``shards``, one budget per ``optimize_metasurface`` job) gives its per-step costs as the mean over
    its jobs of one job's step, and its peak memory as the largest job's.
    """
    shards = [b for b in budget.get("shards") or [] if isinstance(b, Mapping)]
    if shards:  # a sharded stage (DKO): per-step costs are those of one job's step, averaged over the jobs
        budget = dict(budget)
        for key in ("step_wall_s", "step_cpu_s", "flops_per_step"):
            values = [_num(b.get(key)) for b in shards]
            if budget.get(key) is None and values and not any(math.isnan(v) for v in values):
                budget[key] = sum(values) / len(values)
        if budget.get("gpu_max_allocated_mb") is None:
            gpus = [_num(b.get("gpu_max_allocated_mb")) for b in shards]
            budget["gpu_max_allocated_mb"] = None if any(math.isnan(g) for g in gpus) else max(gpus)
        if budget.get("steps") is None:
            budget["steps"] = sum(_num(b.get("steps")) for b in shards)
    gpu = _num(budget.get("gpu_max_allocated_mb"))
    basis = next((str(budget[k]) for k in BUDGET_BASIS_KEYS if budget.get(k) not in (None, "")), "")
    if str(budget.get("budget_mode", "")) == "steps":  # a step-count budget: time was not matched
        basis = "steps"
    return {
        "wall_s": _num(budget.get("wall_s")),
        "cpu_s": _num(budget.get("cpu_s")),
        "steps": _num(budget.get("steps")),
        "step_wall_s": _num(budget.get("step_wall_s")),
        "step_cpu_s": _num(budget.get("step_cpu_s")),
        "peak_mem_mb": gpu if not math.isnan(gpu) else _num(budget.get("peak_rss_mb")),
        "mem_kind": "gpu" if not math.isnan(gpu) else "cpu_rss",
        "flops_per_step": _num(budget.get("flops_per_step")),
        "flops": _num(budget.get("flops_total")),
        "device": str(budget.get("device", "")),
        "budget_basis": basis,
    }


def load_stage_costs(exp_dir: str | Path, stages: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{stage: stage_cost(budget.json)}`` for the given stages (each file must exist)."""
    exp_dir = Path(exp_dir)
    return {s: stage_cost(read_json(exp_dir / budget_file(s))) for s in stages}


def stage_costs(costs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per stage (wall / CPU seconds, steps, time per step, peak memory, FLOPs)."""
    rows = [{"stage": s, **{k: v for k, v in c.items()}} for s, c in sorted(costs.items(), key=lambda kv: catalogue.stage_order(kv[0]))]
    return pd.DataFrame(rows, columns=["stage", "wall_s", "cpu_s", "steps", "step_wall_s", "step_cpu_s", "peak_mem_mb",
                                       "mem_kind", "flops_per_step", "flops", "device", "budget_basis"])


def _model_costs(info: Model, costs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    own = [costs[s] for s in info.stages]
    if not own:
        return {"stages": "", "train_s": math.nan, "train_cpu_s": math.nan, "peak_mem_mb": math.nan, "mem_kind": "",
                "flops": math.nan, "budget_basis": ""}
    flops = [c["flops"] for c in own]
    last = costs[info.stages[-1]]
    return {
        "stages": "+".join(info.stages),
        "train_s": sum(c["wall_s"] for c in own),
        "train_cpu_s": sum(c["cpu_s"] for c in own),
        "peak_mem_mb": max(c["peak_mem_mb"] for c in own),
        "mem_kind": "/".join(sorted({c["mem_kind"] for c in own})),
        "flops": math.nan if any(math.isnan(f) for f in flops) else sum(flops),
        "budget_basis": last["budget_basis"] or ("measured" if info.method in ("electronic", "dko") else ""),
    }


# ----------------------------------------------------------------------------- the summary table
SUMMARY_COLUMNS = ["model", "method", "variant", "noise", "optical_model", "seed", *METRICS, "n_images", "protocol", "resolution",
                   "median_scaling", *COSTS[:2], "peak_mem_mb",
                   "mem_kind", "flops", "budget_basis", "stages", "stage1_s", "stage2_s", "e2e_s", "stage1_cpu_s",
                   "stage2_cpu_s", "e2e_cpu_s"]


def summarize(exp_dir: str | Path, models: Sequence[str], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every model's metrics and the budgets of the stages they depend on.

    Args:
        exp_dir: ``<results_dir>/<experiment>`` (or a sweep point's folder).
        models: model names to collect (dko.catalogue.evaluated_models); each needs its metrics.json.
        seed: the run's seed (a column, for sweeps over seeds).
    Returns:
        ``(summary, stage costs)``: one row per model (:data:`SUMMARY_COLUMNS`), one row per stage.
    """
    exp_dir = Path(exp_dir)
    if not models:
        raise ValueError("no models to compare (dko.catalogue.evaluated_models gave none)")
    if len(set(models)) != len(models):
        raise ValueError(f"models to compare contain duplicates: {list(models)}")
    infos = [model_info(m) for m in models]
    stages = catalogue.model_stages(models)
    costs = load_stage_costs(exp_dir, stages)
    rows = []
    for info in infos:
        result = read_json(exp_dir / "evaluate" / info.name / "metrics.json")
        metrics = result.get("metrics") or {}
        missing = [m for m in METRICS if m not in metrics]
        if missing:
            raise ValueError(f"file '{exp_dir / 'evaluate' / info.name / 'metrics.json'}' lacks metrics {missing}")
        row: dict[str, Any] = {"model": info.name, "method": info.method, "variant": info.variant,
                               "noise": info.noise, "optical_model": info.optical_model, "seed": int(seed), **{m: float(metrics[m]) for m in METRICS},
                               "n_images": result.get("n_images", math.nan),
                               "protocol": result.get("protocol", ""), "resolution": result.get("resolution", "dataset"),
                               "median_scaling": bool(result.get("median_scaling", False))}
        row.update(_model_costs(info, costs))
        e2e = [s for s in info.stages if s.startswith("e2e/")]
        for col, stage in (("stage1", "stage1"), ("stage2", "dko"), ("e2e", e2e[0] if e2e else None)):
            c = costs.get(stage) if stage in info.stages else None
            row[f"{col}_s"] = c["wall_s"] if c else math.nan
            row[f"{col}_cpu_s"] = c["cpu_s"] if c else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS), stage_costs(costs)


def headline(summary: pd.DataFrame, costs: pd.DataFrame) -> dict[str, float]:
    """DKO-vs-E2E ratios: ``<e2e model>_over_<dko model>_abs_rel`` (> 1: DKO more accurate) per noise setting in the
    faithful optical model (``e2e_optics_over_dko_abs_rel``, ``e2e_optics_noisy_over_dko_abs_rel`` = against dko_noisy) and in the
    cheap one (``e2e_optics_cheap_over_dko_cheap_abs_rel``), and
    stage-2 vs E2E cost ratios ``<e2e stage>_over_dko_<cost>`` (per step and in total; > 1: DKO cheaper).

    Only ratios whose both sides exist are returned.
    """
    out: dict[str, float] = {}
    by_model = summary.set_index("model")
    optical = by_model["optical_model"] if "optical_model" in by_model else pd.Series("faithful", by_model.index)
    for noise, optics, suffix in (("clean", "faithful", ""), ("noisy", "faithful", "_noisy"),
                                  ("clean", "cheap", "_cheap")):
        dko = f"dko{suffix}"
        if dko not in by_model.index:
            continue
        for model in by_model.index:
            row = by_model.loc[model]
            if row["method"] == "e2e" and row["noise"] == noise and optical[model] == optics \
                    and "_" not in str(row["variant"]):
                against = "dko_cheap" if optics == "cheap" else "dko"  # the noisy pair keeps its historical name
                out[f"{model}_over_{against}_abs_rel"] = float(row["abs_rel"]) / float(by_model.loc[dko, "abs_rel"])
    stages = costs.set_index("stage")
    if "dko" in stages.index:
        dko = stages.loc["dko"]
        for stage in stages.index:
            if not str(stage).startswith("e2e/"):
                continue
            e2e, name = stages.loc[stage], str(stage).replace("/", "_")
            for cost in ("step_wall_s", "step_cpu_s", "peak_mem_mb", "flops_per_step", "wall_s", "cpu_s", "flops"):
                a, b = _num(e2e[cost]), _num(dko[cost])
                if not (math.isnan(a) or math.isnan(b)) and b > 0:
                    out[f"{name}_over_dko_{cost}"] = a / b
    return out


def _stage_prerequisites(stage: str) -> tuple[str, ...]:
    """The stages that the catalogue's models trained in ``stage`` also depend on (e2e/optics: stage 1)."""
    return next((m.stages for m in catalogue.MODELS.values() if stage in m.stages), (stage,))


def curve_offsets(costs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per E2E stage, the wall / CPU seconds of the stages it builds on (``e2e/optics``: stage 1), so that its
    curve starts where its prerequisites ended: ``{"e2e/optics": {"wall_s": ..., "cpu_s": ...}}``."""
    by_stage = costs.set_index("stage")
    out = {}
    for stage in by_stage.index:
        if str(stage).startswith("e2e/"):
            before = [s for s in _stage_prerequisites(str(stage)) if s != stage]
            out[str(stage)] = {col: float(sum(by_stage.loc[s, col] for s in before if s in by_stage.index))
                               for col in ("wall_s", "cpu_s")}
    return out


# ----------------------------------------------------------------------------- markdown
def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``frame`` (numbers to 4 significant digits, NaN blank)."""
    columns = list(columns or frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


PROTOCOL_WORDS = {
    "eigen": "KITTI Eigen test split (`eigen`): raw Velodyne ground truth, Garg crop, depths in (min, 80 m)",
    "eigen_benchmark": "KITTI Eigen benchmark split (`eigen_benchmark`): annotated ground truth, every pixel with "
                       "ground truth, no crop",
    "nyu": "NYUv2 Eigen test split (`nyu`): Eigen crop, depths in (min, 10 m)",
    "synthetic": "DKO's synthetic scenes (`synthetic`): every pixel in the dataset's depth range",
}


def protocol_sentence(summary: pd.DataFrame) -> str:
    """One line naming the evaluation protocol(s), resolution(s) and median scaling of the summary's rows."""
    parts = []
    for (protocol, resolution, scaled), _ in summary.groupby(["protocol", "resolution", "median_scaling"], sort=True):
        words = PROTOCOL_WORDS.get(str(protocol), f"protocol `{protocol}`")
        where = ("at each frame's native ground-truth resolution (predictions upsampled)" if resolution == "native"
                 else "at the dataset's resolution")
        parts.append(f"{words}; scored {where}; " + ("median-scaled per image." if scaled else "no median scaling."))
    return "Evaluation: " + " ".join(parts) + "\n"


def summary_markdown(summary: pd.DataFrame, costs: pd.DataFrame, ratios: Mapping[str, float], title: str) -> str:
    """``summary.md``: the model table, the stage-cost table and the headline ratios."""
    parts = [f"# {title}\n", protocol_sentence(summary),
             "Depth metrics on the test split (AbsRel, SqRel, RMSE, RMSE-log: lower is better; a1-a3 = "
             "delta < 1.25^n: higher is better). `train_s` / `train_cpu_s`: wall / CPU seconds of all training "
             "stages the model depends on (`stages`); `peak_mem_mb`: the largest stage's peak (GPU max "
             "allocated on CUDA, else CPU RSS); `flops`: counted training FLOPs. `optical_model`: `faithful` = images "
             "formed in the faithful optical model (the design's radii as written to its GDSII, PSFs over the field "
             "and the colour band, relative illumination; rule faithful_frontend), `cheap` = in the model the design "
             "was optimised with.\n",
             markdown_table(summary, ["model", "noise", "optical_model", *METRICS, "train_s", "train_cpu_s", "peak_mem_mb", "flops",
                                      "budget_basis", "stages"]),
             "\n## Cost per stage\n",
             markdown_table(costs, ["stage", "wall_s", "cpu_s", "steps", "step_wall_s", "peak_mem_mb", "mem_kind",
                                    "flops_per_step", "flops", "device", "budget_basis"])]
    if ratios:
        parts.append("\n## DKO vs E2E\n")
        parts.append("`*_over_dko_abs_rel` > 1: DKO has the lower error (faithful optical model; `*_over_dko_cheap_abs_rel`: "
                     "both in the cheap model); `*_over_dko_<cost>` > 1: DKO's stage 2 is cheaper than the E2E stage.\n")
        parts.append(markdown_table(pd.DataFrame({"ratio": list(ratios), "value": list(ratios.values())})))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- sweeps
def aggregate_sweep(points: Mapping[str, pd.DataFrame], swept: pd.DataFrame,
                    values: Sequence[str] = (*METRICS, *COSTS),
                    keys: Sequence[str] = ("model", "method", "variant", "noise", "optical_model")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join per-point tables into one and aggregate them per group.

    Args:
        points: ``{point id: table}`` (e.g. each point's summary); every table gets the point's swept values.
        swept: one row per point, one column per swept dotted key, index = point ids (:func:`swept_frame`).
        values: numeric columns to aggregate.
        keys: columns that, with every swept key except ``seed``, define a group.
    Returns:
        ``(all points, groups)``: the groups table has the group columns, ``n`` (points in the group) and
        ``<value>_mean``, ``_std`` (sample std, ddof=1; NaN for n=1), ``_min``, ``_max`` per value.
    """
    if not points:
        raise ValueError("no sweep points to aggregate")
    unknown = sorted(set(points) - set(swept.index))
    if unknown:
        raise ValueError(f"sweep points {unknown} are not in the sweep table")
    frames = []
    for point, frame in points.items():
        frame = frame.copy()
        for key in swept.columns:
            frame[key] = swept.loc[point, key]
        frame.insert(0, "point", point)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    # A swept key replaces a same-named column of the tables (e.g. seed), keeping the table's order.
    group_cols = [k for k in swept.columns if k != "seed"] + [k for k in keys if k in table.columns and k not in swept.columns]
    values = [v for v in values if v in table.columns]
    grouped = table.groupby(group_cols, sort=False, dropna=False)
    stats = grouped[values].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{v}_{s}" for v, s in stats.columns]
    stats.insert(0, "n", grouped.size())
    return table, stats.reset_index()


def swept_frame(cfg: Mapping) -> pd.DataFrame:
    """The sweep table of a config (dotted keys as columns) indexed by point id."""
    from dko.sweep import point_id, sweep_table

    frame = sweep_table(cfg)
    if frame is None:
        raise ValueError("the config has no sweep (sweep.grid / sweep.table)")
    frame.index = [point_id(row) for row in frame.to_dict("records")]
    return frame


def sweep_markdown(groups: pd.DataFrame, ratio_groups: pd.DataFrame | None, swept_keys: Sequence[str],
                   title: str) -> str:
    """``sweep_summary.md``: mean +- std (min..max, n) per group for the main metrics and costs."""
    keys = [k for k in swept_keys if k != "seed"]
    show = pd.DataFrame({c: groups[c] for c in [*keys, "model", "n"] if c in groups})
    for value in ("abs_rel", "rmse", "a1", "train_s", "peak_mem_mb"):
        if f"{value}_mean" in groups:
            show[value] = [_spread(r, value) for _, r in groups.iterrows()]
    parts = [f"# {title}\n",
             f"Swept keys: {', '.join(swept_keys)}. Groups: every swept key except `seed`; each cell is "
             "mean ± sample std [min, max] over the group's points (n).\n", markdown_table(show)]
    if ratio_groups is not None and not ratio_groups.empty:
        parts += ["\n## DKO vs E2E ratios per group\n", markdown_table(
            pd.DataFrame({**{c: ratio_groups[c] for c in [*keys, "ratio", "n"] if c in ratio_groups},
                          "value": [_spread(r, "value") for _, r in ratio_groups.iterrows()]}))]
    return "\n".join(parts)


def _spread(row: Mapping, value: str) -> str:
    mean, std, lo, hi = (row[f"{value}_{s}"] for s in ("mean", "std", "min", "max"))
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = _fmt(mean)
    if not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {_fmt(std)}"
    return text + f" [{_fmt(lo)}, {_fmt(hi)}]"


# ----------------------------------------------------------------------------- entry points
def compare_experiment(exp_dir: str | Path, models: Sequence[str], seed: int, out_dir: str | Path,
                       title: str = "DKO comparison", figures: Mapping[str, str | Path] | None = None,
                       depth_range_m: tuple[float, float] | None = None) -> dict[str, Any]:
    """Write ``summary.csv``, ``stage_costs.csv``, ``headline.json``, ``summary.md`` and the figures.

    Args:
        exp_dir: the experiment (or sweep point) folder holding the stages' outputs.
        models: models to collect (dko.catalogue.evaluated_models).
        seed: the run's seed.
        out_dir: ``compare/`` folder.
        figures: paths of the figures to draw, keys ``budget_curves``, ``stage_costs``, ``depth_maps``,
            ``psf_kernels`` (a key left out is not drawn; ``psf_kernels`` is drawn only with a DKO front-end).
        depth_range_m: colour range of the depth maps (default: the metrics files' range).
    Returns:
        ``{"summary": DataFrame, "costs": DataFrame, "headline": dict, "files": {name: path}}``.
    """
    from dko import plots

    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    summary, costs = summarize(exp_dir, models, seed)
    ratios = headline(summary, costs)
    files = {"summary_csv": out_dir / "summary.csv", "stage_costs_csv": out_dir / "stage_costs.csv",
             "headline": out_dir / "headline.json", "summary_md": out_dir / "summary.md"}
    write_csv(summary, files["summary_csv"])
    write_csv(costs, files["stage_costs_csv"])
    write_json(files["headline"], ratios)
    write_text(files["summary_md"], summary_markdown(summary, costs, ratios, title))
    figures = dict(figures or {})
    infos = {m: model_info(m) for m in models}
    if "budget_curves" in figures:
        curves = {s: pd.read_csv(exp_dir / s / "curves.csv") for s in costs["stage"] if str(s).startswith("e2e/")}
        plots.plot_budget_curves(curves, summary, costs, figures["budget_curves"], offsets=curve_offsets(costs))
        files["budget_curves"] = Path(figures["budget_curves"])
    if "stage_costs" in figures:
        plots.plot_stage_costs(costs, figures["stage_costs"])
        files["stage_costs"] = Path(figures["stage_costs"])
    if "depth_maps" in figures:
        examples = {m: dict(np.load(exp_dir / "evaluate" / m / "examples.npz")) for m in models}
        first = read_json(exp_dir / "evaluate" / models[0] / "metrics.json")
        lo, hi = depth_range_m or (float(first["min_depth_m"]), float(first["max_depth_m"]))
        plots.plot_depth_comparison(examples, summary.set_index("model")["abs_rel"].to_dict(), figures["depth_maps"],
                                    protocol=str(first.get("protocol", "synthetic")), min_depth_m=lo, max_depth_m=hi)
        files["depth_maps"] = Path(figures["depth_maps"])
    if "psf_kernels" in figures:
        frontend = exp_dir / "dko" / "frontend.npz"
        if any(i.method == "dko" for i in infos.values()) and frontend.is_file():
            plots.plot_psf_kernel_grid(load_psf_pairs(frontend), figures["psf_kernels"])
        else:
            plots.plot_message(figures["psf_kernels"], "no DKO front-end in this run (dko models disabled)")
        files["psf_kernels"] = Path(figures["psf_kernels"])
    log.info("compared %d models:\n%s", len(models), markdown_table(summary, ["model", "abs_rel", "a1", "train_s"]))
    return {"summary": summary, "costs": costs, "headline": ratios, "files": files}


def compare_sweep(cfg: Mapping, summaries: Mapping[str, str | Path], out_dir: str | Path,
                  title: str = "DKO sweep", figure: str | Path | None = None) -> dict[str, Any]:
    """Aggregate every point's ``summary.csv`` (and ``headline.json`` beside it) across a sweep.

    Writes ``sweep_points.csv`` (all rows of all points, with the swept keys), ``sweep_summary.csv``
    (groups: mean / std / min / max / n), ``sweep_headline.csv`` (DKO-vs-E2E ratios per point and their
    group statistics) and ``sweep_summary.md``; ``figure``: AbsRel per model and group with the spread.
    """
    from dko import plots

    out_dir = Path(out_dir)
    swept = swept_frame(cfg)
    missing = sorted(set(swept.index) - set(summaries))
    if missing:
        raise ValueError(f"sweep points without a summary: {missing}")
    tables = {p: pd.read_csv(summaries[p], keep_default_na=False, na_values=[""]) for p in swept.index}
    table, groups = aggregate_sweep(tables, swept)
    ratio_rows = {}
    for point in swept.index:
        path = Path(summaries[point]).with_name("headline.json")
        ratios = read_json(path) if path.is_file() else {}
        ratio_rows[point] = pd.DataFrame({"ratio": list(ratios), "value": [float(v) for v in ratios.values()]})
    ratio_table, ratio_groups = aggregate_sweep(ratio_rows, swept, values=("value",), keys=("ratio",)) \
        if any(len(f) for f in ratio_rows.values()) else (pd.DataFrame(), pd.DataFrame())
    files = {"points": out_dir / "sweep_points.csv", "summary": out_dir / "sweep_summary.csv",
             "headline": out_dir / "sweep_headline.csv", "markdown": out_dir / "sweep_summary.md"}
    write_csv(table, files["points"])
    write_csv(groups, files["summary"])
    write_csv(ratio_groups, files["headline"])
    write_text(files["markdown"], sweep_markdown(groups, ratio_groups, list(swept.columns), title))
    if figure is not None:
        plots.plot_sweep_groups(groups, [k for k in swept.columns if k != "seed"], figure)
        files["figure"] = Path(figure)
    return {"points": table, "groups": groups, "ratios": ratio_groups, "ratio_points": ratio_table, "files": files}


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table atomically (no index)."""
    write_text(path, frame.to_csv(index=False))
    return Path(path)


# ----------------------------------------------------------------------------- the DKO front-end file
TARGET_KEYS = ("targets", "target_psfs", "kernel_targets")
PSF_KEYS = ("psfs", "realised_psfs", "realized_psfs", "psf_bank", "psf")


def load_psf_pairs(path: str | Path, window_factor: float = 2.0) -> dict[str, np.ndarray]:
    """Target PSFs and realised PSFs of ``dko/frontend.npz``, centred in a common window.

    The file holds the targets (E, k, k) under one of :data:`TARGET_KEYS` and the realised PSFs under one of
    :data:`PSF_KEYS`, (E, P, P) or (D, E, P, P) per object distance (the first distance is shown). Both are
    cropped / padded to ``ceil(window_factor * k)`` (odd) pixels around the axis and sum-normalised there.
    Returns ``{"targets", "psfs", "labels"}`` (labels from ``out_channel`` / ``in_channel`` / ``sign`` if present).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"front-end file '{path}' does not exist")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    tkey = next((k for k in TARGET_KEYS if k in arrays), None)
    pkey = next((k for k in PSF_KEYS if k in arrays), None)
    if tkey is None or pkey is None:
        raise ValueError(f"front-end file '{path}' lacks targets ({' / '.join(TARGET_KEYS)}) or realised PSFs "
                         f"({' / '.join(PSF_KEYS)}); it has {sorted(arrays)}")
    targets, psfs = np.asarray(arrays[tkey], np.float64), np.asarray(arrays[pkey], np.float64)
    if psfs.ndim == 4:
        psfs = psfs[0]
    if targets.ndim != 3 or psfs.ndim != 3 or len(targets) != len(psfs):
        raise ValueError(f"front-end file '{path}': targets {targets.shape} and PSFs {psfs.shape} do not pair up")
    k = targets.shape[-1]
    window = max(k, math.ceil(window_factor * k - 1e-9))
    window += 1 - window % 2

    def centred(stack: np.ndarray) -> np.ndarray:
        p = stack.shape[-1]
        if window <= p:
            o = (p - window) // 2
            out = stack[:, o:o + window, o:o + window]
        else:
            d = (window - p) // 2
            out = np.pad(stack, ((0, 0), (d, d), (d, d)))
        return out / np.maximum(out.sum(axis=(-2, -1), keepdims=True), np.finfo(float).tiny)

    labels = []
    for e in range(len(targets)):
        parts = []
        if "out_channel" in arrays:
            parts.append(f"k{int(arrays['out_channel'][e])}")
        if "in_channel" in arrays:
            parts.append(f"c{int(arrays['in_channel'][e])}")
        if "sign" in arrays:
            parts.append("+" if float(arrays["sign"][e]) > 0 else "-")
        labels.append(" ".join(parts) or f"element {e}")
    return {"targets": centred(targets), "psfs": centred(psfs), "labels": np.asarray(labels)}
