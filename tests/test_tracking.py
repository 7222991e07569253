"""Tracking: parent/child runs, concurrency on a fresh sqlite store, failure isolation."""

import logging
import multiprocessing as mp
from pathlib import Path

import pytest

from dko.config import config_from_dict
from dko.io import read_json
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
    """An unreachable server and no pipeline invocation: the job probes once, warns once, raises nothing."""
    import time

    cfg = _cfg(tmp_path, uri="http://127.0.0.1:9")  # discard port: nothing listens
    result = tmp_path / "result.txt"
    result.write_text("precious")
    started = time.monotonic()
    tracker = JobTracker(cfg, rule="offline")
    tracker.log_metrics({"x": 1.0})
    tracker.log_artifact(result)
    tracker.close()
    assert time.monotonic() - started < 20  # no MLflow retries (MLflow's defaults: minutes)
    assert tracker.failed and tracker.run_id is None
    assert [m for m in _tracking_warnings(caplog) if "MLflow tracking is off for this job" in m and ":9/health" in m]
    assert result.read_text() == "precious"


def test_disabled_tracking_does_nothing(tmp_path):
    cfg = config_from_dict({"results_dir": str(tmp_path / "r"), "tracking": {"enabled": False}})
    tracker = JobTracker(cfg, rule="x")
    tracker.log_metrics({"a": 1})
    tracker.close()
    assert tracker.run_id is None and not tracker.failed
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- an unreachable server (issue 13.3)
def _free_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tracking_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dko.tracking" and r.levelno >= logging.WARNING]


def _a_job(cfg, result: Path) -> JobTracker:
    tracker = JobTracker(cfg, rule="offline", wildcards={"shard": 1})
    tracker.log_metrics({"x": 1.0}, step=1)
    tracker.log_params({"p": 1})
    tracker.set_tags({"t": "v"})
    tracker.log_dict({"a": 1}, "a.json")
    tracker.log_artifact(result)
    tracker.close()
    return tracker


def test_dead_server_costs_one_short_probe(tmp_path, caplog):
    """Nothing listens: the invocation probes once, records the outage, every job skips with one warning."""
    import time

    caplog.set_level(logging.INFO, logger="dko.tracking")
    cfg = _cfg(tmp_path, uri=f"http://127.0.0.1:{_free_port()}")
    result = tmp_path / "result.txt"
    result.write_text("precious")
    started = time.monotonic()
    state = start_pipeline(cfg)
    assert "parent_run_id" not in state and "Connection refused" in state["unavailable"]["reason"]
    assert len(_tracking_warnings(caplog)) == 1
    for _ in range(4):
        caplog.clear()
        tracker = _a_job(cfg, result)
        assert tracker.failed and tracker.run_id is None
        assert len(_tracking_warnings(caplog)) == 1, _tracking_warnings(caplog)
        assert "MLflow tracking is off for this job" in _tracking_warnings(caplog)[0]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finish_pipeline(cfg)
    assert time.monotonic() - started < 20  # MLflow's own retries took ~250 s per job
    assert result.read_text() == "precious"
    recorded = read_json(state_path(cfg))
    assert recorded["unavailable"] == state["unavailable"] and recorded["invocation_open"] is False
    assert not (tmp_path / "results" / "mlflow.db").exists()


def test_outage_belongs_to_one_invocation(tmp_path, monkeypatch):
    """Jobs of the invocation trust its record; after it ends (or without one) a job probes once itself."""
    import dko.tracking as tracking

    probes = []
    real_probe = tracking.probe_server
    monkeypatch.setattr(tracking, "probe_server", lambda uri, *a, **k: probes.append(uri) or real_probe(uri, *a, **k))
    cfg = _cfg(tmp_path, uri=f"http://127.0.0.1:{_free_port()}")
    start_pipeline(cfg)
    assert len(probes) == 1
    JobTracker(cfg, rule="inside").close()
    JobTracker(cfg, rule="inside").close()
    assert len(probes) == 1
    finish_pipeline(cfg)  # no parent run to close: no probe
    assert len(probes) == 1
    for expected in (2, 3):  # outside an invocation every job probes once (the server may be back)
        tracker = JobTracker(cfg, rule="outside")
        tracker.close()
        assert tracker.failed and len(probes) == expected
    assert read_json(state_path(cfg))["invocation_open"] is False
    start_pipeline(cfg)  # a new invocation probes again
    assert len(probes) == 4


