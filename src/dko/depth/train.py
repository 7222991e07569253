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
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from dko.budget import BudgetRecorder
from dko.data.format import Split, batch_to_tensors, load_split, read_meta
from dko.depth.checkpoint import load_monodepth2, save_depthnet
from dko.depth.collapse import CollapseMonitor
from dko.depth.evaluate import evaluate_predictor, model_predictor
from dko.depth.losses import kernel_roughness, multiscale_depth_loss
from dko.depth.model import DepthNet
from dko.io import atomic_path, write_csv
from dko.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CURVE_COLUMNS = ["step", "lr", "train_loss"] + [f"val_{m}" for m in METRIC_NAMES]
# train.* keys that do not change the trained weights (left out of the checkpoints' run keys)
BOOKKEEPING_TRAIN_KEYS = ("checkpoint_every", "log_every", "val_every", "collapse_check")


def global_rng_state(device: torch.device) -> dict:
    """The process-wide RNG states (torch, CUDA on ``device``, numpy, python) for a checkpoint."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}


def restore_global_rng_state(ckpt: dict, device: torch.device) -> None:
    """Restore what :func:`global_rng_state` saved into ``ckpt``."""
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
    np.random.set_state(ckpt["numpy_rng"])
    random.setstate(ckpt["python_rng"])


def read_checkpoint(path: Path, run_key: str) -> dict | None:
    """The training checkpoint at ``path`` if it is readable and was written for ``run_key``, else None.

    A corrupt checkpoint or one of other settings is logged and ignored (training starts over).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint means starting over
        log.warning("checkpoint %s unreadable (%s); starting from scratch", path, exc)
        return None
    if ckpt.get("run_key") != run_key:
        log.warning("checkpoint %s belongs to different settings; starting from scratch", path)
        return None
    return ckpt


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    Linear warm-up from 1/(warmup+1) to 1 over ``warmup_steps``; then ``cosine`` decays to 0 at
    ``total_steps``, ``step`` multiplies by 0.1 at 2/3 and 0.01 at 8/9 of the remaining steps, ``constant`` keeps 1.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 1.0 if t < 2 / 3 else (0.1 if t < 8 / 9 else 0.01)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"config key 'train.schedule': unknown schedule '{schedule}' (cosine, step, constant)")


