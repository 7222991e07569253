"""The whole pipeline end to end on config/smoke.yaml (in a temporary results folder)."""

import copy
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
    for model in ("dko", "dko_noisy", "dko_layered", "dko_cheap"):
        metrics = json.loads((tmp_path / "results" / "smoke" / "evaluate" / model / "metrics.json").read_text())
        assert metrics["model"] == model and metrics["metrics"]["abs_rel"] > 0
        assert {"conv1_feature_rel_l2", "teacher_abs_rel"} <= set(metrics["extra_metrics"])
    # every design got its GDSII and its faithful front end (smoke: a 2 x 2 field grid)
    from dko.frontend import load_frontend

    for design in ("dko", "e2e/optics", "e2e/scratch"):
        folder = tmp_path / "results" / "smoke" / design
        assert (folder / "array.gds").stat().st_size > 1000 and (folder / "psf_field_map.png").stat().st_size > 5000
        faithful = load_frontend(folder / "frontend_faithful.npz")
        assert faithful.field_grid == (2, 2) and faithful.flat_field
        assert faithful.psfs.shape[3] == load_frontend(folder / "frontend.npz").n_elements
        summary = json.loads((folder / "frontend_faithful.json").read_text())
        assert len(summary["nodes"]) == 4 and summary["cheap_vs_faithful"]["median_psf_rel_diff"] > 0


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


# ----------------------------------------------------------------------------- exact reruns (issue 11)
_READ_LINE = "config keys read: "


def _keys_read(log_path: Path) -> set[str]:
    """The keys a job logged as read (dko.workflow.run_job's last 'config keys read' line)."""
    lines = [line for line in log_path.read_text().splitlines() if _READ_LINE in line]
    assert lines, f"{log_path} has no '{_READ_LINE}' line"
    text = lines[-1].split(_READ_LINE, 1)[1].strip()
    return set() if text == "none" else set(text.split(", "))


