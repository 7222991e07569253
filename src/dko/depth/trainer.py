"""The one resumable training loop of the depth networks: stage 1 and both E2E variants.

:class:`Trainer` owns what every depth training does (as Monodepth2's ``Trainer`` is one place): the data order
(:class:`BatchOrder`), the images' decoding (linear light from sRGB codes, or code / 255:
:func:`dko.data.format.input_decoding`), augmentation (:func:`augment`) and validity mask of a batch, the budget
(a number of steps, or seconds on a CPU / wall basis with the validation time not charged: :class:`BudgetPlan`,
recorded by :class:`dko.budget.BudgetRecorder`), the FLOP probe (counted on copies before the clock starts, never
charged), periodic validation through :class:`dko.depth.collapse.CollapseMonitor` (raises
:class:`dko.depth.collapse.TrainingCollapse`), the divergence check (a logging window's mean loss above
``divergence_factor`` times the first window's), the training curves (``curves.csv``), atomic checkpoints every
``checkpoint_every`` steps and after the last one (:data:`CHECKPOINT_FILE`, resumed from when its run key matches:
:func:`dko.io.read_checkpoint`), and ``budget.json``.

What differs between the trainings is a :class:`TrainingTask`: its networks and optimisers, one optimisation step,
the FLOP probe's step, the validation, the learning-rate columns of the curves. The caller writes its outputs
between :meth:`Trainer.run` and :meth:`Trainer.finish` (the final checkpoint outlives them, so an interruption
while they are written costs no retraining).

Why ``dko.depth``: the loop trains a :class:`dko.depth.model.DepthNet` on a prepared depth dataset with the depth
loss and the depth collapse check; E2E (``dko.e2e``) only adds the optical front end inside its task, and the
import graph keeps pointing downwards (``dko.e2e`` -> ``dko.depth``).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from dko.budget import BudgetRecorder
from dko.data.format import Split, batch_to_tensors, input_decoding, load_split, read_meta
from dko.depth.collapse import CollapseMonitor
from dko.depth.evaluate import evaluate_predictor, model_predictor
from dko.io import atomic_path, read_checkpoint, write_csv
from dko.metrics import training_mask

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "BOOKKEEPING_TRAIN_KEYS", "TrainingDivergence", "TrainingData",
           "BudgetPlan", "Validation", "TrainingTask", "TrainingResult", "Trainer", "BatchOrder", "augment", "validate",
           "global_rng_state", "restore_global_rng_state"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "dko.trainstate/1"
BOOKKEEPING_TRAIN_KEYS = ("train.checkpoint_every", "train.log_every", "train.val_every", "train.collapse_check")
"""train.* keys that do not change the trained weights (left out of the checkpoints' run keys)."""


class TrainingDivergence(FloatingPointError):
    """A training diverged: a logging window's mean loss exceeded ``divergence_factor`` x the first window's."""


# ----------------------------------------------------------------------------- RNG, data order, augmentation
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


def validate(model, split: Split, meta: Mapping, device: Any, batch_size: int = 16,
             predict_wrapper: Callable | None = None) -> dict[str, float]:
    """Eigen metrics of a DepthNet ``model`` on a split (no median scaling); restores the model's training mode.
    ``predict_wrapper`` (e.g. :meth:`dko.depth.collapse.CollapseMonitor.wrap`) wraps the model's predictor.
    The images are decoded as the dataset's ``meta`` says (:func:`dko.data.format.input_decoding`)."""
    decoding = input_decoding(meta)
    was_training = model.training
    try:
        predict = model_predictor(model, device, decoding=decoding)
        if predict_wrapper is not None:
            predict = predict_wrapper(predict)
        res = evaluate_predictor(predict, split, meta["protocol"], float(meta["min_depth_m"]),
                                 float(meta["max_depth_m"]), median_scaling=False, batch_size=batch_size)
    finally:
        model.train(was_training)
    return res["metrics"]


# ----------------------------------------------------------------------------- what a training is made of
@dataclass
class TrainingData:
    """A prepared dataset folder's ``meta.json`` and its training (in memory) and validation splits."""

    meta: dict
    train: Split
    val: Split

    @classmethod
    def load(cls, data_dir: str | Path) -> "TrainingData":
        data_dir = Path(data_dir)
        meta = read_meta(data_dir)
        input_decoding(meta)  # a bad image_encoding fails here, before the training split is read
        return cls(meta, load_split(data_dir, "train", mmap=False), load_split(data_dir, "val"))

    @property
    def decoding(self) -> str:
        """How the stored images become the network's input (:func:`dko.data.format.input_decoding`)."""
        return input_decoding(self.meta)

    @property
    def depth_range(self) -> tuple[float, float]:
        """(min_depth_m, max_depth_m) of the dataset."""
        return float(self.meta["min_depth_m"]), float(self.meta["max_depth_m"])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.meta["height"]), int(self.meta["width"])

    def dataset_info(self) -> dict:
        """The ``meta.json`` entries a model file records (source, protocol, size, depth range), the image
        encoding and linear-light setting (defaults ``"linear"`` / true when ``meta.json`` predates them) and the
        ``input_decoding`` the network was trained with (``"none"`` or ``"srgb"``)."""
        info = {k: self.meta[k] for k in ("source", "protocol", "height", "width", "min_depth_m", "max_depth_m")
                if k in self.meta}
        info.update(image_encoding=self.meta.get("image_encoding", "linear"),
                    linear_light=self.meta.get("linear_light", True), input_decoding=self.decoding)
        return info


