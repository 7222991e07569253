"""MLflow tracking: the only module of ``dko`` that imports mlflow.

Model (DESIGN.md section 6): one MLflow experiment per config ``experiment`` name; one **parent run
per pipeline invocation**, created once before any job starts (:func:`start_pipeline`, called from
the Snakefile's ``onstart``); one **child run per job** (:class:`JobTracker`), tagged with the rule,
its wildcards, the config hash and the git commit, with the resolved config as params.

Robustness rules, from measurements on MLflow 3.x with sqlite (``shared/notes``):
- the store, the experiment and the parent run are created exactly once, under a file lock, before
  jobs run (concurrent first use of a fresh sqlite store breaks its schema migration);
- children pass ``experiment_id`` and the parent id explicitly (``set_experiment`` races);
- telemetry is disabled (its thread races under concurrency);
- every call retries on "database is locked"; a tracking failure is logged as an error and never
  raised into the job, whose results on disk are already written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from dko.config import Config, config_hash, flatten
from dko.io import read_json, write_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

log = logging.getLogger(__name__)

STATE_FILE = "tracking/pipeline_run.json"
_RETRIES = 6


# ----------------------------------------------------------------------------- locations
def tracking_uri(cfg: Config) -> str:
    """The configured tracking URI, or an absolute sqlite file ``<results_dir>/mlflow.db``."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    db = (Path(cfg.results_dir).resolve() / "mlflow.db").as_posix()
    return f"sqlite:///{db}"


def artifacts_location(cfg: Config) -> str | None:
    """Artifact root for a local sqlite store (``<results_dir>/mlartifacts``); None for a server."""
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        return None
    folder = Path(cfg.tracking.artifacts_dir or Path(cfg.results_dir) / "mlartifacts").resolve()
    return folder.as_uri()


def state_path(cfg: Config) -> Path:
    """File holding the current pipeline invocation's experiment id and parent run id."""
    return cfg.experiment_dir / STATE_FILE


def git_commit(cwd: str | Path | None = None) -> str:
    """``<sha>`` of HEAD (``-dirty`` appended if the work tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------- helpers
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _retry(fn: Callable, *args, **kwargs):
    """Call ``fn`` retrying transient sqlite lock errors with exponential back-off."""
    delay = 0.2
    for attempt in range(_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(exc).lower() or attempt == _RETRIES - 1:
                raise
            time.sleep(delay)
            delay *= 2


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_experiment(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _params(cfg: Config) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in sorted(flatten(cfg.to_dict()).items())]


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ----------------------------------------------------------------------------- pipeline
def start_pipeline(cfg: Config, *, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> dict:
    """Create (once) the store and experiment, and a new parent run for this invocation.

    Writes ``<experiment_dir>/tracking/pipeline_run.json`` so that every job process finds the
    parent. Returns that state: ``tracking_uri``, ``experiment_id``, ``parent_run_id``, ``config_hash``.
    """
    uri = tracking_uri(cfg)
    lock = Path(cfg.results_dir).resolve() / ".mlflow.lock"
    with _file_lock(lock):
        client = _client(uri)
        experiment_id = _retry(_ensure_experiment, client, cfg.experiment, artifacts_location(cfg))
        all_tags = {"dko.kind": "pipeline", "dko.config_hash": config_hash(cfg), "dko.git_commit": git_commit(),
                    **(tags or {})}
        run = _retry(client.create_run, experiment_id, run_name=run_name or f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
                     tags=all_tags)
        for chunk in _chunks(_params(cfg), 100):
            _retry(client.log_batch, run.info.run_id, params=chunk)
    state = {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run.info.run_id,
             "config_hash": config_hash(cfg)}
    write_json(state_path(cfg), state)
    log.info("MLflow: experiment %s (%s), parent run %s, store %s", cfg.experiment, experiment_id, run.info.run_id, uri)
    return state


def finish_pipeline(cfg: Config, status: str = "FINISHED") -> None:
    """Mark the current parent run FINISHED or FAILED (errors are logged, not raised)."""
    try:
        state = read_json(state_path(cfg))
        _retry(_client(state["tracking_uri"]).set_terminated, state["parent_run_id"], status=status)
    except Exception as exc:  # tracking must never break the pipeline
        log.error("MLflow: could not close the pipeline run (%s); results on disk are unaffected", exc)


def _pipeline_state(cfg: Config) -> dict:
    """The current invocation's state, creating it under a lock when a job runs outside a pipeline."""
    path = state_path(cfg)
    if path.is_file():
        state = read_json(path)
        if state.get("tracking_uri") == tracking_uri(cfg):
            return state
    with _file_lock(path.with_suffix(".lock")):
        if path.is_file():
            state = read_json(path)
            if state.get("tracking_uri") == tracking_uri(cfg):
                return state
        return start_pipeline(cfg, run_name="jobs outside a pipeline invocation")


