"""End-to-end (E2E) baselines at equal budget (DESIGN.md section 5).

The metasurface design variables ``p`` (E, N, N) are trained through the depth loss: every step simulates
all elements' PSFs from the current ``p`` with the one PSF model shared with DKO
(:func:`dko.frontend.element_psfs`), applies DKO's gain calibration (:func:`dko.frontend.calibrate_gains`,
``dko.gain_calibration``), passes the images through the opto-electronic conv1
(:class:`dko.opto_layer.OptoConv1`) and then through the rest of the depth network, with stage 1's loss
(:func:`dko.depth.losses.multiscale_depth_loss`), data order, augmentation and batch size.

Variants (``e2e.variants``):

* ``optics``: the stage-1 network is the frozen back-end (parameters fixed, BatchNorm in eval mode); the
  elements are those of its conv1 (:func:`dko.kernels.extract_kernel_bank`, the bank DKO fits); only ``p``
  is trained (Adam, ``e2e.lr_optics``); the electronic gains are the kernel bank's, calibrated on the
  realised PSFs exactly as in DKO's evaluation.
* ``scratch``: a fresh back-end (same architecture and initialisation seed as stage 1) trained jointly with
  the optics. There is no trained conv1, so the element layout is the full ``K x C x 2`` (every output
  channel, colour and sign; one wavelength per colour), taken from the *untrained* conv1 of the fresh
  network: its kernel split gives the initial electronic gains and folded bias, which are then learnable
  (AdamW at the back-end's rate, no weight decay); its designs use ``e2e.lr_optics_scratch``. Its ``targets`` are meaningless (recorded in the
  front end's ``info``).

Both start from DKO's initialisation (:func:`dko.frontend.initial_designs`: focusing lens plus
``dko.init_noise_std`` noise, seed ``seed``) and train at the design object distance
``optics.object_distances_m[0]`` (the image formation of the ``dko`` / ``e2e_*`` evaluations).

Budget (:func:`budget_plan`): ``e2e.budget = time`` stops when the job has used the compute DKO spent, read
from ``stage1/budget.json`` and ``dko/budget.json`` of the same run, on ``e2e.budget_basis`` (process CPU or
wall seconds); variant scratch gets stage 1 + stage 2, variant optics ``e2e.optics_budget``. Validation time
(``e2e.n_val`` validations, plus one before training) is not charged. ``e2e.budget = steps`` runs
``e2e.steps`` steps. The learning rates follow the fraction of the budget used (linear warm-up over
``e2e.warmup_fraction``, then cosine or constant).

Checkpoint / resume mirrors :func:`dko.depth.train.train_electronic`: every ``e2e.checkpoint_every`` steps
``out_dir/checkpoint.pt`` holds the networks, optimisers, RNG states, curves and budget so far; a rerun
resumes (bit-identical with a step budget; with a time budget the schedule depends on measured time).
Non-finite losses / gradients and losses above ``e2e.divergence_factor`` times the first logging window's
raise :class:`E2EDivergence`; a collapsed network (saturated or constant depth, or no better than the mean-depth
predictor after the warm-up, checked at every validation after step 0 by :class:`dko.depth.collapse.CollapseMonitor`,
``train.collapse_check``) raises :class:`dko.depth.collapse.TrainingCollapse` naming ``e2e.lr_backend`` /
``e2e.lr_optics``. Neither leaves a ``model.pt``.

Outputs in ``out_dir`` (``results/<exp>/e2e/<variant>/``): ``model.pt`` (the depth network, stage 1's format;
its conv1 is unused, the front end replaces it), ``frontend.npz`` (:func:`dko.frontend.save_frontend`),
``budget.json`` (:class:`dko.budget.BudgetRecorder` plus the budget plan and, as in DKO's, an estimate of the
PSF FFTs' FLOPs, which ``torch.utils.flop_counter`` does not count), ``curves.csv`` (:data:`CURVE_COLUMNS`;
``wall_s`` / ``cpu_s`` are the training seconds charged so far (validation excluded), ``*_total_s`` include
it, ``lr`` is the optics learning rate).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from dko.budget import BudgetRecorder
from dko.io import atomic_path, read_json, write_csv
from dko.metrics import METRIC_NAMES
from dko.opto_layer import KernelBank, OptoConv1

__all__ = ["VARIANTS", "CURVE_COLUMNS", "E2EDivergence", "budget_plan", "lr_factor", "E2EFrontEnd", "scratch_bank",
           "build_e2e", "e2e_step", "train_e2e", "run_key", "optics_lr"]

log = logging.getLogger(__name__)

VARIANTS = ("optics", "scratch")
CHECKPOINT_FILE = "checkpoint.pt"
CURVE_COLUMNS = (["step", "wall_s", "cpu_s", "wall_total_s", "cpu_total_s", "budget_used", "lr", "lr_backend",
                  "train_loss"] + [f"val_{m}" for m in METRIC_NAMES])


class E2EDivergence(FloatingPointError):
    """E2E training diverged (non-finite loss / gradient, or a loss blow-up)."""


# ----------------------------------------------------------------------------- budget
def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown E2E variant '{variant}' (config key 'e2e.variants' allows {list(VARIANTS)})")


def _budget_seconds(budget: Mapping, path: str, key: str) -> float:
    value = budget.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"budget file '{path}' has no valid '{key}' (got {value!r}); rerun that stage")
    return float(value)


def budget_plan(cfg, variant: str, stage1_budget: str | Path | Mapping | None = None,
                dko_budget: str | Path | Mapping | None = None) -> dict:
    """What one E2E variant may spend (see the module docstring).

    Args:
        cfg: :class:`dko.config.Config` (section ``e2e``).
        variant: ``optics`` or ``scratch``.
        stage1_budget, dko_budget: ``budget.json`` paths (or their dicts) of stage 1 and of DKO stage 2 (keys
            ``wall_s``, ``cpu_s``; the stage-2 file sums its shards). Needed for ``e2e.budget = time``.
    Returns:
        ``{"mode": "time"|"steps", "basis": "cpu"|"wall"|"steps", "limit": seconds or steps,
        "stages": [...], "stage_s": {stage: seconds on the basis}, "stage_wall_s", "stage_cpu_s", "scale"}``.
    """
    _check_variant(variant)
    e = cfg.e2e
    if e.budget == "steps":
        return {"mode": "steps", "basis": "steps", "limit": int(e.steps), "stages": [], "stage_s": {},
                "stage_wall_s": {}, "stage_cpu_s": {}, "scale": 1.0}
    if e.budget != "time":
        raise ValueError(f"config key 'e2e.budget' must be 'time' or 'steps', got {e.budget!r}")
    if e.budget_basis not in ("cpu", "wall"):
        raise ValueError(f"config key 'e2e.budget_basis' must be 'cpu' or 'wall', got {e.budget_basis!r}")
    if variant == "scratch" or e.optics_budget == "stage1+stage2":
        stages = ["stage1", "stage2"]
    elif e.optics_budget == "stage2":
        stages = ["stage2"]
    else:
        raise ValueError(f"config key 'e2e.optics_budget' must be 'stage2' or 'stage1+stage2', got {e.optics_budget!r}")
    files = {"stage1": stage1_budget, "stage2": dko_budget}
    wall, cpu = {}, {}
    for stage in stages:
        src = files[stage]
        if src is None:
            raise ValueError(f"e2e.budget = time needs the {stage} budget file ({'stage1' if stage == 'stage1' else 'dko'}"
                             "/budget.json)")
        where = str(src) if not isinstance(src, Mapping) else f"<{stage} budget>"
        data = src if isinstance(src, Mapping) else read_json(src)
        wall[stage] = _budget_seconds(data, where, "wall_s")
        cpu[stage] = _budget_seconds(data, where, "cpu_s")
    per = cpu if e.budget_basis == "cpu" else wall
    limit = float(e.budget_scale) * sum(per.values())
    return {"mode": "time", "basis": e.budget_basis, "limit": limit, "stages": stages, "stage_s": dict(per),
            "stage_wall_s": wall, "stage_cpu_s": cpu, "scale": float(e.budget_scale)}


def lr_factor(fraction: float, warmup_fraction: float, schedule: str) -> float:
    """Learning-rate multiplier at ``fraction`` (0..1) of the budget used.

    Linear warm-up from 0.05 to 1 over ``warmup_fraction``; then ``cosine`` decays to 0 at fraction 1 and
    ``constant`` keeps 1.
    """
    f = min(max(float(fraction), 0.0), 1.0)
    if warmup_fraction > 0 and f < warmup_fraction:
        return 0.05 + 0.95 * f / warmup_fraction
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = (f - warmup_fraction) / max(1e-12, 1.0 - warmup_fraction)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    raise ValueError(f"config key 'e2e.schedule': unknown schedule '{schedule}' (cosine, constant)")


def optics_lr(cfg, variant: str) -> float:
    """Adam learning rate of the design variables: ``e2e.lr_optics``, or ``e2e.lr_optics_scratch`` (when set)
    for variant scratch."""
    _check_variant(variant)
    if variant == "scratch" and cfg.e2e.lr_optics_scratch is not None:
        return float(cfg.e2e.lr_optics_scratch)
    return float(cfg.e2e.lr_optics)


# ----------------------------------------------------------------------------- the trainable front end
def scratch_bank(model, wavelengths_m: Sequence[float]) -> KernelBank:
    """Full ``K x C x 2`` element layout of an (untrained) DepthNet's conv1, elements ordered like
    :func:`dko.opto_layer.build_kernel_bank` (k, c, sign +, -). Gains / bias / targets come from the split of
    the given conv1; a part that happens to be all zero gets gain 0 and a centred delta target."""
    from dko.opto_layer import build_kernel_bank

    conv = model.conv1
    w = conv.weight.detach().to("cpu", torch.float32)
    bank = build_kernel_bank(w, model.norm_mean, model.norm_std, list(wavelengths_m), stride=int(conv.stride[0]),
                             padding=int(conv.padding[0]))
    k_out, c_in, k = bank.n_out, bank.n_in, bank.kernel_size
    if bank.n_elements == 2 * k_out * c_in:
        return bank
    # rare (a kernel part exactly zero): fill the missing slots so the layout is complete
    slots = {(int(o), int(i), float(s)): e for e, (o, i, s) in
             enumerate(zip(bank.out_channel.tolist(), bank.in_channel.tolist(), bank.sign.tolist()))}
    delta = torch.zeros(k, k)
    delta[k // 2, k // 2] = 1.0
    t, g, sg, oc, ic, wl = [], [], [], [], [], []
    for o in range(k_out):
        for i in range(c_in):
            for s in (1.0, -1.0):
                e = slots.get((o, i, s))
                t.append(bank.targets[e] if e is not None else delta)
                g.append(bank.gains[e] if e is not None else torch.tensor(0.0))
                sg.append(s)
                oc.append(o)
                ic.append(i)
                wl.append(float(wavelengths_m[i]))
    return KernelBank(targets=torch.stack(t), gains=torch.stack(g), sign=torch.tensor(sg),
                      out_channel=torch.tensor(oc), in_channel=torch.tensor(ic),
                      wavelength_m=torch.tensor(wl, dtype=torch.float64), bias=bank.bias, pad_value=bank.pad_value,
                      stride=bank.stride, padding=bank.padding, n_out=k_out, n_in=c_in)


class E2EFrontEnd(nn.Module):
    """Trainable optical conv1: design variables -> PSFs (every call) -> calibrated gains -> :class:`OptoConv1`.

    Args:
        bank: the elements (E); its gains / bias are the initial electronic gains / bias.
        p0: float (E, N, N) initial design variables (:func:`dko.frontend.initial_designs`).
        system: :class:`dko.optics.psf.OpticalSystem`; library: meta-atom library.
        object_distances_m: distances the PSFs are simulated at (index 0 is used without a depth map).
        gain_calibration: ``dko.gain_calibration`` (``total`` / ``window`` / ``none``).
        trainable_electronics: make the gains and bias parameters (variant scratch).
        sensor: optional :class:`dko.optics.sensor.SensorModel` for noisy forwards.
        parametrization: meaning of the design variables (``dko.parametrization``, as in DKO).
    Forward: raw images (B, C, H, W) in [0, 1] -> conv1 features (B, K, H_out, W_out).
    """

    def __init__(self, bank: KernelBank, p0: torch.Tensor, system, library,
                 object_distances_m: Sequence[float | None], *, gain_calibration: str = "total",
                 trainable_electronics: bool = False, sensor=None, parametrization: str = "phase"):
        super().__init__()
        self.bank = bank
        self.parametrization = parametrization
        self.system = system
        self.library = library
        self.object_distances_m = list(object_distances_m)
        self.gain_calibration = gain_calibration
        self.sensor = sensor
        self.p = nn.Parameter(p0.detach().to(torch.float32).clone())
        if trainable_electronics:
            self.kernel_gains = nn.Parameter(bank.gains.detach().clone().float())
            self.bias = nn.Parameter(bank.bias.detach().clone().float())
        else:
            self.register_buffer("kernel_gains", bank.gains.detach().clone().float())
            self.register_buffer("bias", bank.bias.detach().clone().float())

    def simulate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(psfs (D, E, P, P), efficiency (D, E))`` of the current designs (differentiable)."""
        from dko.frontend import element_psfs

        return element_psfs(self.p, self.bank, self.system, self.library, self.object_distances_m,
                            self.parametrization)

    def layer(self, psfs: torch.Tensor | None = None) -> OptoConv1:
        """The :class:`OptoConv1` of the current designs (or of ``psfs`` (D, E, P, P)); differentiable."""
        from dko.frontend import calibrate_gains

        if psfs is None:
            psfs = self.simulate()[0]
        psfs = psfs.to(torch.float32)
        gains = calibrate_gains(psfs[0], self.kernel_gains, self.bank.kernel_size, self.gain_calibration)
        b = self.bank
        bank = KernelBank(targets=b.targets, gains=gains, sign=b.sign, out_channel=b.out_channel,
                          in_channel=b.in_channel, wavelength_m=b.wavelength_m, bias=self.bias, pad_value=b.pad_value,
                          stride=b.stride, padding=b.padding, n_out=b.n_out, n_in=b.n_in)
        return OptoConv1(bank, psfs, self.object_distances_m, sensor=self.sensor)

    def forward(self, images: torch.Tensor, *, noise: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        layer = self.layer()
        if noise:
            return layer(images, noise=True, generator=generator, differentiable_noise=True)
        return layer(images, fused=True)


class _FixedFront(nn.Module):
    """``DepthNet.front`` for validation: a fixed (detached) layer, noise-free, fused."""

    def __init__(self, layer: OptoConv1):
        super().__init__()
        self.layer = layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layer(images, fused=True)


# ----------------------------------------------------------------------------- setup
def _library(cfg, library_path: str | Path | None):
    from dko.optics.metaatoms import MetaAtomLibrary

    return MetaAtomLibrary.load(library_path) if library_path is not None else MetaAtomLibrary.default()


def build_e2e(cfg, variant: str, *, meta: Mapping, stage1_model: str | Path | None = None,
              library_path: str | Path | None = None, device: Any = "cpu") -> tuple[nn.Module, E2EFrontEnd]:
    """The depth network and trainable front end of one variant, initialised (see the module docstring).

    Args:
        cfg: :class:`dko.config.Config`.
        variant: ``optics`` (needs ``stage1_model``) or ``scratch``.
        meta: dataset ``meta.json`` (depth range).
        stage1_model: stage-1 ``model.pt`` (the frozen back-end and the kernel bank of variant optics).
        library_path: meta-atom ``library.npz`` (default: the shipped table).
    Returns:
        ``(model, front)`` on ``device``; ``model.front`` is None (call ``model.forward_from_conv1(front(x))``).
    """
    from dko.depth.checkpoint import load_depthnet
    from dko.depth.model import DepthNet
    from dko.frontend import initial_designs
    from dko.kernels import extract_kernel_bank
    from dko.optics.psf import OpticalSystem
    from dko.optics.sensor import SensorModel

    _check_variant(variant)
    wavelengths = list(cfg.optics.wavelengths_m)
    if variant == "optics":
        if stage1_model is None:
            raise ValueError("E2E variant 'optics' needs the stage-1 model (stage1/model.pt)")
        model, _ = load_depthnet(stage1_model, "cpu")
        bank = extract_kernel_bank(model, wavelengths)
        model.requires_grad_(False)
        model.eval()
    else:
        torch.manual_seed(cfg.seed)  # the initialisation of stage 1
        net = cfg.network
        model = DepthNet(net.blocks_per_stage, net.base_width, net.conv1_kernel, net.norm_mean, net.norm_std,
                         float(meta["min_depth_m"]), float(meta["max_depth_m"]), net.decoder_channels)
        model.train()
        bank = scratch_bank(model, wavelengths)
    bank = bank.to(device)
    system = OpticalSystem.from_config(cfg.optics)
    library = _library(cfg, library_path)
    p0 = initial_designs(bank, system, library, noise_std=float(cfg.dko.init_noise_std), seed=int(cfg.seed),
                         focus_distance_m=None, parametrization=cfg.dko.parametrization)
    front = E2EFrontEnd(bank, p0, system, library, [cfg.optics.object_distances_m[0]],
                        gain_calibration=cfg.dko.gain_calibration, trainable_electronics=(variant == "scratch"),
                        sensor=SensorModel.from_config(cfg.sensor), parametrization=cfg.dko.parametrization)
    return model.to(device), front.to(device)


def e2e_step(model: nn.Module, front: E2EFrontEnd, optimisers: Sequence[torch.optim.Optimizer], images: torch.Tensor,
             depth: torch.Tensor, valid: torch.Tensor, si_lambda: float, *, noise: bool = False,
             generator: torch.Generator | None = None, step: int = 0) -> float:
    """One E2E optimisation step (PSFs of all elements, opto conv1, back-end, loss, backward, update).

    Args:
        images: (B, 3, H, W) raw [0, 1]; depth: (B, 1, H, W) metres; valid: bool mask like depth.
    Returns:
        The loss (float). Raises :class:`E2EDivergence` on a non-finite loss or design gradient.
    """
    from dko.depth.losses import multiscale_depth_loss

    y = front(images, noise=noise, generator=generator)
    loss = multiscale_depth_loss(model.forward_from_conv1(y), depth, valid, model.depth_from_disp, si_lambda)
    if not torch.isfinite(loss):
        raise E2EDivergence(f"E2E loss became {float(loss.detach())} at step {step + 1}: lower e2e.lr_optics "
                            "(or e2e.lr_backend)")
    for opt in optimisers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    grad = front.p.grad
    if grad is None or not torch.isfinite(grad).all():
        raise E2EDivergence(f"non-finite gradient of the design variables at step {step + 1}: lower e2e.lr_optics")
    for opt in optimisers:
        opt.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------- bookkeeping
def _lr_keys(cfg, variant: str, lr_optics: float, lr_backend: float) -> str:
    """The learning-rate keys of one variant with their values, for error messages."""
    optics_key = "e2e.lr_optics_scratch" if variant == "scratch" and cfg.e2e.lr_optics_scratch is not None \
        else "e2e.lr_optics"
    optics = f"{optics_key} ({lr_optics:g})"
    if variant == "optics":
        return optics
    backend = f"e2e.lr_backend ({lr_backend:g}{', null: train.lr' if cfg.e2e.lr_backend is None else ''})"
    return f"{backend} or {optics}"


def run_key(cfg, variant: str, plan: Mapping) -> str:
    """Hash of everything a checkpoint depends on (minus bookkeeping intervals)."""
    from dko.depth.train import BOOKKEEPING_TRAIN_KEYS

    plain = cfg.to_dict()
    train = {k: v for k, v in plain["train"].items() if k not in BOOKKEEPING_TRAIN_KEYS}
    e2e = {k: v for k, v in plain["e2e"].items() if k not in ("checkpoint_every", "log_every", "variants")}
    blob = json.dumps({"variant": variant, "seed": plain["seed"], "data": plain["data"], "network": plain["network"],
                       "train": train, "optics": plain["optics"], "metaatoms": plain["metaatoms"],
                       "sensor": plain["sensor"], "dko": plain["dko"], "e2e": e2e,
                       "plan": {k: plan[k] for k in ("mode", "basis", "limit")}}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _validate(model, front: E2EFrontEnd, split, meta, device, batch_size: int,
              predict_wrapper: Callable | None = None) -> dict[str, float]:
    from dko.depth.train import validate

    with torch.no_grad():
        layer = front.layer()
        for name, buf in list(layer.named_buffers()):
            setattr(layer, name, buf.detach())
    model.front = _FixedFront(layer)
    try:
        return validate(model, split, meta, device, batch_size=batch_size, predict_wrapper=predict_wrapper)
    finally:
        model.front = None


def _save_outputs(cfg, variant: str, model, front: E2EFrontEnd, out_dir: Path, meta: Mapping, steps: int,
                  plan: Mapping) -> None:
    from dko.depth.checkpoint import save_depthnet
    from dko.frontend import array_layout, calibrate_gains, design_radius, radius_psfs, save_frontend
    from dko.stage2 import element_pitch_m, evaluation_distances

    model = model.cpu()
    model.front = None
    save_depthnet(model, out_dir / "model.pt", config=cfg.to_dict(), steps=steps,
                  dataset={k: meta[k] for k in ("source", "protocol", "height", "width", "min_depth_m", "max_depth_m")
                           if k in meta}, e2e={"variant": variant, "budget_mode": plan["mode"]})
    front = front.cpu()
    # the distances DKO stores (first: the design distance optics.object_distances_m[0], the one trained at)
    distances = evaluation_distances(cfg)
    with torch.no_grad():
        radius = design_radius(front.p, front.bank, front.library, front.parametrization)
        psfs, eff = radius_psfs(radius, front.bank, front.system, front.library, distances)
        psfs = psfs.float()
        gains = calibrate_gains(psfs[0], front.kernel_gains, front.bank.kernel_size, front.gain_calibration)
    b = front.bank
    bank = KernelBank(targets=b.targets, gains=front.kernel_gains.detach(), sign=b.sign, out_channel=b.out_channel,
                      in_channel=b.in_channel, wavelength_m=b.wavelength_m, bias=front.bias.detach(),
                      pad_value=b.pad_value, stride=b.stride, padding=b.padding, n_out=b.n_out, n_in=b.n_in)
    pitch = element_pitch_m(cfg)
    info = {"method": "e2e", "variant": variant, "steps": steps, "budget_mode": plan["mode"],
            "budget_basis": plan["basis"], "gain_calibration": front.gain_calibration,
            "targets": ("the stage-1 conv1 kernels" if variant == "optics"
                        else "split of the UNTRAINED conv1 of the fresh network (scratch has no target kernels)")}
    save_frontend(out_dir / "frontend.npz", radius_m=radius, psfs=psfs, object_distances_m=distances, efficiency=eff,
                  gains=gains, kernel_gains=front.kernel_gains.detach(), bank=bank,
                  element_centers_m=array_layout(bank, float(pitch)), system=front.system, info=info)


# ----------------------------------------------------------------------------- training
def train_e2e(cfg, variant: str, data_dir: str | Path, out_dir: str | Path, *, stage1_model: str | Path | None = None,
              stage1_budget: str | Path | Mapping | None = None, dko_budget: str | Path | Mapping | None = None,
              library_path: str | Path | None = None,
              on_metrics: Callable[[int, Mapping[str, float]], None] | None = None,
              device: str | torch.device | None = None, progress: bool = True, keep_checkpoint: bool = False) -> dict:
    """Train (or resume) one E2E variant within its budget; see the module docstring.

    Args:
        cfg: :class:`dko.config.Config`.
        variant: ``optics`` or ``scratch``.
        data_dir: prepared dataset folder (``meta.json``, ``train/``, ``val/``).
        out_dir: ``results/<exp>/e2e/<variant>/``.
        stage1_model: stage-1 ``model.pt`` (variant optics).
        stage1_budget, dko_budget: ``budget.json`` of stage 1 and DKO stage 2 (time budget).
        library_path: meta-atom table (default: the shipped one).
        on_metrics: ``on_metrics(step, dict)`` after each logging window and validation (MLflow).
        device: torch device (default ``resolve_device(cfg.device)``).
        keep_checkpoint: keep the final checkpoint (written after training, before the outputs) for the
            caller to remove when its own work is done, as :func:`dko.depth.train.train_electronic` does.
    Returns:
        ``{"variant", "steps", "resumed_from_step", "final_train_loss", "val", "budget", "plan", "stopped_by",
        "checkpoint"}`` (``checkpoint``: path of the kept final checkpoint, or None).
    """
    from tqdm import tqdm

    from dko.config import resolve_device
    from dko.data.format import batch_to_tensors, load_split, read_meta
    from dko.depth.collapse import CollapseMonitor
    from dko.depth.train import (BatchOrder, _valid_mask, augment, global_rng_state, read_checkpoint,
                                 restore_global_rng_state)
    from dko.stage2 import psf_fft_flops

    _check_variant(variant)
    device = torch.device(device) if device is not None else resolve_device(cfg.device)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    e, tc = cfg.e2e, cfg.train
    plan = budget_plan(cfg, variant, stage1_budget, dko_budget)
    meta = read_meta(data_dir)
    lo, hi = float(meta["min_depth_m"]), float(meta["max_depth_m"])
    train_split = load_split(data_dir, "train", mmap=False)
    val_split = load_split(data_dir, "val")
    log.info("E2E %s: budget %s", variant, json.dumps(plan))

    model, front = build_e2e(cfg, variant, meta=meta, stage1_model=stage1_model, library_path=library_path,
                             device=device)
    lr_backend = float(e.lr_backend if e.lr_backend is not None else tc.lr)
    lr_optics = optics_lr(cfg, variant)
    monitor = CollapseMonitor(train_split.depth, val_split, meta, stage=f"E2E {variant}",
                              keys=_lr_keys(cfg, variant, lr_optics, lr_backend), enabled=tc.collapse_check)
    opt_optics = torch.optim.Adam([front.p], lr=lr_optics)
    optimisers: list[torch.optim.Optimizer] = [opt_optics]
    opt_backend = None
    if variant == "scratch":
        opt_backend = torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": tc.weight_decay},
                                         {"params": [front.kernel_gains, front.bias], "weight_decay": 0.0}],
                                        lr=lr_backend)
        optimisers.append(opt_backend)
    order = BatchOrder(len(train_split), tc.batch_size, seed=cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    budget = BudgetRecorder(f"e2e_{variant}", device)
    curves: list[dict] = []
    loss_sum, loss_n = 0.0, 0
    first_window: float | None = None
    val_time = {"wall_s": 0.0, "cpu_s": 0.0}
    next_val, start_step = 0, 0
    last_val: dict[str, float] = {}
    last_loss = float("nan")
    key = run_key(cfg, variant, plan)
    ckpt_path = out_dir / CHECKPOINT_FILE

    if ckpt_path.is_file():
        ckpt = read_checkpoint(ckpt_path, key)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            front.load_state_dict(ckpt["front"])
            for opt, state in zip(optimisers, ckpt["optimisers"]):
                opt.load_state_dict(state)
            order.load_state_dict(ckpt["order"])
            aug_gen.set_state(ckpt["aug_rng"])
            noise_gen.set_state(ckpt["noise_rng"])
            restore_global_rng_state(ckpt, device)
            curves = list(ckpt["curves"])
            loss_sum, loss_n = ckpt["loss_acc"]
            first_window = ckpt["first_window"]
            val_time = dict(ckpt["val_time"])
            next_val = int(ckpt["next_val"])
            budget.load_state_dict(ckpt["budget"])
            start_step = int(ckpt["step"])
            last_val, last_loss = dict(ckpt.get("last_val", {})), float(ckpt.get("last_loss", math.nan))
            log.info("resuming E2E %s from %s at step %d", variant, ckpt_path, start_step)

    h, w = int(meta["height"]), int(meta["width"])
    if budget.flops_per_step is None:  # counted on copies, before the clock starts (not charged)
        probe_model, probe_front = copy.deepcopy(model), copy.deepcopy(front)
        x = torch.zeros(tc.batch_size, 3, h, w, device=device)
        gt = torch.full((tc.batch_size, 1, h, w), 0.5 * (lo + hi), device=device)

        def one_step():
            from dko.depth.losses import multiscale_depth_loss

            y = probe_front(x, noise=e.train_noise, generator=torch.Generator(device=device).manual_seed(0))
            loss = multiscale_depth_loss(probe_model.forward_from_conv1(y), gt, gt > 0, probe_model.depth_from_disp,
                                         tc.si_lambda)
            loss.backward()

        budget.measure_flops(one_step)
        del probe_model, probe_front

    def used() -> tuple[float, dict]:
        """(budget used on the plan's basis, summary with validation excluded)."""
        s = budget.summary()
        train_wall, train_cpu = s["wall_s"] - val_time["wall_s"], s["cpu_s"] - val_time["cpu_s"]
        info = {"wall_s": train_wall, "cpu_s": train_cpu, "wall_total_s": s["wall_s"], "cpu_total_s": s["cpu_s"]}
        if plan["mode"] == "steps":
            return float(s["steps"]), info
        return (train_cpu if plan["basis"] == "cpu" else train_wall), info

    def fraction(value: float) -> float:
        return value / plan["limit"] if plan["limit"] > 0 else 1.0

    def do_validation(step: int, row: dict) -> dict[str, float]:
        t, c = time.perf_counter(), time.process_time()
        metrics = _validate(model, front, val_split, meta, device, batch_size=max(tc.batch_size, 16),
                            predict_wrapper=monitor.wrap)
        val_time["wall_s"] += time.perf_counter() - t
        val_time["cpu_s"] += time.process_time() - c
        row.update(step=step, **{f"val_{k}": v for k, v in metrics.items()})
        log.info("E2E %s step %d: val %s", variant, step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if on_metrics is not None:
            on_metrics(step, {f"val_{k}": v for k, v in metrics.items()})
        monitor.check(step, fraction(used()[0]), metrics)  # raises TrainingCollapse before any model.pt
        return metrics

    def save_checkpoint(step: int) -> None:
        state = {
            "run_key": key, "step": step, "model": model.state_dict(), "front": front.state_dict(),
            "optimisers": [opt.state_dict() for opt in optimisers], "order": order.state_dict(),
            "aug_rng": aug_gen.get_state(), "noise_rng": noise_gen.get_state(), **global_rng_state(device),
            "curves": curves,
            "loss_acc": (loss_sum, loss_n), "first_window": first_window, "val_time": val_time,
            "next_val": next_val, "budget": budget.state_dict(), "last_val": last_val, "last_loss": last_loss,
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        write_csv(out_dir / "curves.csv", curves, CURVE_COLUMNS)

    budget.start()
    step = start_step
    if next_val == 0:  # before training: the initialisation's accuracy (time 0)
        row = {"budget_used": 0.0, **used()[1]}
        last_val = do_validation(0, row)
        curves.append(row)
        next_val = 1
    total = plan["limit"]
    bar = tqdm(total=total if plan["mode"] == "steps" else round(total, 1), initial=min(used()[0], total),
               desc=f"e2e {variant}", unit="step" if plan["mode"] == "steps" else "s", disable=not progress,
               mininterval=2.0)
    stopped_by = "budget"
    while True:
        spent, _ = used()
        if spent >= total:
            break
        if plan["mode"] == "time" and e.max_steps is not None and step >= e.max_steps:
            stopped_by = "max_steps"
            break
        factor = lr_factor(fraction(spent), e.warmup_fraction, e.schedule)
        for g in opt_optics.param_groups:
            g["lr"] = lr_optics * factor
        if opt_backend is not None:
            for g in opt_backend.param_groups:
                g["lr"] = lr_backend * factor
        with budget.step():
            idx = order.next()
            images, depth = batch_to_tensors(train_split.images[idx], train_split.depth[idx])
            images, depth = augment(images, depth, aug_gen, tc.flip, tc.color_jitter)
            images, depth = images.to(device, non_blocking=True), depth.to(device, non_blocking=True)
            valid = _valid_mask(depth, lo, hi)
            last_loss = e2e_step(model, front, optimisers, images, depth, valid, tc.si_lambda, noise=e.train_noise,
                                 generator=noise_gen, step=step)
        step += 1
        loss_sum += last_loss
        loss_n += 1
        spent_now, times = used()
        frac = fraction(spent_now)
        bar.update(1 if plan["mode"] == "steps" else max(0.0, min(spent_now, total) - min(spent, total)))
        row: dict[str, Any] = {}
        finished = spent_now >= total or (plan["mode"] == "time" and e.max_steps is not None and step >= e.max_steps)
        if step % e.log_every == 0 or finished:
            window = loss_sum / loss_n
            row.update(step=step, budget_used=frac, lr=opt_optics.param_groups[0]["lr"],
                       lr_backend=opt_backend.param_groups[0]["lr"] if opt_backend is not None else "",
                       train_loss=window, **times)
            bar.set_postfix(loss=f"{window:.4f}")
            loss_sum, loss_n = 0.0, 0
            if on_metrics is not None:
                on_metrics(step, {"train_loss": window, "lr_optics": row["lr"], "budget_used": frac})
            if first_window is None:
                first_window = window
            elif e.divergence_factor is not None and window > e.divergence_factor * first_window:
                raise E2EDivergence(f"E2E {variant} diverged at step {step}: mean training loss {window:.4g} > "
                                    f"e2e.divergence_factor ({e.divergence_factor}) x the first window's "
                                    f"{first_window:.4g}; lower e2e.lr_optics{'_scratch' if variant == 'scratch' else ''} "
                                    f"({lr_optics}) or e2e.lr_backend")
        if finished or (next_val <= e.n_val and frac >= next_val / e.n_val):
            if not row:
                row.update(budget_used=frac, **times)
            last_val = do_validation(step, row)
            while next_val <= e.n_val and frac >= next_val / e.n_val:
                next_val += 1
        if row:
            curves.append(row)
        if step % e.checkpoint_every == 0 and not finished:
            save_checkpoint(step)
    bar.close()
    if step == start_step and start_step == 0:
        log.warning("E2E %s: the budget (%.3g %s) allowed no training step", variant, total, plan["basis"])
    if not curves or curves[-1].get("step") != step or "val_abs_rel" not in curves[-1]:
        row = {"budget_used": fraction(used()[0]), **used()[1]}
        last_val = do_validation(step, row)
        curves.append(row)
    budget.stop()
    save_checkpoint(step)  # outlives the outputs: an interruption while they are written costs no retraining

    _save_outputs(cfg, variant, model, front, out_dir, meta, step, plan)
    model.to(device)
    write_csv(out_dir / "curves.csv", curves, CURVE_COLUMNS)
    spent, times = used()
    fft_per_step = psf_fft_flops(front.system, front.bank.n_elements, len(front.object_distances_m))
    budget.extra.update(
        variant=variant, budget_mode=plan["mode"], budget_basis=plan["basis"], budget_limit=plan["limit"],
        budget_used=spent, budget_stages=plan["stages"], budget_stage_s=plan["stage_s"],
        budget_stage_wall_s=plan["stage_wall_s"], budget_stage_cpu_s=plan["stage_cpu_s"],
        budget_scale=plan["scale"], train_wall_s=times["wall_s"], train_cpu_s=times["cpu_s"],
        val_wall_s=val_time["wall_s"], val_cpu_s=val_time["cpu_s"], stopped_by=stopped_by,
        lr_optics=lr_optics, lr_backend=lr_backend if variant == "scratch" else None, train_noise=e.train_noise,
        n_elements=front.bank.n_elements, n_superpixels=front.system.n_superpixels, batch_size=tc.batch_size,
        image_height=h, image_width=w, resumed_from_step=start_step,
        flops_note="flops_*: torch.utils.flop_counter (matmuls / convolutions); the PSF FFTs are estimated in fft_flops_*",
        fft_flops_per_step_est=fft_per_step, fft_flops_total_est=fft_per_step * step,
        final_val={k: v for k, v in last_val.items()})
    summary = budget.write(out_dir / "budget.json")
    if not keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return {"variant": variant, "steps": step, "resumed_from_step": start_step, "final_train_loss": last_loss,
            "val": last_val, "budget": summary, "plan": plan, "stopped_by": stopped_by,
            "checkpoint": str(ckpt_path) if keep_checkpoint and ckpt_path.is_file() else None}


# ----------------------------------------------------------------------------- evaluation
def _register() -> None:
    from dko.depth.evaluate import register_predictor

    def builder(noise: bool):
        def build(ctx):
            from dko.frontend import build_opto_predictor

            return build_opto_predictor(ctx, noise=noise, layered=False)
        return build

    for variant in VARIANTS:
        register_predictor(f"e2e_{variant}")(builder(False))
        register_predictor(f"e2e_{variant}_noisy")(builder(True))


_register()
