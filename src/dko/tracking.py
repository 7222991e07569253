"""MLflow tracking: the only module of ``dko`` that imports mlflow.

Model (DESIGN.md section 6): one MLflow experiment per config ``experiment`` name; one **parent run
per pipeline invocation**, created once before any job starts (:func:`start_pipeline`, called from
the Snakefile's ``onstart``); one **child run per job** (:class:`JobTracker`), tagged with the rule,
its wildcards, the config hash and the git commit, with the resolved config as params. The compare job
also logs the headline ratios and per-model numbers on the parent run
(:meth:`JobTracker.log_parent_metrics`), so that the invocation's row of the runs table carries them; the
experiment carries the kind tag of a model-training experiment (:data:`EXPERIMENT_KIND`).

Robustness rules, from measurements on MLflow 3.x with sqlite (``shared/notes``):
- the store, the experiment and the parent run are created exactly once, under a file lock, before
  jobs run (concurrent first use of a fresh sqlite store breaks its schema migration);
- children pass ``experiment_id`` and the parent id explicitly (``set_experiment`` races);
- telemetry is disabled (its thread races under concurrency);
- every call retries on "database is locked"; a tracking failure is logged as an error and never
  raised into the job, whose results on disk are already written;
- an unreachable server costs seconds, not MLflow's minutes of HTTP back-off: :func:`probe_server`
  asks once, with a short timeout, and an outage is recorded in the state file so that every job of
  the invocation skips tracking with one warning (the next invocation probes again).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from dko.config import Config, config_hash, flatten
from dko.io import read_json, write_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

log = logging.getLogger(__name__)

STATE_FILE = "tracking/pipeline_run.json"
# The experiment's kind for MLflow's UI (ExperimentKind in its bundled JS; "custom_model_development" is
# "Machine learning": the runs table). Measured with 3.17.2 in headless Chromium: that UI's global "GenAI | Model
# training" switch (the URL's ?workflowType=..., default GenAI) overrides the tag, so the dashboard's address
# selects the mode itself (dko.dashboard.runs_url); the tag keeps the kind for UIs without the switch.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_RETRIES = 6
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")
PROBE_TIMEOUT_S = 3.0
# MLflow's defaults (7 retries, back-off factor 2, 120 s timeout) cost ~4 min per call to a dead server.
_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


# ----------------------------------------------------------------------------- locations
def tracking_uri(cfg: Config) -> str:
    """The configured tracking URI, or an absolute sqlite file ``<results_dir>/mlflow.db``."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    db = (Path(cfg.results_dir).resolve() / "mlflow.db").as_posix()
    return f"sqlite:///{db}"


def is_server(uri: str) -> bool:
    """True for an ``http(s)://`` tracking server (as opposed to a local store)."""
    return uri.startswith(("http://", "https://"))


def artifacts_location(cfg: Config) -> str | None:
    """Artifact root for a local sqlite store (``<results_dir>/mlartifacts``); None for a server."""
    uri = tracking_uri(cfg)
    if is_server(uri):
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


def _ssl_context() -> ssl.SSLContext | None:
    """The TLS settings MLflow itself honours (``MLFLOW_TRACKING_INSECURE_TLS``, ``..._SERVER_CERT_PATH``)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def probe_server(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the tracking server at ``uri`` answers (always None for a local store), else why not.

    One GET of ``<uri>/health`` with a short timeout and no retry. Any HTTP answer below 500 counts
    as reachable (a server behind authentication may answer 401); 5xx means a proxy without its server.
    """
    if not is_server(uri):
        return None
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=_ssl_context()):
            return None
    except urllib.error.HTTPError as exc:
        exc.close()
        return None if exc.code < 500 else f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # URLError (refused, DNS, TLS), socket timeout, malformed URL
        return f"{url} unreachable: {getattr(exc, 'reason', None) or exc}"


# ----------------------------------------------------------------------------- helpers
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if is_server(uri):  # bound the cost of a call to a server that goes away (explicit settings win)
        for name, value in _HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


def _brief(exc: Exception) -> str:
    """``Type: first line of the message`` (MLflow and SQLAlchemy messages run to many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


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
    """The id of experiment ``name`` (created, or restored if deleted), tagged with :data:`EXPERIMENT_KIND`.

    An existing experiment without the kind tag gets it; one whose kind was chosen (in the UI) keeps it.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def find_experiment(cfg: Config) -> str | None:
    """The id of the config's experiment in its local sqlite store, or None if the store or experiment does not
    exist yet (nothing is created). An existing experiment without the kind tag gets it (:func:`_ensure_experiment`
    rules), so that a store written before the tag existed carries the same kind.

    Raises:
        ValueError: ``tracking.uri`` names a server (the dashboard serves local stores only).
    """
    uri = tracking_uri(cfg)
    if is_server(uri):
        raise ValueError(f"config key 'tracking.uri': expected a local sqlite store, got the server '{uri}'")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    with _file_lock(Path(cfg.results_dir).resolve() / ".mlflow.lock"):
        client = _client(uri)
        experiment = _retry(client.get_experiment_by_name, cfg.experiment)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            return None
        return _retry(_ensure_experiment, client, cfg.experiment, artifacts_location(cfg))


