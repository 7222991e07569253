"""``make dashboard``: a lean MLflow server on 127.0.0.1 (or ``--host``, e.g. a cluster head node) over the results store.

Measured (shared/notes): ``mlflow server --workers 1`` with job execution disabled starts in ~10 s
at ~480 MB RSS, whereas ``mlflow ui`` starts 15 processes (2 GB). The server runs in its own process
group, which is terminated on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dko.config import Config, load_config
from dko.tracking import artifacts_location, find_experiment, probe_server, tracking_uri


def server_command(cfg: Config, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow server`` command line for the config's sqlite store."""
    uri = tracking_uri(cfg)
    if not uri.startswith("sqlite:"):
        raise ValueError(f"config key 'tracking.uri': the dashboard serves a local sqlite store, got '{uri}'")
    mlflow = Path(sys.executable).with_name("mlflow")
    artifacts = artifacts_location(cfg)
    Path(artifacts.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return [str(mlflow), "server", "--host", host, "--port", str(port), "--workers", "1",
            "--backend-store-uri", uri, "--artifacts-destination", artifacts]


def start_server(cfg: Config, port: int, host: str = "127.0.0.1", log_path: Path | None = None) -> subprocess.Popen:
    """Start the server in a new session (its own process group); returns the Popen."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    Path(cfg.results_dir).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(server_command(cfg, port, host), env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_until_up(url: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None) -> bool:
    """Probe ``url``/health (:func:`dko.tracking.probe_server`) until it answers, the process dies, or the
    timeout passes."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if probe_server(url, timeout_s=2.0) is None:
            return True
        time.sleep(0.5)
    return False


def stop_server(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Terminate the server's process group (by its PID), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# MLflow 3.17's UI shows every experiment as the page of its global "GenAI | Model training" switch (default
# GenAI: an overview of traces and tokens), whatever the experiment's kind tag; the URL's workflowType selects it.
UI_QUERY = "workflowType=machine_learning"


def runs_url(base_url: str, experiment_id: str) -> str:
    """The MLflow 3.x UI's runs table of one experiment (a hash route of its single-page app), in the UI's
    "Model training" mode (:data:`UI_QUERY`); one row per pipeline invocation, its job runs nested under it."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_QUERY}"


def dashboard_url(cfg: Config, base_url: str) -> tuple[str, str]:
    """The address to open and a note on it: the runs table of the config's experiment, or the UI's home page
    while the store has no such experiment (no tracked run yet)."""
    experiment_id = find_experiment(cfg)
    if experiment_id is None:
        return base_url, f"no experiment '{cfg.experiment}' in the store yet: run the pipeline with tracking.enabled"
    return runs_url(base_url, experiment_id), f"experiment '{cfg.experiment}', runs table"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the DKO MLflow store on 127.0.0.1")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on; 0.0.0.0 on a cluster head node so that jobs on the compute "
                             "nodes can log to http://<head>:PORT (only on a trusted network: no authentication)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, check_paths=False)
    probe = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if not port_is_free(args.port, probe):
        print(f"port {args.port} is in use; choose another with PORT=NNNN", file=sys.stderr)
        return 2
    url = f"http://{probe}:{args.port}"
    address, note = dashboard_url(cfg, url)
    proc = start_server(cfg, args.port, host=args.host)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if not wait_until_up(url, proc=proc):
            print("the MLflow server did not start", file=sys.stderr)
            return 1
        print(f"MLflow dashboard: {address}\n  ({note}; listening on {args.host}; store {tracking_uri(cfg)}; "
              "Ctrl-C stops it)", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        print("\nstopping the dashboard", file=sys.stderr)
    finally:
        stop_server(proc)
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
