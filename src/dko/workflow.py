"""Glue between a Snakemake ``script:`` job and the library (no snakemake import here).

A rule's script builds nothing itself; it calls :func:`run_job` with the injected ``snakemake``
object and a ``main(job)`` function. :func:`run_job` validates the config into a typed
:class:`~dko.config.Config`, checks that the rule's ``params.config`` carries exactly the keys that
:func:`dko.catalogue.job_config_keys` declares for the job and hands ``main`` a view of the config in which every
other key raises :class:`~dko.config.UndeclaredConfigRead` (so a job cannot depend on a key whose change would not
rerun it; the keys it read are logged). It sends logging to the rule's log file, sets torch threads and the CPU
convolution backend (:func:`dko.runtime.configure_torch`) and seeds, resolves the device, opens the job's MLflow
child run, runs ``main`` and closes the run.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dko.catalogue import job_config_keys
from dko.config import Config, config_from_dict, declared_config, flatten, resolve_device, restrict_config
from dko.runtime import configure_torch
from dko.sweep import point_config
from dko.tracking import JobTracker

log = logging.getLogger("dko.workflow")


@dataclass
class Job:
    """What a rule's ``main`` gets: the job's typed view of the config, Snakemake's named lists, device and tracker."""

    cfg: Config
    rule: str
    input: Any
    output: Any
    params: Any
    wildcards: dict[str, str]
    log_path: Path | None
    threads: int
    device: Any
    tracker: JobTracker
    started_s: float = field(default_factory=time.time)
    _remove_after_success: list[Path] = field(default_factory=list)

    def remove_after_success(self, path: str | Path | None) -> None:
        """Delete ``path`` (a final checkpoint) once ``main`` returned and the job's tracking is closed.

        A job interrupted before that (Ctrl-C while plotting, say) leaves it, and its rerun resumes from it
        instead of training again. ``None`` is ignored.
        """
        if path is not None:
            self._remove_after_success.append(Path(path))


def configure_logging(log_path: str | Path | None, level: int = logging.INFO) -> None:
    """Log to ``log_path`` (created) and to stderr, replacing earlier handlers."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its "Retrying" lines: dko.tracking reports an outage once


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_params_config(rule: str, given: Any, expected: dict) -> None:
    """ValueError unless a rule's ``params.config`` equals the declared part of the job's config.

    The declaration (:mod:`dko.catalogue`) is what the job may read; params are what Snakemake compares to rerun it.
    """
    if given is None:
        raise ValueError(f"rule {rule} has no 'config' in its params: declare `config=JOB_CONFIG(\"{rule}\")` "
                         f"(workflow/rules/common.smk) so that Snakemake reruns the job when a key it reads changes")
    if dict(given) != expected:
        raise ValueError(f"rule {rule}: params.config holds {sorted(flatten(dict(given)))}, but the job reads "
                         f"{sorted(flatten(expected))} (dko.catalogue.job_config_keys); pass JOB_CONFIG(\"{rule}\")")


def run_job(smk: Any, main: Callable[[Job], Any]) -> Any:
    """Run ``main(job)`` for a Snakemake script job; see the module docstring."""
    log_path = Path(smk.log[0]) if len(smk.log) else None
    configure_logging(log_path)
    wildcards = {k: str(v) for k, v in smk.wildcards.items()}
    raw = point_config(smk.config, wildcards["point"]) if "point" in wildcards else smk.config
    full = config_from_dict(raw)
    declared = job_config_keys(smk.rule, wildcards, full)
    check_params_config(smk.rule, getattr(smk.params, "config", None), declared_config(full.to_dict(), declared))
    cfg, reads = restrict_config(full, declared, job=f"{smk.rule}[{','.join(f'{k}={v}' for k, v in wildcards.items())}]")
    threads = max(1, min(int(getattr(smk, "threads", 1) or 1), full.threads))
    configure_torch(threads)
    seed_everything(full.seed)
    device = resolve_device(full.device)
    tracker = JobTracker(full, rule=smk.rule, wildcards=wildcards)
    job = Job(cfg=cfg, rule=smk.rule, input=smk.input, output=smk.output, params=smk.params, wildcards=wildcards,
              log_path=log_path, threads=threads, device=device, tracker=tracker)
    log.info("rule %s %s on %s with %d thread(s)", smk.rule, wildcards or "", device, threads)
    try:
        result = main(job)
    except BaseException:
        log.exception("rule %s failed", smk.rule)
        if log_path is not None:
            tracker.log_artifact(log_path, "logs")
        tracker.close("FAILED")
        raise
    log.info("config keys read: %s", ", ".join(sorted(reads.read)) or "none")
    elapsed = time.time() - job.started_s
    tracker.log_metrics({"job_wall_s": elapsed})
    log.info("rule %s finished in %.1f s", smk.rule, elapsed)
    if log_path is not None:
        tracker.log_artifact(log_path, "logs")
    tracker.close("FINISHED")
    for path in job._remove_after_success:
        path.unlink(missing_ok=True)
    return result
