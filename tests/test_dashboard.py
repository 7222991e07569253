"""The lean MLflow server of `make dashboard`: starts on loopback, serves the store, stops by PID."""

import json
import os
import socket
import urllib.request

from dko.config import config_from_dict
from dko.dashboard import start_server, stop_server, wait_until_up
from dko.tracking import JobTracker, start_pipeline


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_serves_store_and_accepts_http_tracking(tmp_path):
    local = config_from_dict({"experiment": "dash", "results_dir": str(tmp_path / "results")})
    start_pipeline(local)  # creates the sqlite store and experiment
    port = _free_port()
    proc = start_server(local, port, log_path=tmp_path / "server.log")
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_up(url, timeout_s=120, proc=proc), (tmp_path / "server.log").read_text()[-2000:]
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=dash")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.load(resp)["experiment"]["name"] == "dash"
        # a job pointed at the server with an http:// URI logs a child run through it
        remote = config_from_dict({"experiment": "dash_http", "results_dir": str(tmp_path / "results2"),
                                   "tracking": {"uri": url}})
        start_pipeline(remote)
        tracker = JobTracker(remote, rule="via_http")
        tracker.log_metrics({"abs_rel": 0.25})
        tracker.close()
        assert not tracker.failed and tracker.run_id
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={tracker.run_id}", timeout=10) as resp:
            run = json.load(resp)["run"]
        assert run["data"]["metrics"][0]["value"] == 0.25
    finally:
        stop_server(proc)
    assert proc.poll() is not None
    try:
        os.killpg(proc.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "server process group still running"