def augment(images: torch.Tensor, depth: torch.Tensor, generator: torch.Generator, flip: bool,
            color_jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip (p = 0.5, image and depth together) and brightness / contrast / saturation
    jitter with factors uniform in [1 - s, 1 + s]. images (B, 3, H, W) in [0, 1], depth (B, 1, H, W); CPU
    tensors and a CPU generator, so the random stream does not depend on the training device."""
    b = images.shape[0]
    if flip:
        do = torch.rand(b, generator=generator) < 0.5
        images = torch.where(do[:, None, None, None], images.flip(-1), images)
        depth = torch.where(do[:, None, None, None], depth.flip(-1), depth)
    if color_jitter > 0:
        f = 1.0 + color_jitter * (2.0 * torch.rand(b, 3, generator=generator) - 1.0)
        bright, contrast, sat = (f[:, i].view(b, 1, 1, 1) for i in range(3))
        images = images * bright
        gray = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])
        images = (images - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
        gray = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])
        images = gray + (images - gray) * sat
        images = images.clamp(0.0, 1.0)
    return images, depth


class BatchOrder:
    """Epoch-wise random permutations of ``n`` images drawn from a numpy Generator (checkpointable)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.perm = self.rng.permutation(n)
        self.pos = 0
        self.epoch = 0

    def next(self) -> np.ndarray:
        idx = []
        while len(idx) < self.batch_size:
            if self.pos >= self.n:
                self.perm = self.rng.permutation(self.n)
                self.pos = 0
                self.epoch += 1
            take = min(self.batch_size - len(idx), self.n - self.pos)
            idx.extend(self.perm[self.pos:self.pos + take].tolist())
            self.pos += take
        return np.sort(np.asarray(idx))

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "perm": self.perm.copy(), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.perm, self.pos, self.epoch = np.asarray(state["perm"]), int(state["pos"]), int(state["epoch"])


def run_key(cfg) -> str:
    """Hash of the settings a checkpoint depends on (seed, data, network, train minus bookkeeping intervals)."""
    plain = cfg.to_dict()
    train = {k: v for k, v in plain["train"].items() if k not in BOOKKEEPING_TRAIN_KEYS}
    blob = json.dumps({"seed": plain["seed"], "data": plain["data"], "network": plain["network"], "train": train},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _valid_mask(depth: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (depth > 0) & (depth >= lo) & (depth <= hi)


def validate(model: DepthNet, split: Split, meta: Mapping, device: Any, batch_size: int = 16,
             predict_wrapper: Callable | None = None) -> dict[str, float]:
    """Eigen metrics of ``model`` on a split (no median scaling); restores the model's training mode.
    ``predict_wrapper`` (e.g. :meth:`dko.depth.collapse.CollapseMonitor.wrap`) wraps the model's predictor."""
    was_training = model.training
    try:
        predict = model_predictor(model, device)
        if predict_wrapper is not None:
            predict = predict_wrapper(predict)
        res = evaluate_predictor(predict, split, meta["protocol"], float(meta["min_depth_m"]),
                                 float(meta["max_depth_m"]), median_scaling=False, batch_size=batch_size)
    finally:
        model.train(was_training)
    return res["metrics"]


def train_electronic(cfg, data_dir: str | Path, out_dir: str | Path,
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
    from tqdm import tqdm

    from dko.config import resolve_device

    device = torch.device(device) if device is not None else resolve_device(cfg.device)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    meta = read_meta(data_dir)
    lo, hi = float(meta["min_depth_m"]), float(meta["max_depth_m"])
    train_split = load_split(data_dir, "train", mmap=False)
    val_split = load_split(data_dir, "val")
    if tc.batch_size > len(train_split):
        log.warning("train.batch_size %d exceeds the %d training images; batches repeat images", tc.batch_size,
                    len(train_split))
    monitor = CollapseMonitor(train_split.depth, val_split, meta, stage="stage 1", keys=f"train.lr ({tc.lr:g})",
                              enabled=tc.collapse_check)

    torch.manual_seed(cfg.seed)
    net = cfg.network
    model = DepthNet(net.blocks_per_stage, net.base_width, net.conv1_kernel, net.norm_mean, net.norm_std, lo, hi,
                     net.decoder_channels)
    if net.pretrained_dir is not None:
        load_monodepth2(model, net.pretrained_dir)
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: lr_factor(s, tc.steps, tc.warmup_steps, tc.schedule))
    order = BatchOrder(len(train_split), tc.batch_size, seed=cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    budget = BudgetRecorder("stage1", device)
    curves: list[dict] = []
    loss_sum, loss_n = 0.0, 0
    start_step = 0
    last_val: dict[str, float] = {}
    last_loss = float("nan")
    key = run_key(cfg)

    ckpt_path = out_dir / CHECKPOINT_FILE
    if ckpt_path.is_file():
        ckpt = read_checkpoint(ckpt_path, key)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimiser.load_state_dict(ckpt["optimiser"])
            scheduler.load_state_dict(ckpt["scheduler"])
            order.load_state_dict(ckpt["order"])
            aug_gen.set_state(ckpt["aug_rng"])
            restore_global_rng_state(ckpt, device)
            curves = list(ckpt["curves"])
            loss_sum, loss_n = ckpt["loss_acc"]
            budget.load_state_dict(ckpt["budget"])
            start_step = int(ckpt["step"])
            last_val, last_loss = dict(ckpt.get("last_val", {})), float(ckpt.get("last_loss", math.nan))
            log.info("resuming stage 1 from %s at step %d", ckpt_path, start_step)

    if budget.flops_per_step is None:  # counted on a copy, before the clock starts (not charged)
        probe = copy.deepcopy(model)
        x = torch.zeros(tc.batch_size, 3, int(meta["height"]), int(meta["width"]), device=device)
        gt = torch.full((tc.batch_size, 1, int(meta["height"]), int(meta["width"])), 0.5 * (lo + hi), device=device)

        def one_step():
            loss = multiscale_depth_loss(probe(x), gt, gt > 0, probe.depth_from_disp, tc.si_lambda)
            loss.backward()

        budget.measure_flops(one_step)
        del probe
    budget.start()

    def save_checkpoint(step: int) -> None:
        state = {
            "run_key": key, "step": step, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "order": order.state_dict(), "aug_rng": aug_gen.get_state(),
            **global_rng_state(device), "curves": curves,
            "loss_acc": (loss_sum, loss_n), "budget": budget.state_dict(), "last_val": last_val,
            "last_loss": last_loss,
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        write_csv(out_dir / "curves.csv", curves, CURVE_COLUMNS)

    bar = tqdm(total=tc.steps, initial=start_step, desc="stage1", unit="step", disable=not progress,
               mininterval=2.0)
    for step in range(start_step, tc.steps):
        with budget.step():
            idx = order.next()
            images, depth = batch_to_tensors(train_split.images[idx], train_split.depth[idx])
            images, depth = augment(images, depth, aug_gen, tc.flip, tc.color_jitter)
            images, depth = images.to(device, non_blocking=True), depth.to(device, non_blocking=True)
            valid = _valid_mask(depth, lo, hi)
            loss = multiscale_depth_loss(model(images), depth, valid, model.depth_from_disp, tc.si_lambda)
            if tc.conv1_smoothness:
                loss = loss + tc.conv1_smoothness * kernel_roughness(model.conv1.weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage 1 loss became {loss.item()} at step {step + 1} (lower train.lr?)")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            last_loss = float(loss.detach())
        loss_sum += last_loss
        loss_n += 1
        done = step + 1
        bar.update(1)
        row: dict[str, Any] = {}
        if done % tc.log_every == 0 or done == tc.steps:
            row.update(step=done, lr=optimiser.param_groups[0]["lr"], train_loss=loss_sum / loss_n)
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}")
            loss_sum, loss_n = 0.0, 0
            if on_metrics is not None:
                on_metrics(done, {"train_loss": row["train_loss"], "lr": row["lr"]})
        if done % tc.val_every == 0 or done == tc.steps:
            last_val = validate(model, val_split, meta, device, batch_size=max(tc.batch_size, 16),
                                predict_wrapper=monitor.wrap)
            row.update(step=done, **{f"val_{k}": v for k, v in last_val.items()})
            log.info("step %d: val %s", done, ", ".join(f"{k} {v:.4f}" for k, v in last_val.items()))
            if on_metrics is not None:
                on_metrics(done, {f"val_{k}": v for k, v in last_val.items()})
            monitor.check(done, done / tc.steps, last_val)  # raises TrainingCollapse before any model.pt
        if row:
            curves.append(row)
        if done % tc.checkpoint_every == 0 or done == tc.steps:  # the last one outlives the outputs below
            save_checkpoint(done)
    bar.close()
    budget.stop()

    model_path = save_depthnet(model.cpu(), out_dir / "model.pt", config=cfg.to_dict(), steps=tc.steps,
                               dataset={k: meta[k] for k in ("source", "protocol", "height", "width", "min_depth_m",
                                                            "max_depth_m") if k in meta})
    model.to(device)
    write_csv(out_dir / "curves.csv", curves, CURVE_COLUMNS)
    budget.extra.update(batch_size=tc.batch_size, image_height=int(meta["height"]), image_width=int(meta["width"]),
                        resumed_from_step=start_step)
    summary = budget.write(out_dir / "budget.json")
    if not keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return {"steps": tc.steps, "resumed_from_step": start_step, "final_train_loss": last_loss, "val": last_val,
            "budget": summary, "model_path": str(model_path),
            "checkpoint": str(ckpt_path) if keep_checkpoint and ckpt_path.is_file() else None}