def _params(cfg: Config) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in sorted(flatten(cfg.to_dict()).items())]


def metric_name(key: str) -> str:
    """``key`` with every character MLflow rejects in a metric name (anything but letters, digits, ``_ - . / :``
    and spaces) replaced by ``_``: a sweep point ``seed~1__optics.f~1e+01`` becomes ``seed_1__optics.f_1e_01``."""
    return _BAD_NAME_CHARS.sub("_", key)


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ----------------------------------------------------------------------------- pipeline
def start_pipeline(cfg: Config, *, run_name: str | None = None, tags: Mapping[str, str] | None = None,
                   invocation: bool = True) -> dict:
    """Create (once) the store and experiment, and a new parent run for this invocation.

    Writes ``<experiment_dir>/tracking/pipeline_run.json`` so that every job process finds the
    parent. Returns that state: ``tracking_uri``, ``experiment_id``, ``parent_run_id``, ``config_hash``
    and ``invocation_open``. When the store is out of reach (a server is probed once, briefly: see
    :func:`probe_server`) or the parent run cannot be created, nothing is raised: one warning is
    logged and the state records ``unavailable`` (reason, time) instead of the ids, so that jobs
    skip tracking at once instead of each waiting for MLflow's retries.

    Args:
        invocation: True for a pipeline invocation (the Snakefile's ``onstart``): its recorded outage
            holds until :func:`finish_pipeline`. False for a job outside an invocation: the next
            such job probes again.
    """
    uri = tracking_uri(cfg)
    reason = probe_server(uri)
    state = None
    if reason is None:
        try:
            state = _create_parent(cfg, uri, run_name, tags)
        except Exception as exc:  # tracking must never break the pipeline
            reason = _brief(exc)
    if state is None:
        state = {"tracking_uri": uri, "config_hash": config_hash(cfg), "unavailable": _outage(reason)}
    state["invocation_open"] = invocation
    write_json(state_path(cfg), state)
    if reason is None:
        log.info("MLflow: experiment %s (%s), parent run %s, store %s", cfg.experiment, state["experiment_id"],
                 state["parent_run_id"], uri)
    elif invocation:
        log.warning("MLflow tracking is off for this pipeline invocation: %s. Jobs skip tracking; results on disk "
                    "are unaffected; the next invocation tries again (recorded in %s)", reason, state_path(cfg))
    else:
        log.warning("MLflow tracking is off for this job: %s. Results on disk are unaffected; the next job "
                    "tries again (recorded in %s)", reason, state_path(cfg))
    return state


def _create_parent(cfg: Config, uri: str, run_name: str | None, tags: Mapping[str, str] | None) -> dict:
    """Store, experiment and parent run (under the store's lock); the state without ``invocation_open``."""
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
    return {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run.info.run_id,
            "config_hash": config_hash(cfg)}