@dataclass(frozen=True)
class BudgetPlan:
    """What a training may spend: ``mode`` ``steps`` (``limit`` steps; ``basis`` ``steps``) or ``time`` (``limit``
    seconds of training on ``basis`` ``cpu`` / ``wall``, validation not charged; at most ``max_steps`` steps)."""

    mode: str
    basis: str
    limit: float
    max_steps: int | None = None

    @classmethod
    def steps(cls, n: int) -> "BudgetPlan":
        return cls("steps", "steps", int(n))


@dataclass(frozen=True)
class Validation:
    """When to validate: every ``every_steps`` steps, or at each of ``n_fractions`` equal fractions of the budget
    (neither: only at the end); always after the last step; ``initial``: also before the first (step 0, the
    initialisation's accuracy)."""

    every_steps: int | None = None
    n_fractions: int | None = None
    initial: bool = False


class TrainingTask:
    """One training's networks, optimisers and step (subclassed by stage 1 and E2E).

    Attributes:
        stage: name in messages (``stage 1``, ``E2E scratch``).
        lr_keys: the learning-rate config keys with their values, named by collapse / divergence errors.
        curve_columns: the columns of ``curves.csv`` (rows may hold more keys; they are not written).
        logged: curve column -> metric name passed to ``on_metrics`` after each logging window.
        device: the torch device of the networks.
    """

    stage: str = "training"
    lr_keys: str = ""
    curve_columns: Sequence[str] = ()
    logged: Mapping[str, str] = {"train_loss": "train_loss", "lr": "lr"}
    device: torch.device = torch.device("cpu")

    def state_dict(self) -> dict:
        """Networks, optimisers, schedulers and the task's own RNG states, for a checkpoint."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def flop_probe(self) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """A function ``(images (B, 3, H, W), depth (B, 1, H, W)) -> None`` running one step's forward and
        backward on copies of the networks (its FLOPs are counted; it must not change the training's state)."""
        raise NotImplementedError

    def train_step(self, step: int, images: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                   fraction: float) -> float:
        """One optimisation step at 0-based ``step`` with ``fraction`` (0..1) of the budget used before it;
        tensors on the device (depth in metres, ``valid`` bool like depth). Returns the loss; raises on a
        non-finite one."""
        raise NotImplementedError

    def curve_values(self) -> dict:
        """Learning-rate columns of the curves after a step (e.g. ``{"lr": ...}``)."""
        return {}

    def validate(self, split: Split, meta: Mapping, batch_size: int, predict_wrapper: Callable) -> dict[str, float]:
        """Eigen metrics on ``split`` through ``predict_wrapper`` (:func:`validate`)."""
        raise NotImplementedError


@dataclass
class TrainingResult:
    """What :meth:`Trainer.run` ends with: ``steps`` done in all, ``resumed_from_step``, ``last_loss`` (the last
    step's), ``val`` (the last validation's metrics), ``stopped_by`` (``budget`` / ``max_steps``), ``spent`` (on
    the plan's basis), ``times`` (training wall / cpu seconds, validation excluded, and totals), ``val_time``
    (validation wall / cpu seconds, not charged)."""

    steps: int
    resumed_from_step: int
    last_loss: float
    val: dict
    stopped_by: str
    spent: float
    times: dict = field(default_factory=dict)
    val_time: dict = field(default_factory=dict)


class Trainer:
    """The resumable training loop; see the module docstring.

    Args:
        task: the :class:`TrainingTask`.
        data: the :class:`TrainingData`.
        out_dir: folder of ``checkpoint.pt``, ``curves.csv``, ``budget.json``.
        run_key: :func:`dko.io.run_key` of the settings the weights depend on (a checkpoint of another is ignored).
        name: the budget's name (``stage1``, ``e2e_optics``) and the progress bar's.
        plan: the :class:`BudgetPlan`.
        batch_size, flip, color_jitter, seed: ``train.*`` (data order seeded ``seed``, augmentation ``seed + 1``).
        log_every, checkpoint_every: steps between logging windows / checkpoints.
        validation: the :class:`Validation` schedule.
        collapse_check: ``train.collapse_check``.
        divergence_factor, divergence_key, divergence_error: the divergence check (None: off), the config key
            named by its message and the exception class raised (a :class:`TrainingDivergence`).
    """

    def __init__(self, task: TrainingTask, data: TrainingData, out_dir: str | Path, *, run_key: str, name: str,
                 plan: BudgetPlan, batch_size: int, flip: bool, color_jitter: float, seed: int, log_every: int,
                 checkpoint_every: int, validation: Validation, collapse_check: bool,
                 divergence_factor: float | None = None, divergence_key: str = "",
                 divergence_error: type[TrainingDivergence] = TrainingDivergence):
        self.task, self.data, self.plan = task, data, plan
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out_dir / CHECKPOINT_FILE
        self.key, self.name = run_key, name
        self.device = torch.device(task.device)
        self.batch_size, self.flip, self.color_jitter = int(batch_size), bool(flip), float(color_jitter)
        self.log_every, self.checkpoint_every, self.validation = int(log_every), int(checkpoint_every), validation
        self.divergence_factor, self.divergence_key = divergence_factor, divergence_key
        self.divergence_error = divergence_error
        if self.batch_size > len(data.train):
            log.warning("train.batch_size %d exceeds the %d training images; batches repeat images", self.batch_size,
                        len(data.train))
        self.monitor = CollapseMonitor(data.train.depth, data.val, data.meta, stage=task.stage, keys=task.lr_keys,
                                       enabled=collapse_check)
        self.order = BatchOrder(len(data.train), self.batch_size, seed=seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 1)
        self.budget = BudgetRecorder(name, self.device)
        # the loop's state (checkpointed)
        self.step = self.start_step = 0
        self.curves: list[dict] = []
        self.loss_sum, self.loss_n = 0.0, 0
        self.first_window: float | None = None
        self.val_time = {"wall_s": 0.0, "cpu_s": 0.0}
        self.next_val = 0 if validation.initial else 1
        self.last_val: dict[str, float] = {}
        self.last_loss = float("nan")
        self.stopped_by = "budget"

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "run_key": self.key, "step": self.step, "task": self.task.state_dict(),
                "order": self.order.state_dict(), "aug_rng": self.aug_gen.get_state(),
                **global_rng_state(self.device), "curves": self.curves, "loss_acc": (self.loss_sum, self.loss_n),
                "first_window": self.first_window, "val_time": self.val_time, "next_val": self.next_val,
                "budget": self.budget.state_dict(), "last_val": self.last_val, "last_loss": self.last_loss}

    def save_checkpoint(self) -> None:
        """Write the checkpoint (atomically) and ``curves.csv`` so far."""
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(self._state(), tmp)
        self.write_curves()

    def write_curves(self) -> None:
        write_csv(self.out_dir / "curves.csv", self.curves, list(self.task.curve_columns))

    def resume(self) -> bool:
        """Continue from the checkpoint in ``out_dir`` if there is one of this run key; True if resumed."""
        ckpt = read_checkpoint(self.ckpt_path, self.key, CHECKPOINT_FORMAT)
        if ckpt is None:
            return False
        self.task.load_state_dict(ckpt["task"])
        self.order.load_state_dict(ckpt["order"])
        self.aug_gen.set_state(ckpt["aug_rng"])
        restore_global_rng_state(ckpt, self.device)
        self.curves = list(ckpt["curves"])
        self.loss_sum, self.loss_n = ckpt["loss_acc"]
        self.first_window = ckpt["first_window"]
        self.val_time = dict(ckpt["val_time"])
        self.next_val = int(ckpt["next_val"])
        self.budget.load_state_dict(ckpt["budget"])
        self.step = self.start_step = int(ckpt["step"])
        self.last_val, self.last_loss = dict(ckpt["last_val"]), float(ckpt["last_loss"])
        log.info("resuming %s from %s at step %d", self.task.stage, self.ckpt_path, self.start_step)
        return True

    # ------------------------------------------------------------------ budget
    def spent(self) -> float:
        """Budget used on the plan's basis: steps, or training seconds (validation excluded)."""
        if self.plan.mode == "steps":
            return float(self.step)
        s = self.budget.summary()
        basis = "cpu_s" if self.plan.basis == "cpu" else "wall_s"
        return s[basis] - self.val_time[basis]

    def times(self) -> dict:
        """Training wall / cpu seconds so far (validation excluded) and the totals (``*_total_s``)."""
        s = self.budget.summary()
        return {"wall_s": s["wall_s"] - self.val_time["wall_s"], "cpu_s": s["cpu_s"] - self.val_time["cpu_s"],
                "wall_total_s": s["wall_s"], "cpu_total_s": s["cpu_s"]}

    def fraction(self, spent: float) -> float:
        return spent / self.plan.limit if self.plan.limit > 0 else 1.0

    def _probe_flops(self) -> None:
        """FLOPs of one step, counted on copies before the clock starts (not charged); kept across a resume."""
        if self.budget.flops_per_step is not None:
            return
        probe = self.task.flop_probe()
        lo, hi = self.data.depth_range
        h, w = self.data.image_size
        x = torch.zeros(self.batch_size, 3, h, w, device=self.device)
        gt = torch.full((self.batch_size, 1, h, w), 0.5 * (lo + hi), device=self.device)
        self.budget.measure_flops(lambda: probe(x, gt))
        del probe

    # ------------------------------------------------------------------ validation, logging
    def _validate(self, row: dict, on_metrics: Callable | None) -> None:
        t, c = time.perf_counter(), time.process_time()
        metrics = self.task.validate(self.data.val, self.data.meta, max(self.batch_size, 16), self.monitor.wrap)
        self.val_time["wall_s"] += time.perf_counter() - t
        self.val_time["cpu_s"] += time.process_time() - c
        row.update(step=self.step, **{f"val_{k}": v for k, v in metrics.items()})
        log.info("%s step %d: val %s", self.task.stage, self.step,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if on_metrics is not None:
            on_metrics(self.step, {f"val_{k}": v for k, v in metrics.items()})
        # raises TrainingCollapse before any output is written
        self.monitor.check(self.step, self.fraction(self.spent()), metrics)
        self.last_val = metrics

    def _validation_due(self, frac: float, finished: bool) -> bool:
        v = self.validation
        if finished:
            return True
        if v.every_steps:
            return self.step % v.every_steps == 0
        return bool(v.n_fractions) and self.next_val <= v.n_fractions and frac >= self.next_val / v.n_fractions

    def _advance_validation(self, frac: float) -> None:
        n = self.validation.n_fractions
        while n and self.next_val <= n and frac >= self.next_val / n:
            self.next_val += 1

    def _log_window(self, row: dict, frac: float, on_metrics: Callable | None, bar) -> None:
        window = self.loss_sum / self.loss_n
        row.update(step=self.step, budget_used=frac, **self.task.curve_values(), train_loss=window, **self.times())
        bar.set_postfix(loss=f"{window:.4f}")
        self.loss_sum, self.loss_n = 0.0, 0
        if on_metrics is not None:
            on_metrics(self.step, {name: row[col] for col, name in self.task.logged.items()})
        if self.first_window is None:
            self.first_window = window
        elif self.divergence_factor is not None and window > self.divergence_factor * self.first_window:
            raise self.divergence_error(
                f"{self.task.stage} diverged at step {self.step}: mean training loss {window:.4g} > "
                f"{self.divergence_key} ({self.divergence_factor}) x the first window's {self.first_window:.4g}; "
                f"lower {self.task.lr_keys}")

    def _finished(self, spent: float) -> bool:
        return spent >= self.plan.limit or (self.plan.max_steps is not None and self.step >= self.plan.max_steps)

    # ------------------------------------------------------------------ the loop
    def run(self, on_metrics: Callable[[int, Mapping[str, float]], None] | None = None,
            progress: bool = True) -> TrainingResult:
        """Resume if possible, train until the budget is spent, validate the last step, write the final checkpoint.

        ``on_metrics(step, values)`` is called after each logging window (:attr:`TrainingTask.logged`) and each
        validation (``val_<metric>``). Raises :class:`dko.depth.collapse.TrainingCollapse` or the divergence
        error; the checkpoint before stays (a rerun with other settings starts over, one with the check off
        resumes).
        """
        from tqdm import tqdm

        self.resume()
        self._probe_flops()
        task, plan = self.task, self.plan
        lo, hi = self.data.depth_range
        train = self.data.train
        decoding = self.data.decoding
        self.budget.start()
        if self.next_val == 0:  # before training: the initialisation's accuracy (time 0)
            row = {"budget_used": 0.0, **self.times()}
            self._validate(row, on_metrics)
            self.curves.append(row)
            self.next_val = 1
        total = plan.limit
        bar = tqdm(total=total if plan.mode == "steps" else round(total, 1), initial=min(self.spent(), total),
                   desc=self.name, unit="step" if plan.mode == "steps" else "s", disable=not progress, mininterval=2.0)
        while True:
            spent = self.spent()
            if spent >= total:
                break
            if plan.max_steps is not None and self.step >= plan.max_steps:
                self.stopped_by = "max_steps"
                break
            with self.budget.step():
                idx = self.order.next()
                images, depth = batch_to_tensors(train.images[idx], train.depth[idx], decoding)
                images, depth = augment(images, depth, self.aug_gen, self.flip, self.color_jitter)
                images, depth = images.to(self.device, non_blocking=True), depth.to(self.device, non_blocking=True)
                valid = training_mask(depth, lo, hi)
                self.last_loss = task.train_step(self.step, images, depth, valid, self.fraction(spent))
            self.step += 1
            self.loss_sum += self.last_loss
            self.loss_n += 1
            spent_now = self.spent()
            frac = self.fraction(spent_now)
            bar.update(1 if plan.mode == "steps" else max(0.0, min(spent_now, total) - min(spent, total)))
            finished = self._finished(spent_now)
            row: dict[str, Any] = {}
            if self.step % self.log_every == 0 or finished:
                self._log_window(row, frac, on_metrics, bar)
            if self._validation_due(frac, finished):
                if not row:
                    row.update(budget_used=frac, **self.times())
                self._validate(row, on_metrics)
                self._advance_validation(frac)
            if row:
                self.curves.append(row)
            if self.step % self.checkpoint_every == 0 and not finished:
                self.save_checkpoint()
        bar.close()
        if self.step == self.start_step == 0:
            log.warning("%s: the budget (%.3g %s) allowed no training step", task.stage, total, plan.basis)
        last = self.curves[-1] if self.curves else {}
        if last.get("step") != self.step or "val_abs_rel" not in last:
            row = {"budget_used": self.fraction(self.spent()), **self.times()}
            self._validate(row, on_metrics)
            self.curves.append(row)
        self.budget.stop()
        self.save_checkpoint()  # outlives the outputs: an interruption while they are written costs no retraining
        return TrainingResult(steps=self.step, resumed_from_step=self.start_step, last_loss=self.last_loss,
                              val=dict(self.last_val), stopped_by=self.stopped_by, spent=self.spent(),
                              times=self.times(), val_time=dict(self.val_time))

    def finish(self, extra: Mapping[str, Any], keep_checkpoint: bool) -> tuple[dict, str | None]:
        """After the caller wrote its outputs: ``curves.csv``, ``budget.json`` (the recorder's summary plus
        ``extra``, the batch size, image size and resumed-from step); the final checkpoint is removed unless
        ``keep_checkpoint`` (then the caller removes it once its own work is done: a rerun finding it writes the
        outputs again without training). Returns ``(budget summary, kept checkpoint path or None)``."""
        self.write_curves()
        h, w = self.data.image_size
        self.budget.extra.update(batch_size=self.batch_size, image_height=h, image_width=w,
                                 resumed_from_step=self.start_step)
        self.budget.extra.update(extra)
        summary = self.budget.write(self.out_dir / "budget.json")
        if not keep_checkpoint:
            self.ckpt_path.unlink(missing_ok=True)
        kept = str(self.ckpt_path) if keep_checkpoint and self.ckpt_path.is_file() else None
        return summary, kept
