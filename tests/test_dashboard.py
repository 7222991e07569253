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


# ----------------------------------------------------------------------------- the printed address (issue 11.7)
def test_runs_url():
    from dko.dashboard import runs_url

    # the UI's "Model training" mode: MLflow 3.17 shows the GenAI overview otherwise (scripts/check_dashboard.py)
    assert runs_url("http://127.0.0.1:5000/", "7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


class _FakeServer:
    """Stands in for the server process: main() prints the address once the server is up, then waits on it."""

    pid = -1

    def wait(self, timeout=None):
        return 0

    def poll(self):
        return 0


def _main_output(tmp_path, monkeypatch, capsys) -> str:
    import dko.dashboard as dashboard

    monkeypatch.setattr(dashboard, "start_server", lambda cfg, port, host="127.0.0.1", log_path=None: _FakeServer())
    monkeypatch.setattr(dashboard, "wait_until_up", lambda url, timeout_s=90.0, proc=None: True)
    config = tmp_path / "dash.yaml"
    config.write_text(f"experiment: dash\nresults_dir: {tmp_path / 'results'}\n")
    assert dashboard.main(["--config", str(config), "--port", str(_free_port())]) == 0
    return capsys.readouterr().out


def test_make_dashboard_prints_the_runs_table_of_the_experiment(tmp_path, monkeypatch, capsys):
    state = start_pipeline(config_from_dict({"experiment": "dash", "results_dir": str(tmp_path / "results")}))
    out = _main_output(tmp_path, monkeypatch, capsys)
    first = out.splitlines()[0]
    assert first.startswith("MLflow dashboard: http://127.0.0.1:")
    assert first.endswith(f"/#/experiments/{state['experiment_id']}/runs?workflowType=machine_learning"), out


def test_make_dashboard_without_a_tracked_run_prints_the_home_page(tmp_path, monkeypatch, capsys):
    out = _main_output(tmp_path, monkeypatch, capsys)
    assert "/#/experiments/" not in out and "no experiment 'dash' in the store yet" in out
    assert not (tmp_path / "results" / "mlflow.db").exists()


def _check_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_dashboard.py"
    spec = importlib.util.spec_from_file_location("check_dashboard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_browser_check_tells_the_runs_table_from_the_genai_overview():
    """scripts/check_dashboard.py's DOM check (the browser part runs in the script, on a finished run's store)."""
    check = _check_script()
    runs = ('<div><script>var x="Usage";</script><span>Run Name</span><a>pipeline 2026-12-01 23:56:36</a>'
            '<a>train_electronic</a><nav>Runs</nav><nav>Models</nav></div>')
    assert check.check_dom(runs, ["pipeline 2026-12-01 23:56:36"], ["train_electronic", "compare"]) == []
    genai = '<div><h1>Overview</h1><span>Usage</span><span>Quality</span><nav>Training runs</nav></div>'
    problems = check.check_dom(genai, ["pipeline 2026-12-01 23:56:36"], ["train_electronic"])
    assert any("Run Name" in p for p in problems) and any("'Usage' is shown" in p for p in problems)
    assert any("train_electronic" in p for p in problems) and any("pipeline" in p for p in problems)