# ----------------------------------------------------------------------------- jobs
class JobTracker:
    """Child run of one job. Every method is safe: failures are logged once, never raised.

    Attributes:
        run_id: the MLflow run id, or None if tracking is disabled or failed to start.
        failed: True once any tracking call failed (the job's files are unaffected).
    """

    def __init__(self, cfg: Config | None, rule: str = "", wildcards: Mapping[str, Any] | None = None,
                 extra_tags: Mapping[str, str] | None = None):
        self.run_id: str | None = None
        self.failed = False
        self.errors: list[str] = []
        self._client = None
        if cfg is None or not cfg.tracking.enabled:
            return
        self._safe("start run", self._start, cfg, rule, dict(wildcards or {}), dict(extra_tags or {}))

    @classmethod
    def disabled(cls) -> "JobTracker":
        return cls(None)

    def _start(self, cfg: Config, rule: str, wildcards: dict, extra_tags: dict) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        state = _pipeline_state(cfg)
        self._client = _client(state["tracking_uri"])
        wc = ",".join(f"{k}={v}" for k, v in sorted(wildcards.items()))
        tags = {
            MLFLOW_PARENT_RUN_ID: state["parent_run_id"],
            MLFLOW_RUN_NAME: f"{rule}[{wc}]" if wc else rule,
            "dko.kind": "job",
            "dko.rule": rule,
            "dko.wildcards": wc,
            "dko.config_hash": config_hash(cfg),
            "dko.git_commit": git_commit(),
            **{f"dko.wildcard.{k}": str(v) for k, v in wildcards.items()},
            **extra_tags,
        }
        run = _retry(self._client.create_run, state["experiment_id"], tags=tags)
        self.run_id = run.info.run_id
        for chunk in _chunks(_params(cfg), 100):
            _retry(self._client.log_batch, self.run_id, params=chunk)

    def _safe(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.failed = True
            message = f"MLflow tracking failed to {what}: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            log.error("%s (results on disk are unaffected)", message)
            return None

    @property
    def active(self) -> bool:
        return self.run_id is not None and self._client is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics in one batch (non-finite and non-numeric values are skipped)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if value == value and abs(value) != float("inf"):
                batch.append(Metric(key, value, now, int(step or 0)))
        for chunk in _chunks(batch, 500):
            self._safe("log metrics", _retry, self._client.log_batch, self.run_id, metrics=chunk)

    def metrics_callback(self, prefix: str = "") -> Callable[[int, Mapping[str, float]], None]:
        """A function ``on_metrics(step, metrics)`` for library training loops."""
        def on_metrics(step: int, metrics: Mapping[str, float]) -> None:
            self.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step)
        return on_metrics

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for chunk in _chunks(items, 100):
            self._safe("log params", _retry, self._client.log_batch, self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        for key, value in tags.items():
            self._safe("set tag", _retry, self._client.set_tag, self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder's files) into the run's artifacts."""
        if not self.active:
            return
        path = Path(path)
        if path.is_dir():
            self._safe("log artifacts", self._client.log_artifacts, self.run_id, str(path), artifact_path)
        elif path.is_file():
            self._safe("log artifact", self._client.log_artifact, self.run_id, str(path), artifact_path)
        else:
            log.warning("MLflow: artifact '%s' does not exist; not logged", path)

    def log_dict(self, obj: Mapping, artifact_file: str) -> None:
        if not self.active:
            return
        self._safe("log dict", self._client.log_dict, self.run_id, dict(obj), artifact_file)

    def close(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        if self.failed:
            self._safe("set tag", self._client.set_tag, self.run_id, "dko.tracking_errors", "; ".join(self.errors)[:5000])
        self._safe("terminate run", _retry, self._client.set_terminated, self.run_id, status=status)


# ----------------------------------------------------------------------------- benchmarks
BENCHMARK_EXPERIMENT = "benchmarks"


def log_benchmark(name: str, metrics: Mapping[str, Any], params: Mapping[str, Any] | None = None,
                  files: Iterable[str | Path] = (), results_dir: str | Path = "results",
                  uri: str | None = None) -> str | None:
    """Log one benchmark run (scripts in ``benchmarks/``) to the experiment ``benchmarks``.

    Args:
        name: run name, e.g. ``psf_throughput``.
        metrics: numeric results (non-numeric values are skipped).
        params: the benchmark's settings.
        files: result files (JSON, CSV, figures) logged as artifacts.
        results_dir: folder of the default sqlite store (``<results_dir>/mlflow.db``).
        uri: tracking URI overriding the default store (e.g. ``http://127.0.0.1:5000``).
    Returns:
        The run id, or None if tracking failed (logged as an error; the files on disk are unaffected).
    """
    from mlflow.entities import Metric, Param

    results = Path(results_dir).resolve()
    uri = uri or f"sqlite:///{(results / 'mlflow.db').as_posix()}"
    try:
        client = _client(uri)
        with _file_lock(results / ".mlflow.lock"):
            location = None if uri.startswith(("http://", "https://")) else (results / "mlartifacts").as_uri()
            experiment_id = _retry(_ensure_experiment, client, BENCHMARK_EXPERIMENT, location)
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        run = _retry(client.create_run, experiment_id,
                     tags={MLFLOW_RUN_NAME: name, "dko.kind": "benchmark", "dko.git_commit": git_commit()})
        now = int(time.time() * 1000)
        values = []
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                values.append(Metric(key, float(value), now, 0))
        settings = [Param(str(k), str(v)[:6000]) for k, v in (params or {}).items()]
        for chunk in _chunks(values, 500):
            _retry(client.log_batch, run.info.run_id, metrics=chunk)
        for chunk in _chunks(settings, 100):
            _retry(client.log_batch, run.info.run_id, params=chunk)
        for path in files:
            if Path(path).is_file():
                client.log_artifact(run.info.run_id, str(path))
        _retry(client.set_terminated, run.info.run_id, status="FINISHED")
        return run.info.run_id
    except Exception as exc:
        log.error("MLflow: logging benchmark %s failed: %s: %s (results on disk are unaffected)",
                  name, type(exc).__name__, exc)
        return None