def test_broken_store_is_recorded_like_an_outage(tmp_path, caplog):
    """A garbage sqlite file: the invocation records why, jobs skip with one warning, nothing is raised."""
    cfg = _cfg(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mlflow.db").write_bytes(b"not a database" * 400)
    state = start_pipeline(cfg)
    assert "not a database" in state["unavailable"]["reason"]
    caplog.clear()
    tracker = JobTracker(cfg, rule="x")
    tracker.log_metrics({"a": 1.0})
    tracker.close()
    assert tracker.failed and tracker.run_id is None and len(_tracking_warnings(caplog)) == 1


def test_probe_server():
    from dko.tracking import probe_server

    assert probe_server("sqlite:////nowhere/mlflow.db") is None  # a local store is not probed
    assert "unreachable" in probe_server(f"http://127.0.0.1:{_free_port()}")
    import socket

    with socket.socket() as hung:  # accepts connections (the kernel does) but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)
        assert "timed out" in probe_server(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout_s=0.5)


@pytest.mark.slow
def test_tracking_resumes_with_the_server_and_stops_when_it_goes(tmp_path, caplog):
    """A dead server, then a real one on that port: tracked again; lost mid-job: the job stops, the next skips."""
    import time

    from dko.dashboard import start_server, stop_server, wait_until_up

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = _cfg(tmp_path, uri=url)
    assert "unavailable" in start_pipeline(cfg)
    finish_pipeline(cfg)
    store = config_from_dict({"experiment": "store", "results_dir": str(tmp_path / "store")})
    proc = start_server(store, port, log_path=tmp_path / "server.log")
    try:
        assert wait_until_up(url, timeout_s=120, proc=proc), (tmp_path / "server.log").read_text()[-2000:]
        state = start_pipeline(cfg)
        assert "unavailable" not in state and state["parent_run_id"]
        tracker = JobTracker(cfg, rule="tracked")
        tracker.log_metrics({"x": 1.0})
        assert tracker.run_id and not tracker.failed
    finally:
        stop_server(proc)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="dko.tracking")
    started = time.monotonic()
    tracker.log_metrics({"x": 2.0})  # the server is gone: MLflow's bounded retries, one probe, then nothing
    tracker.log_metrics({"x": 3.0})
    tracker.close()
    assert tracker.failed and not tracker.active
    assert [m for m in _tracking_warnings(caplog) if "off for the rest of this job" in m]
    recorded = read_json(state_path(cfg))
    assert recorded["parent_run_id"] == state["parent_run_id"] and "unreachable" in recorded["unavailable"]["reason"]
    caplog.clear()
    later = JobTracker(cfg, rule="after")
    later.close()
    finish_pipeline(cfg)
    assert later.failed and len(_tracking_warnings(caplog)) == 2  # the job's one warning, the parent left open
    assert time.monotonic() - started < 30


# ----------------------------------------------------------------------------- dashboard: experiment kind, parent metrics
def test_new_experiment_opens_on_its_runs_in_the_ui(tmp_path):
    """MLflow 3's UI shows an untagged experiment as GenAI (overview of traces); the tag selects the runs table."""
    from dko.tracking import EXPERIMENT_KIND_TAG

    cfg = _cfg(tmp_path)
    start_pipeline(cfg)
    _, experiment, _ = _runs(cfg)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_existing_untagged_experiment_gets_the_kind_and_a_chosen_kind_stays(tmp_path):
    from mlflow.tracking import MlflowClient

    from dko.tracking import EXPERIMENT_KIND_TAG

    cfg = _cfg(tmp_path)
    (tmp_path / "results").mkdir()
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    old = client.create_experiment("trk")  # as written before the tag existed
    other = config_from_dict({"experiment": "chosen", "results_dir": str(tmp_path / "results")})
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert start_pipeline(cfg)["experiment_id"] == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    start_pipeline(other)
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_find_experiment_creates_nothing_and_tags_an_old_experiment(tmp_path):
    from mlflow.tracking import MlflowClient

    from dko.tracking import EXPERIMENT_KIND_TAG, find_experiment

    cfg = _cfg(tmp_path)
    assert find_experiment(cfg) is None
    assert not (tmp_path / "results" / "mlflow.db").exists()  # no store created by looking
    (tmp_path / "results").mkdir()
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    client.create_experiment("another")
    assert find_experiment(cfg) is None  # a store without the experiment
    old = client.create_experiment("trk")
    assert find_experiment(cfg) == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    with pytest.raises(ValueError, match="tracking.uri"):
        find_experiment(_cfg(tmp_path, uri="http://127.0.0.1:9"))


def test_compare_job_logs_the_headline_on_the_parent_run(tmp_path):
    """The headline ratios and per-model numbers land on the invocation's parent row; sweep points by prefix."""
    import math

    import numpy as np

    cfg = _cfg(tmp_path)
    state = start_pipeline(cfg)
    tracker = JobTracker(cfg, rule="compare")
    assert tracker.parent_run_id == state["parent_run_id"]
    headline = {"e2e_over_dko_abs_rel": 1.25, "e2e_optics_over_dko_wall_s": np.float64(3.5), "dko_abs_rel": 0.2,
                "not_a_number": math.nan, "text": "n/a"}
    tracker.log_metrics(headline)
    tracker.log_parent_metrics(headline)
    tracker.log_parent_metrics({"e2e_over_dko_abs_rel": 0.5}, prefix="seed~1__optics.f_m~1e+01/")
    tracker.close()
    finish_pipeline(cfg)
    assert not tracker.failed, tracker.errors
    client, _, runs = _runs(cfg)
    parent = client.get_run(state["parent_run_id"])
    assert parent.data.metrics == {"e2e_over_dko_abs_rel": 1.25, "e2e_optics_over_dko_wall_s": 3.5,
                                   "dko_abs_rel": 0.2, "seed_1__optics.f_m_1e_01/e2e_over_dko_abs_rel": 0.5}
    child = client.get_run(tracker.run_id)
    assert set(child.data.metrics) == {"e2e_over_dko_abs_rel", "e2e_optics_over_dko_wall_s", "dko_abs_rel"}


def test_parent_metrics_without_tracking_do_nothing(tmp_path):
    tracker = JobTracker.disabled()
    tracker.log_parent_metrics({"a": 1.0})
    assert tracker.parent_run_id is None and not tracker.failed
