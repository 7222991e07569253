"""Shared test fixtures."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]

# DKO_MAX_THREADS=N runs the whole suite with at most N torch threads: jobs through dko.runtime.configure_torch,
# this process by capping torch.set_num_threads (test modules set their own counts at import).
if os.environ.get("DKO_MAX_THREADS"):
    import torch

    from dko.runtime import max_threads

    _CAP, _set_num_threads = max_threads(), torch.set_num_threads
    torch.set_num_threads = lambda n: _set_num_threads(min(int(n), _CAP))
    torch.set_num_threads(_CAP)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Folder of the running interpreter (the project's venv): snakemake and mlflow live there."""
    return Path(sys.executable).parent
