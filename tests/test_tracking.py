"""Tracking: parent/child runs, concurrency on a fresh sqlite store, failure isolation."""

import multiprocessing as mp
from pathlib import Path

import pytest

from dko.config import config_from_dict
from dko.tracking import JobTracker, finish_pipeline, start_pipeline, state_path, tracking_uri


def _cfg(tmp_path: Path, **tracking):
    return config_from_dict({"experiment": "trk", "results_dir": str(tmp_path / "results"),
                             "tracking": {"enabled": True, **tracking}})


def _child(args):
    results_dir, index = args
    cfg = config_from_dict({"experiment": "trk", "results_dir": results_dir})
    artifact = Path(results_dir) / f"artifact_{index}.txt"
    artifact.write_text(f"job {index}\n")
    tracker = JobTracker(cfg, rule="worker", wildcards={"shard": index})
    for step in range(5):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "index": index}, step=step)
    tracker.log_artifact(artifact)
    tracker.close()
    return tracker.run_id, tracker.failed, tracker.errors


def _runs(cfg):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.experiment)
    return client, experiment, client.search_runs([experiment.experiment_id], max_results=1000)


def test_sixteen_concurrent_jobs_on_a_fresh_store(tmp_path):
    cfg = _cfg(tmp_path)
    assert not (tmp_path / "results" / "mlflow.db").exists()
    state = start_pipeline(cfg)
    assert tracking_uri(cfg).startswith("sqlite:////")  # absolute path
    with mp.get_context("spawn").Pool(16) as pool:
        outcomes = pool.map(_child, [(str(tmp_path / "results"), i) for i in range(16)])
    finish_pipeline(cfg)
    failures = [o for o in outcomes if o[1] or o[0] is None]
    assert failures == []

    client, experiment, runs = _runs(cfg)
    children = [r for r in runs if r.data.tags.get("dko.kind") == "job"]
    parents = [r for r in runs if r.data.tags.get("dko.kind") == "pipeline"]
    assert len(children) == 16 and len(parents) == 1
    assert parents[0].info.run_id == state["parent_run_id"]
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {state["parent_run_id"]}
    assert sorted(int(r.data.tags["dko.wildcard.shard"]) for r in children) == list(range(16))
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["dko.rule"] == "worker"
        assert run.data.params["data.height"] == "96"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 5
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"artifact_{run.data.tags['dko.wildcard.shard']}.txt"]
    # nothing leaked into the Default experiment
    assert client.search_runs(["0"]) == []


def test_second_invocation_gets_a_new_parent(tmp_path):
    cfg = _cfg(tmp_path)
    first = start_pipeline(cfg)["parent_run_id"]
    second = start_pipeline(cfg)["parent_run_id"]
    assert first != second
    _, experiment, runs = _runs(cfg)
    assert len(runs) == 2 and {r.info.experiment_id for r in runs} == {experiment.experiment_id}


def test_job_without_pipeline_creates_its_parent(tmp_path):
    cfg = _cfg(tmp_path)
    tracker = JobTracker(cfg, rule="lonely")
    tracker.close()
    assert not tracker.failed and state_path(cfg).is_file()


def test_tracking_failure_is_reported_not_raised(tmp_path, caplog):
    """An unreachable server: every call fails softly, with an error naming the problem."""
    cfg = _cfg(tmp_path, uri="http://127.0.0.1:9")  # discard port: nothing listens
    import os

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    try:
        result = tmp_path / "result.txt"
        result.write_text("precious")
        tracker = JobTracker(cfg, rule="offline")
        tracker.log_metrics({"x": 1.0})
        tracker.log_artifact(result)
        tracker.close()
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert tracker.failed and tracker.run_id is None
    assert any("MLflow tracking failed" in r.message for r in caplog.records)
    assert result.read_text() == "precious"


def test_disabled_tracking_does_nothing(tmp_path):
    cfg = config_from_dict({"results_dir": str(tmp_path / "r"), "tracking": {"enabled": False}})
    tracker = JobTracker(cfg, rule="x")
    tracker.log_metrics({"a": 1})
    tracker.close()
    assert tracker.run_id is None and not tracker.failed
    assert not (tmp_path / "r").exists()
