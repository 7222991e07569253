"""Stage 1: supervised training of the electronic depth CNN, resumable after a kill.

:func:`train_electronic` trains :class:`dko.depth.model.DepthNet` on a prepared dataset folder with the
scale-invariant log loss over all decoder scales, AdamW with linear warm-up and a cosine / step /
constant schedule, random horizontal flips and colour jitter. Every ``train.checkpoint_every`` steps it
atomically writes ``out_dir/checkpoint.pt`` with the model, optimiser, scheduler, every RNG state
(torch, numpy, python, data order, augmentation), the curves so far and the budget so far; a rerun
with the same settings resumes from it and ends with the same weights as an uninterrupted run
(bit-identical on the same device and thread count). The last checkpoint, after the final step, is written
before the outputs, so an interruption while they (or a caller's plots) are written costs no retraining.
Outputs in ``out_dir``: ``model.pt`` (final weights, architecture and config), ``budget.json``
(:mod:`dko.budget`), ``curves.csv``. Every validation goes
through :class:`dko.depth.collapse.CollapseMonitor` (``train.collapse_check``): a collapsed network raises
:class:`dko.depth.collapse.TrainingCollapse` naming ``train.lr``, and no ``model.pt`` is written.

The loop itself (data order, augmentation, budget, FLOP probe, checkpoints, curves, validation) is
:class:`dko.depth.trainer.Trainer`, shared with E2E; this module is stage 1's :class:`_Stage1Task`.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Callable, Mapping

import torch

from dko.config import EXECUTION_KEYS, Config
from dko.depth.checkpoint import load_monodepth2, save_depthnet
from dko.depth.losses import kernel_roughness, multiscale_depth_loss
from dko.depth.model import DepthNet
from dko.depth.trainer import (BOOKKEEPING_TRAIN_KEYS, CHECKPOINT_FILE, BudgetPlan, Trainer, TrainingData,
                               TrainingTask, Validation, validate)
from dko.io import files_fingerprint
from dko.io import run_key as hash_run_key
from dko.metrics import METRIC_NAMES

__all__ = ["CHECKPOINT_FILE", "CURVE_COLUMNS", "BOOKKEEPING_TRAIN_KEYS", "lr_factor", "run_key", "train_electronic"]

log = logging.getLogger(__name__)

CURVE_COLUMNS = ["step", "lr", "train_loss"] + [f"val_{m}" for m in METRIC_NAMES]


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    Linear warm-up from 1/(warmup+1) to 1 over ``warmup_steps``; then ``cosine`` decays to 0 at
    ``total_steps``, ``step`` multiplies by 0.1 at 2/3 and 0.01 at 8/9 of the remaining steps, ``constant`` keeps 1
    (``train.schedule``; the schema allows only these three).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 1.0 if t < 2 / 3 else (0.1 if t < 8 / 9 else 0.01)
    return 1.0


def run_key(cfg: Config, data_dir: str | Path | None = None) -> str:
    """:func:`dko.io.run_key` of the whole configuration minus the execution keys and the bookkeeping intervals,
    and of the dataset's files (:func:`dko.io.files_fingerprint`)."""
    return hash_run_key(cfg.to_dict(), exclude=(*EXECUTION_KEYS, *BOOKKEEPING_TRAIN_KEYS),
                        extra={"inputs": files_fingerprint(data_dir)})


