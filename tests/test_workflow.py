"""The whole pipeline end to end on config/smoke.yaml (in a temporary results folder)."""

import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.workflow


def _smoke_config(tmp_path: Path, repo_root: Path, **overrides) -> Path:
    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    raw.update(overrides)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _snakemake(venv_bin: Path, repo_root: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv_bin / "snakemake"), "--directory", str(repo_root), *args], cwd=repo_root,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "seeds.yaml", "seeds_fast.yaml"])
def test_dag_builds(repo_root, venv_bin, name):
    proc = _snakemake(venv_bin, repo_root, "-n", "--forceall", "--cores", "2", "--configfile", f"config/{name}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prepare_dataset" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, repo_root, venv_bin):
    tmp_path = tmp_path_factory.mktemp("smoke")
    cfg_path = _smoke_config(tmp_path, repo_root)
    # 4 cores on this 2-core machine: more than one budget-timed job could run at a time without the profile
    proc = _snakemake(venv_bin, repo_root, "--cores", "4", "--configfile", str(cfg_path))
    return tmp_path, cfg_path, proc


def test_smoke_pipeline_runs(smoke_run):
    tmp_path, _, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    exp = tmp_path / "results" / "smoke"
    assert (exp / "data" / "meta.json").is_file()
    assert (exp / "data" / "preview.png").stat().st_size > 10_000
    for split in ("train", "val", "test"):
        assert (exp / "data" / split / "images.npy").is_file()
    assert (exp / "logs" / "prepare_dataset.log").stat().st_size > 0


def _job_span(log_path: Path) -> tuple[datetime, datetime]:
    """First and last timestamp of a job's log (dko.workflow's format: ``2026-12-01 21:59:23,123 INFO ...``)."""
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in log_path.read_text().splitlines()
              if len(line) > 23 and line[:2] == "20" and line[23] == " "]
    return stamps[0], stamps[-1]


def test_workflow_profile_is_in_effect(smoke_run):
    """Snakemake loads profiles/default (its line in the log), so its resource budget_timed=1 holds: the
    budget-timed jobs (stage 1 and both E2E variants) never overlap, although --cores 4 would allow it."""
    tmp_path, _, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Using workflow specific profile profiles/default" in proc.stderr
    logs = tmp_path / "results" / "smoke" / "logs"
    timed = [logs / "train_electronic.log", *sorted(logs.glob("train_e2e_*.log"))]
    assert len(timed) == 3, timed
    spans = sorted(_job_span(path) for path in timed)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, f"budget-timed jobs overlapped: {spans}"


def test_smoke_pipeline_tracked(smoke_run):
    """One parent run for the invocation, one finished child per job, with artifacts."""
    from mlflow.tracking import MlflowClient

    from dko.config import load_config
    from dko.tracking import tracking_uri

    tmp_path, cfg_path, proc = smoke_run
    assert proc.returncode == 0
    cfg = load_config(cfg_path)
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dko.kind") == "pipeline"]
    children = [r for r in runs if r.data.tags.get("dko.kind") == "job"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    rules = {r.data.tags["dko.rule"] for r in children}
    assert "prepare_dataset" in rules
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["dko.git_commit"]
        assert child.data.params["experiment"] == "smoke"
    prep = next(r for r in children if r.data.tags["dko.rule"] == "prepare_dataset")
    assert "preview.png" in [a.path for a in client.list_artifacts(prep.info.run_id)]


def test_rerun_is_a_no_op(smoke_run, repo_root, venv_bin):
    _, cfg_path, proc = smoke_run
    assert proc.returncode == 0
    again = _snakemake(venv_bin, repo_root, "-n", "--cores", "2", "--configfile", str(cfg_path))
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_smoke_stage2_outputs(smoke_run):
    """Stage 2 ran as parallel shard jobs and its files feed the DKO evaluations."""
    import csv
    import json

    tmp_path, _, proc = smoke_run
    assert proc.returncode == 0
    dko = tmp_path / "results" / "smoke" / "dko"
    shard_files = sorted((dko / "shards").glob("shard_*.pt"))
    assert len(shard_files) == 2  # network.base_width 8 / dko.shard_size 4
    budget = json.loads((dko / "budget.json").read_text())
    assert budget["n_jobs"] == 2 and len(budget["shards"]) == 2 and budget["steps"] > 0
    with open(dko / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"rel_l2", "energy_k", "energy_2k", "ncc"} <= set(rows[0])
    assert (dko / "array.gds").stat().st_size > 1000 and (dko / "kernels_fit.png").stat().st_size > 1000
    for model in ("dko", "dko_noisy", "dko_layered"):
        metrics = json.loads((tmp_path / "results" / "smoke" / "evaluate" / model / "metrics.json").read_text())
        assert metrics["model"] == model and metrics["metrics"]["abs_rel"] > 0
        assert {"conv1_feature_rel_l2", "teacher_abs_rel"} <= set(metrics["extra_metrics"])


def test_smoke_compare_lists_every_evaluated_model(smoke_run):
    """compare/summary.csv has one row per evaluated model, and the figures exist."""
    import json

    import pandas as pd

    tmp_path, cfg_path, proc = smoke_run
    assert proc.returncode == 0
    exp = tmp_path / "results" / "smoke"
    summary = pd.read_csv(exp / "compare" / "summary.csv")
    evaluated = sorted(p.parent.name for p in (exp / "evaluate").glob("*/metrics.json"))
    assert sorted(summary["model"]) == evaluated and "electronic" in evaluated
    for _, row in summary.iterrows():
        metrics = json.loads((exp / "evaluate" / row["model"] / "metrics.json").read_text())["metrics"]
        assert row["abs_rel"] == metrics["abs_rel"] and row["a1"] == metrics["a1"]
    stage1 = json.loads((exp / "stage1" / "budget.json").read_text())
    assert summary.set_index("model").loc["electronic", "train_s"] == stage1["wall_s"]
    for name in ("budget_curves", "stage_costs", "depth_maps", "psf_kernels"):
        assert (exp / "compare" / f"{name}.png").stat().st_size > 5000
    assert "| electronic |" in (exp / "compare" / "summary.md").read_text()
    # the compare job's MLflow run: key numbers as metrics, table and figures as artifacts
    from mlflow.tracking import MlflowClient

    from dko.config import load_config
    from dko.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(load_config(cfg_path)))
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              filter_string="tags.`dko.rule` = 'compare'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    electronic = summary.set_index("model").loc["electronic", "abs_rel"]
    assert runs[0].data.metrics["electronic_abs_rel"] == pytest.approx(electronic)
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "compare")}
    assert {"compare/summary.csv", "compare/summary.md", "compare/depth_maps.png"} <= artifacts


def test_report_builds(smoke_run, repo_root, venv_bin):
    """`make report` (snakemake --report) builds the HTML report of the smoke run, captions without RST errors."""
    tmp_path, cfg_path, proc = smoke_run
    assert proc.returncode == 0
    report = tmp_path / "report.html"
    # -o: treat the venv stamp as up to date (never reinstall inside a test)
    made = subprocess.run(["make", "-o", ".venv/.installed", "report", f"CONFIG={cfg_path}", f"REPORT={report}",
                           f"SNAKEMAKE={venv_bin / 'snakemake'}"], cwd=repo_root, capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert "(ERROR/" not in made.stderr and "(WARNING/" not in made.stderr, made.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000
    for name in ("summary.csv", "budget_curves.png", "stage_costs.png", "depth_maps.png", "psf_kernels.png"):
        assert name in html, name
