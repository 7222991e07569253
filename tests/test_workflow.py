"""The whole pipeline end to end on config/smoke.yaml (in a temporary results folder)."""

import subprocess
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


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml"])
def test_dag_builds(repo_root, venv_bin, name):
    proc = _snakemake(venv_bin, repo_root, "-n", "--cores", "2", "--configfile", f"config/{name}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prepare_dataset" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, repo_root, venv_bin):
    tmp_path = tmp_path_factory.mktemp("smoke")
    cfg_path = _smoke_config(tmp_path, repo_root)
    proc = _snakemake(venv_bin, repo_root, "--cores", "2", "--configfile", str(cfg_path))
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