class _Stage1Task(TrainingTask):
    """Stage 1 in the :class:`Trainer`: a fresh (or Monodepth2-initialised) DepthNet, AdamW, the step schedule."""

    stage = "stage 1"
    curve_columns = CURVE_COLUMNS
    logged = {"train_loss": "train_loss", "lr": "lr"}

    def __init__(self, cfg: Config, data: TrainingData, device: torch.device):
        tc, net = cfg.train, cfg.network
        self.device = device
        self.lr_keys = f"train.lr ({tc.lr:g})"
        self.si_lambda, self.smoothness = tc.si_lambda, tc.conv1_smoothness
        torch.manual_seed(cfg.seed)
        self.model = DepthNet.from_config(net, data.depth_range, data.meta.get("source", "synthetic"))
        if net.pretrained_dir is not None:
            load_monodepth2(self.model, net.pretrained_dir)
        self.model.to(device).train()
        self.optimiser = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser, lambda s: lr_factor(s, tc.steps, tc.warmup_steps, tc.schedule))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])

    def flop_probe(self) -> Callable[[torch.Tensor, torch.Tensor], None]:
        probe = copy.deepcopy(self.model)

        def one_step(x: torch.Tensor, gt: torch.Tensor) -> None:
            loss = multiscale_depth_loss(probe(x), gt, gt > 0, probe.depth_from_disp, self.si_lambda)
            loss.backward()

        return one_step

    def train_step(self, step: int, images: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                   fraction: float) -> float:
        model = self.model
        loss = multiscale_depth_loss(model(images), depth, valid, model.depth_from_disp, self.si_lambda)
        if self.smoothness:
            loss = loss + self.smoothness * kernel_roughness(model.conv1.weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage 1 loss became {loss.item()} at step {step + 1} (lower train.lr?)")
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.scheduler.step()
        return float(loss.detach())

    def curve_values(self) -> dict:
        return {"lr": self.optimiser.param_groups[0]["lr"]}

    def validate(self, split, meta: Mapping, batch_size: int, predict_wrapper: Callable) -> dict[str, float]:
        return validate(self.model, split, meta, self.device, batch_size=batch_size, predict_wrapper=predict_wrapper)


def train_electronic(cfg: Config, data_dir: str | Path, out_dir: str | Path,
                     on_metrics: Callable[[int, Mapping[str, float]], None] | None = None,
                     device: str | torch.device | None = None, progress: bool = True,
                     keep_checkpoint: bool = False) -> dict:
    """Train (or resume training of) the electronic DepthNet.

    Args:
        cfg: :class:`dko.config.Config` (sections seed, network, train).
        data_dir: prepared dataset folder (``meta.json``, ``train/``, ``val/``).
        out_dir: output folder for ``checkpoint.pt`` (while running), ``model.pt``, ``budget.json``, ``curves.csv``.
        on_metrics: called as ``on_metrics(step, {"train_loss", "lr"})`` every ``log_every`` steps and
            ``on_metrics(step, {"val_abs_rel", ...})`` after each validation.
        device: torch device; default ``resolve_device(cfg.device)``.
        progress: show a tqdm bar.
        keep_checkpoint: keep the final checkpoint (written after the last step, before the outputs) for
            the caller to remove once everything after training is done too (a workflow job: see
            :meth:`dko.workflow.Job.remove_after_success`); a rerun finding it writes the outputs again
            without training. False: removed once the outputs are written.
    Returns:
        ``{"steps", "resumed_from_step", "final_train_loss", "val": {metric: value}, "budget": {...},
        "model_path", "checkpoint"}`` (``checkpoint``: path of the kept final checkpoint, or None).
    """
    from dko.config import resolve_device

    device = torch.device(device) if device is not None else resolve_device(cfg.device)
    out_dir = Path(out_dir)
    tc = cfg.train
    data = TrainingData.load(data_dir)
    task = _Stage1Task(cfg, data, device)
    trainer = Trainer(task, data, out_dir, run_key=run_key(cfg, data_dir), name="stage1", plan=BudgetPlan.steps(tc.steps),
                      batch_size=tc.batch_size, flip=tc.flip, color_jitter=tc.color_jitter, seed=cfg.seed,
                      log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
                      validation=Validation(every_steps=tc.val_every), collapse_check=tc.collapse_check)
    result = trainer.run(on_metrics, progress)
    model_path = save_depthnet(task.model.cpu(), out_dir / "model.pt", config=cfg.to_dict(), steps=tc.steps,
                               dataset=data.dataset_info())
    task.model.to(device)
    summary, kept = trainer.finish({}, keep_checkpoint)
    return {"steps": tc.steps, "resumed_from_step": result.resumed_from_step, "final_train_loss": result.last_loss,
            "val": result.val, "budget": summary, "model_path": str(model_path), "checkpoint": kept}
