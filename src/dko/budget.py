"""Compute-budget accounting for a training / optimisation stage (stage 1, DKO stage 2, E2E).

:class:`BudgetRecorder` measures, between ``start()`` and ``stop()`` (or as a context manager):

- ``wall_s``: wall-clock seconds (``time.perf_counter``);
- ``cpu_s``: CPU seconds of this process (``time.process_time``) plus those of finished child
  processes (``resource.getrusage(RUSAGE_CHILDREN)``); the fair measure on a shared machine;
- ``steps`` and ``step_wall_s`` / ``step_cpu_s`` (per-step means and the median step wall time) when
  the loop reports steps through :meth:`BudgetRecorder.step`;
- ``peak_rss_mb``: peak resident memory of this process (``ru_maxrss``; lifetime peak) and of its
  largest child;
- ``gpu_max_allocated_mb``: ``torch.cuda.max_memory_allocated`` since the start (CUDA only);
- ``flops_per_step``: counted once with :func:`count_flops` (``torch.utils.flop_counter``).

A resumed job carries the totals of its earlier segments through :meth:`state_dict` /
:meth:`load_state_dict`, so the written budget is the whole stage's cost. ``write(path)`` writes
``budget.json`` atomically.
"""

from __future__ import annotations

import logging
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from dko.io import write_json

log = logging.getLogger(__name__)


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _maxrss_mb(who: int) -> float:
    kb = resource.getrusage(who).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (forward and backward if ``fn`` runs both).

    Uses ``torch.utils.flop_counter.FlopCounterMode`` (counts matmuls / convolutions: 2 per MAC).
    ``fn`` should act on copies when side effects (BN statistics, optimiser steps) matter.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return int(mode.get_total_flops())


class BudgetRecorder:
    """Time / memory / FLOPs recorder of one stage; see the module docstring.

    Args:
        name: stage name written into the JSON (e.g. ``stage1``).
        device: torch device (or string) the stage runs on; GPU memory is recorded on CUDA.
    """

    def __init__(self, name: str, device: Any = "cpu"):
        self.name = name
        self.device = str(device)
        self.prior: dict[str, float] = {"wall_s": 0.0, "cpu_s": 0.0, "steps": 0, "segments": 0}
        self.flops_per_step: int | None = None
        self.extra: dict[str, Any] = {}
        self._step_wall: list[float] = []
        self._step_cpu: list[float] = []
        self._running = False
        self._t0 = self._c0 = 0.0
        self._wall = self._cpu = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "BudgetRecorder":
        if self._running:
            raise RuntimeError("BudgetRecorder already started")
        self._running = True
        self._t0 = time.perf_counter()
        self._c0 = time.process_time() + _children_cpu_s()
        if self._is_cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
        return self

    def stop(self) -> "BudgetRecorder":
        if self._running:
            self._wall = time.perf_counter() - self._t0
            self._cpu = time.process_time() + _children_cpu_s() - self._c0
            self._running = False
        return self

    def __enter__(self) -> "BudgetRecorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    # ------------------------------------------------------------------ steps
    @contextmanager
    def step(self) -> Iterator[None]:
        """Time one step: ``with recorder.step(): ...``. On CUDA the step is synchronised at its end."""
        t, c = time.perf_counter(), time.process_time()
        yield
        if self._is_cuda():
            import torch

            torch.cuda.synchronize(torch.device(self.device))
        self._step_wall.append(time.perf_counter() - t)
        self._step_cpu.append(time.process_time() - c)

    def add_step(self, wall_s: float, cpu_s: float) -> None:
        """Record one step timed by the caller (for loops that report steps through a callback)."""
        self._step_wall.append(float(wall_s))
        self._step_cpu.append(float(cpu_s))

    def measure_flops(self, fn: Callable[[], Any]) -> int:
        """Count FLOPs of one step with :func:`count_flops` and record them as ``flops_per_step``."""
        self.flops_per_step = count_flops(fn)
        return self.flops_per_step

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Totals so far (earlier segments plus this one up to now), for a checkpoint."""
        s = self.summary()
        return {"wall_s": s["wall_s"], "cpu_s": s["cpu_s"], "steps": s["steps"], "segments": s["segments"],
                "flops_per_step": self.flops_per_step}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's totals (a resumed job)."""
        self.prior = {"wall_s": float(state["wall_s"]), "cpu_s": float(state["cpu_s"]), "steps": int(state["steps"]),
                      "segments": int(state["segments"])}
        if state.get("flops_per_step") is not None and self.flops_per_step is None:
            self.flops_per_step = int(state["flops_per_step"])

    # ------------------------------------------------------------------ output
    def summary(self) -> dict:
        """The budget as a JSON-ready dict (see the module docstring for the keys)."""
        if self._running:
            wall = time.perf_counter() - self._t0
            cpu = time.process_time() + _children_cpu_s() - self._c0
        else:
            wall, cpu = self._wall, self._cpu
        steps_here = len(self._step_wall)
        steps = self.prior["steps"] + steps_here
        out: dict[str, Any] = {
            "name": self.name,
            "device": self.device,
            "wall_s": self.prior["wall_s"] + wall,
            "cpu_s": self.prior["cpu_s"] + cpu,
            "segments": self.prior["segments"] + 1,
            "segment_wall_s": wall,
            "segment_cpu_s": cpu,
            "steps": steps,
            "segment_steps": steps_here,
            "step_wall_s": statistics.fmean(self._step_wall) if steps_here else None,
            "step_wall_median_s": statistics.median(self._step_wall) if steps_here else None,
            "step_cpu_s": statistics.fmean(self._step_cpu) if steps_here else None,
            "peak_rss_mb": _maxrss_mb(resource.RUSAGE_SELF),
            "peak_rss_children_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
            "gpu_max_allocated_mb": None,
            "flops_per_step": self.flops_per_step,
            "flops_total": self.flops_per_step * steps if self.flops_per_step is not None else None,
            "host": platform.node(),
            "cpu_count": _cpu_count(),
        }
        if self._is_cuda():
            import torch

            out["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated(torch.device(self.device)) / 2**20
            out["gpu_name"] = torch.cuda.get_device_name(torch.device(self.device))
        try:
            import torch

            out["torch_threads"] = torch.get_num_threads()
        except ImportError:  # pragma: no cover
            pass
        out.update(self.extra)
        return out

    def write(self, path: str | Path) -> dict:
        """Write :meth:`summary` to ``path`` atomically and return it."""
        s = self.summary()
        write_json(path, s)
        log.info("budget %s: wall %.1f s, cpu %.1f s, %d steps, peak RSS %.0f MB, %s FLOPs/step", self.name,
                 s["wall_s"], s["cpu_s"], s["steps"], s["peak_rss_mb"],
                 f"{s['flops_per_step']:.3g}" if s["flops_per_step"] is not None else "?")
        return s


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def numeric(summary: dict, prefix: str = "budget_") -> dict[str, float]:
    """The numeric entries of a budget summary, prefixed, for ``log_metrics``."""
    return {f"{prefix}{k}": float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
