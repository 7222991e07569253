"""Dispatch ``prepare_dataset`` to the configured source; all sources write dko.data.format."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dko.config import Config

log = logging.getLogger(__name__)


def prepare_dataset(cfg: Config, out_dir: str | Path) -> dict:
    """Build the dataset folder ``out_dir`` (see :mod:`dko.data.format`) from ``cfg.data.source``.

    Returns a summary of numbers (counts, seconds, source-specific statistics) for tracking.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source = cfg.data.source
    if source == "synthetic":
        from dko.data.synthetic import prepare_synthetic as prepare
    elif source == "kitti":
        from dko.data.kitti import prepare_kitti as prepare
    elif source == "nyu":
        from dko.data.nyu import prepare_nyu as prepare
    else:
        raise ValueError(f"config key 'data.source': unknown dataset source '{source}'")
    summary = dict(prepare(cfg, out_dir) or {})
    summary.setdefault("prepare_s", time.perf_counter() - start)
    log.info("prepared %s dataset in %s (%.1f s)", source, out_dir, summary["prepare_s"])
    return summary
