"""A tracking server that is down for a whole pipeline run costs seconds, not MLflow's minutes of retries."""

import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from dko.io import read_json

pytestmark = pytest.mark.workflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pipeline_with_a_dead_server(tmp_path, repo_root, venv_bin):
    """prepare_dataset of smoke.yaml against a port where nothing listens: done fast, one warning per place."""
    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    raw["tracking"] = {"enabled": True, "uri": f"http://127.0.0.1:{_free_port()}"}
    config = tmp_path / "dead_server.yaml"
    config.write_text(yaml.safe_dump(raw))
    exp = tmp_path / "results" / "smoke"
    started = time.monotonic()
    proc = subprocess.run([str(venv_bin / "snakemake"), "--directory", str(repo_root), "--cores", "1",
                           "--configfile", str(config), "--", str(exp / "data" / "meta.json")],
                          cwd=repo_root, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert elapsed < 120, f"{elapsed:.0f} s (before the fix: ~500 s)"
    assert (exp / "data" / "meta.json").is_file() and (exp / "data" / "preview.png").is_file()
    assert proc.stderr.count("MLflow tracking is off for this pipeline invocation") == 1, proc.stderr[-5000:]
    job_log = (exp / "logs" / "prepare_dataset.log").read_text()
    assert job_log.count("MLflow tracking is off for this job") == 1, job_log
    assert "Traceback" not in job_log and "Retrying" not in job_log + proc.stderr
    state = read_json(exp / "tracking" / "pipeline_run.json")
    assert "unavailable" in state and state["invocation_open"] is False  # onsuccess closed the invocation
    assert not Path(raw["results_dir"], "mlflow.db").exists()