def _outage(reason: str) -> dict:
    return {"reason": reason, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def record_outage(cfg: Config, reason: str) -> None:
    """Mark the current state ``unavailable`` (a server lost mid-run), so that later jobs skip tracking."""
    path = state_path(cfg)
    try:
        with _file_lock(path.with_suffix(".lock")):
            state = read_json(path) if path.is_file() else {}
            if state.get("tracking_uri") == tracking_uri(cfg) and "unavailable" not in state:
                write_json(path, {**state, "unavailable": _outage(reason)})
    except (OSError, ValueError) as exc:
        log.error("MLflow: could not record the outage in %s (%s)", path, exc)


def finish_pipeline(cfg: Config, status: str = "FINISHED") -> None:
    """Mark the current parent run FINISHED or FAILED and close the invocation (errors are logged, not raised).

    A recorded outage ends with the invocation: the next job outside an invocation probes again.
    """
    path = state_path(cfg)
    try:
        state = read_json(path)
    except ValueError as exc:
        log.error("MLflow: could not close the pipeline run (%s); results on disk are unaffected", exc)
        return
    try:
        reason = probe_server(state["tracking_uri"]) if "parent_run_id" in state else None
        if reason is not None:
            log.warning("MLflow: pipeline run %s left open: %s", state["parent_run_id"], reason)
        elif "parent_run_id" in state:
            _retry(_client(state["tracking_uri"]).set_terminated, state["parent_run_id"], status=status)
    except Exception as exc:  # tracking must never break the pipeline
        log.error("MLflow: could not close the pipeline run (%s); results on disk are unaffected", _brief(exc))
    try:
        write_json(path, {**state, "invocation_open": False})
    except OSError as exc:
        log.error("MLflow: could not update %s (%s)", path, exc)


def _current_state(path: Path, uri: str) -> dict | None:
    """The recorded state if it applies: same URI, and an outage only while its invocation runs."""
    if not path.is_file():
        return None
    state = read_json(path)
    if state.get("tracking_uri") != uri or ("unavailable" in state and not state.get("invocation_open")):
        return None
    return state


def _pipeline_state(cfg: Config) -> tuple[dict, bool]:
    """The current invocation's state, and whether this call created it (a job outside a pipeline, under a lock)."""
    path, uri = state_path(cfg), tracking_uri(cfg)
    state = _current_state(path, uri)
    if state is not None:
        return state, False
    with _file_lock(path.with_suffix(".lock")):
        state = _current_state(path, uri)
        if state is not None:
            return state, False
        return start_pipeline(cfg, run_name="jobs outside a pipeline invocation", invocation=False), True


# ----------------------------------------------------------------------------- jobs
def _metric_batch(metrics: Mapping[str, Any], step: int | None) -> list:
    """MLflow ``Metric`` entities for the finite numeric values of ``metrics`` (names through :func:`metric_name`)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if value == value and abs(value) != float("inf"):
            batch.append(Metric(metric_name(str(key)), value, now, int(step or 0)))
    return batch


class JobTracker:
    """Child run of one job. Every method is safe: failures are logged once, never raised.

    A tracking store out of reach (recorded by the invocation, or found by one short probe) costs one
    warning: the job then skips tracking. A server lost mid-job ends tracking for the rest of the job
    and is recorded for the jobs after it.

    Attributes:
        run_id: the MLflow run id, or None if tracking is disabled, off or failed to start.
        parent_run_id: the pipeline invocation's parent run (set with ``run_id``).
        failed: True once any tracking call failed or tracking is off (the job's files are unaffected).
    """

    def __init__(self, cfg: Config | None, rule: str = "", wildcards: Mapping[str, Any] | None = None,
                 extra_tags: Mapping[str, str] | None = None):
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.failed = False
        self.errors: list[str] = []
        self._client = None
        self._cfg = cfg
        self._uri: str | None = None
        if cfg is None or not cfg.tracking.enabled:
            return
        self._safe("start run", self._start, cfg, rule, dict(wildcards or {}), dict(extra_tags or {}))

    @classmethod
    def disabled(cls) -> "JobTracker":
        return cls(None)

    def _start(self, cfg: Config, rule: str, wildcards: dict, extra_tags: dict) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        state, created = _pipeline_state(cfg)
        if "unavailable" in state:
            self._skip(state, created)
            return
        self._uri = state["tracking_uri"]
        self._client = _client(self._uri)
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
        self.parent_run_id = state["parent_run_id"]
        for chunk in _chunks(_params(cfg), 100):
            _retry(self._client.log_batch, self.run_id, params=chunk)

    def _skip(self, state: dict, logged: bool) -> None:
        """Tracking is off for this job: one warning (unless :func:`start_pipeline` just gave it)."""
        self.failed = True
        outage = state["unavailable"]
        message = f"MLflow tracking is off for this job: {outage['reason']} (since {outage['since']})"
        self.errors.append(message)
        if not logged:
            log.warning("%s. Results on disk are unaffected; the next pipeline invocation tries again (recorded in "
                        "%s)", message, state_path(self._cfg))

    def _safe(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.failed = True
            message = f"MLflow tracking failed to {what}: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            reason = probe_server(self._uri) if self._uri else None
            if reason is None:
                log.error("%s (results on disk are unaffected)", message)
                return None
            self._client = None  # the server is gone: no further call in this job
            log.warning("MLflow tracking is off for the rest of this job: %s (while trying to %s). Results on disk "
                        "are unaffected", reason, what)
            record_outage(self._cfg, reason)
            return None

    @property
    def active(self) -> bool:
        return self.run_id is not None and self._client is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics in one batch (non-finite and non-numeric values are skipped)."""
        if not self.active:
            return
        for chunk in _chunks(_metric_batch(metrics, step), 500):
            self._safe("log metrics", _retry, self._client.log_batch, self.run_id, metrics=chunk)

    def log_parent_metrics(self, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Log numeric metrics on the pipeline's **parent** run (the compare job's headline numbers), so that the
        invocation's row of the runs table (and its run page) carries them.

        Args:
            metrics: ``{name: value}``; non-finite and non-numeric values are skipped.
            prefix: prepended to every name, e.g. ``"<sweep point>/"`` so that the points of a sweep, which share
                one parent run, do not overwrite each other (characters MLflow rejects become ``_``:
                :func:`metric_name`).
        """
        if not self.active or self.parent_run_id is None:
            return
        batch = _metric_batch({f"{prefix}{key}": value for key, value in metrics.items()}, step=0)
        for chunk in _chunks(batch, 500):
            self._safe("log parent metrics", _retry, self._client.log_batch, self.parent_run_id, metrics=chunk)

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
    reason = probe_server(uri)
    if reason is not None:
        log.warning("MLflow: benchmark %s not logged: %s (results on disk are unaffected)", name, reason)
        return None
    try:
        client = _client(uri)
        with _file_lock(results / ".mlflow.lock"):
            location = None if is_server(uri) else (results / "mlartifacts").as_uri()
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
