"""dko.compare on fabricated stage outputs: the summary table, costs, ratios, figures and sweep aggregation."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from dko.compare import (aggregate_sweep, compare_experiment, compare_sweep, headline, load_psf_pairs, model_info,
                         required_files, summarize, swept_frame)
from dko.config import resolve_config

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def _metrics(path, abs_rel, **extra):
    values = {m: abs_rel * (i + 1) if i < 4 else 1.0 - abs_rel / (i - 3) for i, m in enumerate(METRIC_NAMES)}
    values.update(extra)
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps({"metrics": values, "n_images": 4, "protocol": "synthetic",
                                                   "min_depth_m": 1.0, "max_depth_m": 80.0}))


def _budget(path, wall, cpu, steps, rss, gpu=None, flops_per_step=None, **extra):
    path.mkdir(parents=True, exist_ok=True)
    body = {"wall_s": wall, "cpu_s": cpu, "steps": steps, "step_wall_s": wall / steps, "step_cpu_s": cpu / steps,
            "peak_rss_mb": rss, "gpu_max_allocated_mb": gpu, "flops_per_step": flops_per_step,
            "flops_total": None if flops_per_step is None else flops_per_step * steps, "device": "cpu", **extra}
    (path / "budget.json").write_text(json.dumps(body))


def _examples(path, offset, n=2, h=8, w=12):
    rng = np.random.default_rng(0)  # the same images for every model
    depth = rng.uniform(2, 50, (n, h, w)).astype(np.float32)
    np.savez(path / "examples.npz", images=rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8), depth=depth,
             pred=(depth + offset).astype(np.float32), names=np.array([f"im{i}" for i in range(n)]))


ABS_REL = {"electronic": 0.10, "mean": 0.50, "dko": 0.12, "dko_noisy": 0.15, "e2e_optics": 0.24, "e2e_scratch": 0.30,
           "e2e_optics_noisy": 0.33, "dko_cheap": 0.11, "e2e_optics_cheap": 0.165}


@pytest.fixture
def experiment(tmp_path):
    exp = tmp_path / "exp"
    for i, (model, value) in enumerate(ABS_REL.items()):
        _metrics(exp / "evaluate" / model, value)
        _examples(exp / "evaluate" / model, offset=float(i))
    _budget(exp / "stage1", wall=100.0, cpu=180.0, steps=50, rss=900.0, flops_per_step=1e9)
    _budget(exp / "dko", wall=20.0, cpu=30.0, steps=100, rss=300.0, flops_per_step=2e6)
    _budget(exp / "e2e" / "optics", wall=120.0, cpu=200.0, steps=40, rss=5000.0, gpu=700.0, flops_per_step=5e9,
            budget_basis="wall")
    _budget(exp / "e2e" / "scratch", wall=118.0, cpu=190.0, steps=30, rss=4000.0, flops_per_step=None,
            budget_basis="wall")
    for variant, n in (("optics", 4), ("scratch", 3)):
        pd.DataFrame({"step": np.arange(1, n + 1) * 10, "wall_s": np.arange(1, n + 1) * 30.0,
                      "cpu_s": np.arange(1, n + 1) * 50.0, "train_loss": np.linspace(1, 0.5, n),
                      "val_abs_rel": np.linspace(0.5, 0.25, n)}).to_csv(exp / "e2e" / variant / "curves.csv", index=False)
    rng = np.random.default_rng(1)
    targets = rng.uniform(0, 1, (6, 3, 3))
    targets /= targets.sum(axis=(1, 2), keepdims=True)
    psfs = np.zeros((1, 6, 9, 9))
    psfs[0, :, 3:6, 3:6] = targets * 0.8  # 80 % of the light in the kernel window, rest spread evenly
    psfs[0] += 0.2 / 81
    np.savez(exp / "dko" / "frontend.npz", targets=targets, psfs=psfs, out_channel=np.arange(6) // 2,
             in_channel=np.zeros(6, int), sign=np.array([1, -1] * 3))
    return exp


def test_models_come_from_the_catalogue_with_method_variant_noise_and_stages():
    assert model_info("dko_noisy") == model_info("dko_noisy")
    info = model_info("e2e_optics_noisy")
    assert (info.method, info.variant, info.noise, info.stages) == ("e2e", "optics", "noisy", ("stage1", "e2e/optics"))
    assert model_info("e2e_scratch").stages == ("e2e/scratch",)
    assert model_info("dko_layered").stages == ("stage1", "dko") and model_info("dko_layered").variant == "layered"
    assert model_info("mean").stages == () and model_info("mean").method == "reference"
    for name in ("e2e", "dko__noisy", "dko_noisy_layered"):
        with pytest.raises(ValueError, match=f"unknown model '{name}'.*dko.catalogue.MODELS"):
            model_info(name)


def test_required_files_follow_the_models():
    files = required_files(["electronic", "mean"])
    assert files["budgets"] == ["stage1/budget.json"] and files["frontend"] == [] and files["curves"] == []
    files = required_files(["dko", "e2e_scratch_noisy", "e2e_scratch"])
    assert files["budgets"] == ["stage1/budget.json", "dko/budget.json", "e2e/scratch/budget.json"]
    assert files["curves"] == ["e2e/scratch/curves.csv"] and files["frontend"] == ["dko/frontend.npz"]
    assert "evaluate/e2e_scratch_noisy/metrics.json" in files["metrics"]


def test_summary_rows_and_costs_by_hand(experiment):
    summary, costs = summarize(experiment, list(ABS_REL), seed=3)
    assert list(summary["model"]) == list(ABS_REL)
    rows = summary.set_index("model")
    assert rows.loc["dko", "abs_rel"] == pytest.approx(0.12) and rows.loc["dko", "rmse_log"] == pytest.approx(0.48)
    assert (summary["seed"] == 3).all()
    # training cost = the stages a model depends on
    assert rows.loc["electronic", "train_s"] == 100.0 and rows.loc["electronic", "stages"] == "stage1"
    assert rows.loc["dko", "train_s"] == 120.0 and rows.loc["dko_noisy", "train_cpu_s"] == 210.0
    assert rows.loc["dko", "flops"] == pytest.approx(1e9 * 50 + 2e6 * 100)
    assert rows.loc["dko", "peak_mem_mb"] == 900.0 and rows.loc["dko", "mem_kind"] == "cpu_rss"
    assert rows.loc["e2e_optics", "train_s"] == 220.0 and rows.loc["e2e_optics", "stages"] == "stage1+e2e/optics"
    assert rows.loc["e2e_optics", "peak_mem_mb"] == 900.0  # GPU 700 MB for E2E < stage-1 RSS 900 MB
    assert rows.loc["e2e_optics", "mem_kind"] == "cpu_rss/gpu"
    assert rows.loc["e2e_scratch", "train_s"] == 118.0 and math.isnan(rows.loc["e2e_scratch", "flops"])
    assert rows.loc["e2e_scratch", "budget_basis"] == "wall" and rows.loc["dko", "budget_basis"] == "measured"
    assert rows.loc["dko", "stage2_s"] == 20.0 and math.isnan(rows.loc["dko", "e2e_s"])
    assert rows.loc["e2e_optics_noisy", "e2e_cpu_s"] == 200.0 and rows.loc["e2e_optics_noisy", "noise"] == "noisy"
    assert math.isnan(rows.loc["mean", "train_s"])
    assert list(costs["stage"]) == ["stage1", "dko", "e2e/optics", "e2e/scratch"]
    assert costs.set_index("stage").loc["e2e/optics", "peak_mem_mb"] == 700.0


def test_headline_ratios_by_hand(experiment):
    summary, costs = summarize(experiment, list(ABS_REL), seed=0)
    ratios = headline(summary, costs)
    assert ratios["e2e_optics_over_dko_abs_rel"] == pytest.approx(2.0)
    assert ratios["e2e_scratch_over_dko_abs_rel"] == pytest.approx(2.5)
    assert ratios["e2e_optics_noisy_over_dko_abs_rel"] == pytest.approx(0.33 / 0.15)
    # the cheap optical model's pair stands beside, never mixed with the faithful one
    assert ratios["e2e_optics_cheap_over_dko_cheap_abs_rel"] == pytest.approx(1.5)
    assert not any("cheap" in name for name in ratios if name != "e2e_optics_cheap_over_dko_cheap_abs_rel")
    rows = summary.set_index("model")["optical_model"]
    assert (rows["dko"], rows["dko_cheap"], rows["e2e_optics_noisy"], rows["electronic"]) == \
        ("faithful", "cheap", "faithful", "")
    assert ratios["e2e_optics_over_dko_step_wall_s"] == pytest.approx((120 / 40) / (20 / 100))
    assert ratios["e2e_optics_over_dko_peak_mem_mb"] == pytest.approx(700 / 300)
    assert ratios["e2e_optics_over_dko_flops_per_step"] == pytest.approx(5e9 / 2e6)
    assert "e2e_scratch_over_dko_flops_per_step" not in ratios  # not counted for scratch
    # without DKO there is nothing to compare with
    summary2, costs2 = summarize(experiment, ["electronic", "e2e_optics"], seed=0)
    assert headline(summary2, costs2) == {}


def test_missing_inputs_are_named(experiment):
    with pytest.raises(ValueError, match="unknown model 'e2e_nope'"):
        summarize(experiment, ["e2e_nope"], seed=0)
    (experiment / "e2e" / "scratch" / "budget.json").unlink()
    with pytest.raises(ValueError, match="e2e/scratch/budget.json"):
        summarize(experiment, ["e2e_scratch"], seed=0)
    (experiment / "evaluate" / "dko" / "metrics.json").write_text(json.dumps({"metrics": {"abs_rel": 1.0}}))
    with pytest.raises(ValueError, match="lacks metrics"):
        summarize(experiment, ["dko"], seed=0)
    with pytest.raises(ValueError, match="no models"):
        summarize(experiment, [], seed=0)


def test_compare_experiment_writes_tables_and_figures(experiment, tmp_path):
    out = tmp_path / "compare"
    figures = {k: out / f"{k}.png" for k in ("budget_curves", "stage_costs", "depth_maps", "psf_kernels")}
    result = compare_experiment(experiment, list(ABS_REL), 0, out, figures=figures)
    written = pd.read_csv(out / "summary.csv")
    assert list(written["model"]) == list(ABS_REL)
    assert written["abs_rel"].tolist() == pytest.approx(list(ABS_REL.values()))
    md = (out / "summary.md").read_text()
    assert "| e2e_optics_noisy | noisy |" in md and "e2e_optics_over_dko_abs_rel" in md
    assert json.loads((out / "headline.json").read_text())["e2e_optics_over_dko_abs_rel"] == pytest.approx(2.0)
    for png in figures.values():
        assert png.stat().st_size > 5000
    assert set(figures) <= set(result["files"])


def test_compare_tolerates_disabled_stages(experiment, tmp_path):
    """Only electronic + reference models (e.g. dko and e2e disabled): no DKO front-end, no curves."""
    out = tmp_path / "compare"
    figures = {k: out / f"{k}.png" for k in ("budget_curves", "stage_costs", "depth_maps", "psf_kernels")}
    result = compare_experiment(experiment, ["electronic", "mean"], 0, out, figures=figures)
    assert list(result["summary"]["model"]) == ["electronic", "mean"] and result["headline"] == {}
    assert all(p.is_file() for p in figures.values())


def test_psf_pairs_are_windowed_and_normalised(experiment):
    pairs = load_psf_pairs(experiment / "dko" / "frontend.npz")
    assert pairs["targets"].shape == pairs["psfs"].shape == (6, 7, 7)  # 2k = 6 -> odd 7
    assert pairs["psfs"].sum(axis=(1, 2)) == pytest.approx(np.ones(6))
    assert pairs["targets"][:, 2:5, 2:5].sum(axis=(1, 2)) == pytest.approx(np.ones(6))
    assert list(pairs["labels"][:2]) == ["k0 c0 +", "k0 c0 -"]
    np.savez(experiment / "bad.npz", kernels=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="lacks targets"):
        load_psf_pairs(experiment / "bad.npz")


# ----------------------------------------------------------------------------- sweeps
def _sweep_cfg():
    return resolve_config({"experiment": "sw", "sweep": {"grid": {"seed": [0, 1, 2], "sensor.read_noise_e": [1.0, 4.0]}}})


def _point_table(abs_rel_dko, abs_rel_e2e, train_s):
    return pd.DataFrame({"model": ["dko", "e2e_optics"], "method": ["dko", "e2e"], "variant": ["", "optics"],
                         "noise": ["clean", "clean"], "seed": [0, 0], "abs_rel": [abs_rel_dko, abs_rel_e2e],
                         "train_s": [train_s, train_s + 1]})


def test_sweep_aggregation_by_hand():
    swept = swept_frame(_sweep_cfg())
    assert len(swept) == 6 and list(swept.columns) == ["seed", "sensor.read_noise_e"]
    values = {}
    for i, point in enumerate(swept.index):
        values[point] = _point_table(0.1 + 0.01 * i, 0.3 + 0.02 * i, 10.0 * (i + 1))
    table, groups = aggregate_sweep(values, swept, values=("abs_rel", "train_s"))
    assert len(table) == 12 and set(table["point"]) == set(swept.index)
    assert table.loc[table["point"] == swept.index[5], "seed"].tolist() == [2, 2]  # swept seed overrides the column
    assert len(groups) == 4  # 2 noise levels x 2 models
    # read_noise 1.0 holds points 0, 2, 4 (grid order: seed outer, noise inner)
    g = groups[(groups["sensor.read_noise_e"] == 1.0) & (groups["model"] == "dko")].iloc[0]
    dko = np.array([0.10, 0.12, 0.14])
    assert g["n"] == 3
    assert g["abs_rel_mean"] == pytest.approx(dko.mean())
    assert g["abs_rel_std"] == pytest.approx(dko.std(ddof=1))
    assert (g["abs_rel_min"], g["abs_rel_max"]) == pytest.approx((0.10, 0.14))
    g = groups[(groups["sensor.read_noise_e"] == 4.0) & (groups["model"] == "e2e_optics")].iloc[0]
    assert g["train_s_mean"] == pytest.approx(np.mean([21.0, 41.0, 61.0]))
    with pytest.raises(ValueError, match="not in the sweep table"):
        aggregate_sweep({"seed~9": values[swept.index[0]]}, swept)


def test_single_point_groups_have_no_spread():
    cfg = resolve_config({"experiment": "sw", "sweep": {"grid": {"sensor.read_noise_e": [1.0, 4.0]}}})
    swept = swept_frame(cfg)
    _, groups = aggregate_sweep({p: _point_table(0.1, 0.2, 1.0) for p in swept.index}, swept, values=("abs_rel",))
    assert (groups["n"] == 1).all() and groups["abs_rel_std"].isna().all()


def test_compare_sweep_files(tmp_path):
    cfg = _sweep_cfg()
    swept = swept_frame(cfg)
    summaries = {}
    for i, point in enumerate(swept.index):
        folder = tmp_path / point
        folder.mkdir()
        _point_table(0.1, 0.2 + 0.01 * i, 5.0).to_csv(folder / "summary.csv", index=False)
        (folder / "headline.json").write_text(json.dumps({"e2e_optics_over_dko_abs_rel": (0.2 + 0.01 * i) / 0.1}))
        summaries[point] = folder / "summary.csv"
    out = compare_sweep(cfg, summaries, tmp_path / "cmp", figure=tmp_path / "cmp" / "sweep.png")
    groups = pd.read_csv(tmp_path / "cmp" / "sweep_summary.csv")
    assert set(groups.columns) >= {"sensor.read_noise_e", "model", "n", "abs_rel_mean", "abs_rel_std"}
    ratios = pd.read_csv(tmp_path / "cmp" / "sweep_headline.csv")
    noise1 = ratios[ratios["sensor.read_noise_e"] == 1.0].iloc[0]
    assert noise1["value_mean"] == pytest.approx(np.mean([2.0, 2.2, 2.4]))
    assert noise1["value_std"] == pytest.approx(np.std([2.0, 2.2, 2.4], ddof=1))
    md = (tmp_path / "cmp" / "sweep_summary.md").read_text()
    assert "±" in md and "sensor.read_noise_e" in md
    assert len(pd.read_csv(tmp_path / "cmp" / "sweep_points.csv")) == 12
    assert out["files"]["figure"].stat().st_size > 5000
    with pytest.raises(ValueError, match="without a summary"):
        compare_sweep(cfg, dict(list(summaries.items())[:2]), tmp_path / "cmp2")


def test_e2e_curves_start_after_the_stages_they_build_on(experiment):
    from dko.compare import curve_offsets

    _, costs = summarize(experiment, list(ABS_REL), seed=0)
    offsets = curve_offsets(costs)
    assert offsets["e2e/optics"] == {"wall_s": 100.0, "cpu_s": 180.0}  # the frozen stage-1 back-end
    assert offsets["e2e/scratch"] == {"wall_s": 0.0, "cpu_s": 0.0}


# ----------------------------------------------------------------------------- the 2 x 2 smoke sweep end to end
@pytest.mark.workflow
def test_smoke_sweep_runs_and_aggregates(tmp_path, repo_root, venv_bin):
    """config/smoke.yaml swept over 2 seeds x 2 read-noise levels: every point runs the whole DAG, and
    compare_sweep's groups equal the hand-computed mean / spread of the points' own summary tables."""
    import subprocess

    import yaml

    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw.update(results_dir=str(tmp_path / "results"), experiment="sweep2x2", threads=1)
    raw["tracking"] = {"enabled": False}  # tracking is tested elsewhere; this keeps 4 x the DAG fast
    raw.setdefault("e2e", {})["variants"] = ["optics"]  # one E2E variant is enough for the ratios
    raw["sweep"] = {"grid": {"seed": [0, 1], "sensor.read_noise_e": [1.0, 4.0]}}
    cfg_path = tmp_path / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.run([str(venv_bin / "snakemake"), "--cores", "2", "--configfile", str(cfg_path), "--directory",
                           str(repo_root)], cwd=repo_root, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    exp = tmp_path / "results" / "sweep2x2"
    points = sorted(p.name for p in (exp / "sweep").iterdir())
    assert points == ["seed~0__sensor.read_noise_e~1.0", "seed~0__sensor.read_noise_e~4.0",
                      "seed~1__sensor.read_noise_e~1.0", "seed~1__sensor.read_noise_e~4.0"]
    per_point = {p: pd.read_csv(exp / "sweep" / p / "compare" / "summary.csv", keep_default_na=False, na_values=[""])
                 for p in points}
    models = list(per_point[points[0]]["model"])
    assert {"electronic", "mean", "rowmean"} <= set(models)
    for point, table in per_point.items():
        assert list(table["model"]) == models
        assert (table["seed"] == int(point[5])).all()
    everything = pd.read_csv(exp / "compare" / "sweep_points.csv", keep_default_na=False, na_values=[""])
    assert len(everything) == 4 * len(models) and set(everything["point"]) == set(points)
    groups = pd.read_csv(exp / "compare" / "sweep_summary.csv", keep_default_na=False, na_values=[""])
    assert len(groups) == 2 * len(models) and (groups["n"] == 2).all()
    for noise in ("1.0", "4.0"):
        members = [per_point[p].set_index("model") for p in points if p.endswith(noise)]
        for model in models:
            values = np.array([m.loc[model, "abs_rel"] for m in members])
            row = groups[(groups["sensor.read_noise_e"] == float(noise)) & (groups["model"] == model)].iloc[0]
            assert row["abs_rel_mean"] == pytest.approx(values.mean())
            assert row["abs_rel_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert (row["abs_rel_min"], row["abs_rel_max"]) == pytest.approx((values.min(), values.max()))
    assert {"dko", "e2e_optics"} <= set(models)
    ratios = pd.read_csv(exp / "compare" / "sweep_headline.csv", keep_default_na=False, na_values=[""])
    for noise in ("1.0", "4.0"):
        values = np.array([json.loads((exp / "sweep" / p / "compare" / "headline.json").read_text())
                           ["e2e_optics_over_dko_abs_rel"] for p in points if p.endswith(noise)])
        row = ratios[(ratios["sensor.read_noise_e"] == float(noise))
                     & (ratios["ratio"] == "e2e_optics_over_dko_abs_rel")].iloc[0]
        assert row["n"] == 2 and row["value_mean"] == pytest.approx(values.mean())
        assert row["value_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert "±" in (exp / "compare" / "sweep_summary.md").read_text()
    assert (exp / "compare" / "sweep_abs_rel.png").stat().st_size > 5000


def test_sharded_stage_costs_are_per_job(tmp_path):
    """dko/budget.json sums its shards; per-step costs and GPU memory come from the jobs' own budgets."""
    from dko.compare import stage_cost

    shards = [{"step_wall_s": 0.2, "step_cpu_s": 0.1, "flops_per_step": 10, "gpu_max_allocated_mb": 300.0, "steps": 5},
              {"step_wall_s": 0.4, "step_cpu_s": 0.3, "flops_per_step": 30, "gpu_max_allocated_mb": 500.0, "steps": 7}]
    cost = stage_cost({"wall_s": 9.0, "cpu_s": 4.0, "peak_rss_mb": 800.0, "flops_total": 260, "shards": shards})
    assert cost["step_wall_s"] == pytest.approx(0.3) and cost["step_cpu_s"] == pytest.approx(0.2)
    assert cost["flops_per_step"] == pytest.approx(20) and cost["steps"] == 12
    assert cost["peak_mem_mb"] == 500.0 and cost["mem_kind"] == "gpu" and cost["wall_s"] == 9.0
    assert stage_cost({"wall_s": 1.0, "budget_mode": "steps", "budget_basis": "cpu"})["budget_basis"] == "steps"


def test_the_summary_names_the_protocol_resolution_and_scaling():
    """Every row carries its metrics file's protocol, resolution and median scaling; summary.md says them."""
    from dko.compare import protocol_sentence

    frame = pd.DataFrame([{"protocol": "eigen", "resolution": "native", "median_scaling": True},
                          {"protocol": "eigen", "resolution": "native", "median_scaling": True}])
    sentence = protocol_sentence(frame)
    assert "KITTI Eigen test split (`eigen`)" in sentence and "Velodyne" in sentence
    assert "native ground-truth resolution" in sentence and "median-scaled" in sentence
    mixed = pd.DataFrame([{"protocol": "synthetic", "resolution": "dataset", "median_scaling": False},
                          {"protocol": "eigen_benchmark", "resolution": "native", "median_scaling": False}])
    text = protocol_sentence(mixed)
    assert "`eigen_benchmark`" in text and "`synthetic`" in text and "dataset's resolution" in text


def test_summary_rows_carry_the_protocol(experiment):
    summary, _ = summarize(experiment, list(ABS_REL), seed=0)
    assert set(summary["protocol"]) == {"synthetic"} and set(summary["resolution"]) == {"dataset"}
    assert not summary["median_scaling"].any()