def _summary(venv_bin: Path, repo_root: Path, cfg_path: Path, *targets: str) -> list[dict]:
    """``snakemake --summary`` rows (output_file, rule, log-file(s), status, ...) of the config's DAG."""
    proc = _snakemake(venv_bin, repo_root, "--summary", *targets, "--configfile", str(cfg_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
    header, rows = lines[0], lines[1:]
    return [dict(zip(header, row)) for row in rows]


def _jobs_with_changed_params(venv_bin: Path, repo_root: Path, cfg_path: Path, *targets: str,
                              name=lambda log: log.stem) -> set[str]:
    """The jobs (named by ``name(log file)``) whose params changed, as Snakemake's default rerun triggers see them.

    Snakemake reports one reason per job: ``--summary`` says "params changed" unless the set of input files changed
    too (then it says only that); a dry run says "Params have changed" unless the job's inputs are updated by
    another job. So both are read. (``--list-changes params`` is no help: Snakemake 9.27 lists one output of every
    job there, changed or not.)
    """
    rows = _summary(venv_bin, repo_root, cfg_path, *targets)
    jobs = {name(Path(row["log-file(s)"])) for row in rows if row["status"] == "params changed"}
    if not any(row["status"] == "set of input files changed" for row in rows):
        return jobs
    proc = _snakemake(venv_bin, repo_root, "-n", *targets, "--configfile", str(cfg_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = None
    for line in (proc.stdout + proc.stderr).splitlines():
        text = line.strip()
        if text.startswith(("rule ", "localrule ")):
            log = None
        elif text.startswith("log: "):
            log = Path(text[5:].split(" ")[0].rstrip(","))
        elif text.startswith("reason: ") and "Params have changed since last execution" in text:
            assert log is not None, f"a job with changed params but no log: {text[:200]}"
            jobs.add(name(log))
    return jobs


def _changed(raw: dict, key: str, value) -> dict:
    out = copy.deepcopy(raw)
    *sections, leaf = key.split(".")
    node = out
    for name in sections:
        node = node.setdefault(name, {})
    node[leaf] = value
    return out


def _rule_and_wildcards(log_stem: str) -> tuple[str, dict]:
    for rule, wildcard in (("evaluate", "model"), ("train_e2e", "variant"), ("optimize_metasurface", "shard")):
        if log_stem.startswith(rule + "_"):
            return rule, {wildcard: log_stem[len(rule) + 1:]}
    return log_stem, {}


def test_every_job_read_what_it_declares(smoke_run):
    """Each job logged the keys it read: exactly the keys dko.catalogue declares for it under this config
    (run_job fails on an undeclared read; a declared key never read would rerun the job for nothing)."""
    from dko.catalogue import job_config_keys
    from dko.config import load_config

    tmp_path, cfg_path, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(cfg_path)
    log_dir = tmp_path / "results" / "smoke" / "logs"
    logs = sorted(log_dir.rglob("*.log"))
    # every job but `all`; per-design rules log to logs/<rule>/<design>.log
    assert len(logs) == 31, [str(p.relative_to(log_dir)) for p in logs]
    for log_path in logs:
        parts = log_path.relative_to(log_dir).with_suffix("").parts
        if len(parts) > 1:
            rule, wildcards = parts[0], {"design": "/".join(parts[1:])}
        else:
            rule, wildcards = _rule_and_wildcards(log_path.stem)
        declared = job_config_keys(rule, wildcards, cfg)
        read = _keys_read(log_path)
        leaves = {k for k in read if any(k == d or k.startswith(d + ".") for d in declared)}
        assert leaves == read, f"{log_path.stem} read undeclared {sorted(read - leaves)}"
        unread = [d for d in declared if not any(k == d or k.startswith(d + ".") for k in read)]
        assert not unread, f"{log_path.stem} declares but never reads {unread}"


# (key, new value): keys from every config section, and execution keys (a change reruns nothing)
RERUN_CASES = [
    ("seed", 5), ("data.n_train", 12), ("network.norm_std", 0.3), ("train.lr", 2e-3),
    ("train.log_every", 4), ("eval.n_figure_images", 1), ("optics.superpixel_m", 1.5e-6),
    ("optics.wavelengths_m", [6.3e-7, 5.5e-7, 4.6e-7]), ("metaatoms.pillar_height_m", 6.5e-7),
    ("sensor.read_noise_e", 4.0), ("dko.gds_radius_step_m", 2e-9), ("dko.lr", 0.4), ("dko.fidelity_distances_m", [2.0]),
    ("faithful.spectral_samples", 2),
    ("e2e.lr_optics", 0.2), ("e2e.lr_optics_scratch", 0.9), ("e2e.variants", ["optics"]),
    ("e2e.budget_scale", 2.0),  # read only with e2e.budget time (dko.catalogue.CONDITIONAL_READS); smoke: steps
    ("threads", 1), ("device", "cpu"), ("tracking.enabled", False), ("data.workers", 2),
]
UNREAD_IN_SMOKE = {"e2e.budget_scale"}


def test_a_changed_key_reruns_exactly_the_jobs_that_read_it(smoke_run, repo_root, venv_bin):
    """On the finished smoke run, changing one key changes the params (a default rerun trigger) of exactly the
    jobs that logged reading that key: no more, no fewer. (Jobs downstream of them rerun too, as their inputs change.)"""
    from dko.config import is_execution_key

    tmp_path, cfg_path, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_dir = tmp_path / "results" / "smoke" / "logs"

    def job_name(log: Path) -> str:  # per-design rules log to logs/<rule>/<design>.log: name them by that path
        parts = log.with_suffix("").parts
        return "/".join(parts[parts.index("logs") + 1:])

    reads = {job_name(p): _keys_read(p) for p in sorted(log_dir.rglob("*.log"))}
    raw = yaml.safe_load(cfg_path.read_text())
    rows = _summary(venv_bin, repo_root, cfg_path)
    assert {row["status"] for row in rows} == {"ok"}, sorted({row["status"] for row in rows})
    for key, value in RERUN_CASES:
        path = tmp_path / f"changed_{key}.yaml"
        path.write_text(yaml.safe_dump(_changed(raw, key, value)))
        expected = {job for job, keys in reads.items() if key in keys}
        got = _jobs_with_changed_params(venv_bin, repo_root, path, name=job_name)
        assert got == expected, f"{key}: reruns {sorted(got)}, but the jobs reading it are {sorted(expected)}"
        if not is_execution_key(key) and key not in UNREAD_IN_SMOKE:
            assert expected, f"{key}: no job read it in the smoke run; pick a key that some job reads"


def test_a_changed_key_inside_a_sweep_reruns_exactly_the_jobs_that_read_it(tmp_path, repo_root, venv_bin):
    """The same inside sweep points: the early stages of a two-point sweep, then one key changed at a time."""
    cfg_path = _smoke_config(tmp_path, repo_root, experiment="sweepreruns", sweep={"grid": {"seed": [0, 1]}},
                             tracking={"enabled": False})
    exp = tmp_path / "results" / "sweepreruns" / "sweep"
    targets = [str(exp / f"seed~{s}" / f) for s in (0, 1) for f in ("stage1/model.pt", "metaatoms/library.npz")]
    proc = _snakemake(venv_bin, repo_root, "--cores", "2", *targets, "--configfile", str(cfg_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = sorted(exp.glob("*/logs/*.log"))
    reads = {f"{p.parents[1].name}/{p.stem}": _keys_read(p) for p in logs}
    assert len(reads) == 6, sorted(reads)  # prepare_dataset, train_electronic, metaatom_library per point
    raw = yaml.safe_load(cfg_path.read_text())

    assert {row["status"] for row in _summary(venv_bin, repo_root, cfg_path, *targets)} == {"ok"}

    def changed_jobs(path: Path) -> set[str]:
        return _jobs_with_changed_params(venv_bin, repo_root, path, *targets,
                                         name=lambda log: f"{log.parents[1].name}/{log.stem}")

    for key, value in [("train.lr", 2e-3), ("data.n_train", 12), ("metaatoms.pillar_height_m", 6.5e-7), ("dko.lr", 0.4)]:
        path = tmp_path / f"changed_{key}.yaml"
        path.write_text(yaml.safe_dump(_changed(raw, key, value)))
        expected = {job for job, keys in reads.items() if key in keys}
        assert changed_jobs(path) == expected, key
    assert len({job for job, keys in reads.items() if "train.lr" in keys}) == 2  # both points' stage 1


def test_snakemake_lint_is_clean(repo_root, venv_bin):
    """`make lint` (run by .ci/run): Snakemake's linter finds nothing in the default workflow nor in a sweep."""
    proc = subprocess.run(["make", "lint", f"SNAKEMAKE={venv_bin / 'snakemake'}"], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("lint clean") == 2


def _benchmark(repo_root, name: str):
    """Import benchmarks/<name>.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, repo_root / "benchmarks" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_flat_field_cap_benchmark_on_the_smoke_run(smoke_run, repo_root, tmp_path):
    """benchmarks/flat_field_cap.py: with no cap it reproduces the pipeline's own dko evaluation exactly; a cap bounds
    the largest gain; the CSV is written."""
    import json

    run_dir, cfg_path, proc = smoke_run
    assert proc.returncode == 0
    bench = _benchmark(repo_root, "flat_field_cap")
    exp = run_dir / "results" / "smoke"
    common = ["--exp", str(exp), "--config", str(cfg_path), "--models", "dko", "--no-mlflow"]
    free = bench.main([str(tmp_path / "free"), "--caps", "none", *common])[0]
    pipeline = json.loads((exp / "evaluate" / "dko" / "metrics.json").read_text())["metrics"]["abs_rel"]
    assert free["abs_rel"] == pytest.approx(pipeline, rel=1e-6) and free["max_gain"] > 1.0
    cap = 1.0 + (free["max_gain"] - 1.0) / 2
    capped = bench.main([str(tmp_path / "out"), "--caps", str(cap), *common])[0]
    assert capped["max_gain"] == pytest.approx(cap)
    assert (tmp_path / "out" / "flat_field_cap.csv").is_file()


def test_faithful_image_convergence_benchmark_on_the_smoke_run(smoke_run, repo_root, tmp_path):
    """benchmarks/faithful_image_convergence.py on the smoke run's DKO design: the reference setting against itself
    differs by nothing, a coarser grid and one wavelength by something, and the files are written."""
    import json

    run_dir, cfg_path, proc = smoke_run
    assert proc.returncode == 0
    bench = _benchmark(repo_root, "faithful_image_convergence")
    summary = bench.main([str(tmp_path / "out"), "--exp", str(run_dir / "results" / "smoke"), "--config",
                          str(cfg_path), "--elements", "4", "--images", "2", "--settings", "2x2:3", "1x1:1",
                          "--reference", "2x2:3", "--threads", "1", "--tolerance", "1e-6", "--no-mlflow"])
    rows = {r["setting"]: r for r in summary["rows"]}
    assert rows["2x2:3"]["max_rel_diff"] == 0.0
    assert rows["2x2:3"]["converged"] and not rows["1x1:1"]["converged"] and not rows["cheap"]["converged"]
    assert summary["recommended"] == "2x2:3" and rows["1x1:1"]["n_psfs_per_element"] == 1
    assert rows["1x1:1"]["median_rel_diff"] > 1e-3 and rows["cheap"]["median_rel_diff"] > 1e-3
    assert len(summary["elements"]) == 4
    written = json.loads((tmp_path / "out" / "faithful_image_convergence.json").read_text())
    assert written["reference"] == "2x2:3" and (tmp_path / "out" / "faithful_image_convergence.csv").is_file()
    with pytest.raises(ValueError, match="FyxFx:S"):
        bench.parse_setting("3by5")


def test_faithful_distance_sensitivity_benchmark_on_the_smoke_run(smoke_run, repo_root, tmp_path):
    """benchmarks/faithful_distance_sensitivity.py on the smoke run's DKO design (its oblique table): one row per depth
    layer distance, the nearer layer changes the faithful PSFs more than the farther one, the JSON is written."""
    import json

    run_dir, cfg_path, proc = smoke_run
    assert proc.returncode == 0
    bench = _benchmark(repo_root, "faithful_distance_sensitivity")
    summary = bench.main([str(tmp_path / "out"), "--exp", str(run_dir / "results" / "smoke"), "--config",
                          str(cfg_path), "--threads", "1", "--no-mlflow"])
    rows = {r["object_distance_m"]: r for r in summary["rows"]}
    assert summary["metaatom_model"] == "oblique" and set(rows) == {2.0, 20.0} - {summary["design_distance_m"]}
    near, far = min(rows), max(rows)
    assert rows[near]["median_rel_diff"] > rows[far]["median_rel_diff"] > 0
    written = json.loads((tmp_path / "out" / "faithful_distance_sensitivity.json").read_text())
    assert written["rows"] == summary["rows"]
