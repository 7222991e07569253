"""End-to-end (E2E) baselines at equal budget (DESIGN.md section 5).

The metasurface design variables ``p`` (E, N, N) are trained through the depth loss: every step simulates
all elements' PSFs from the current ``p`` with the one PSF model shared with DKO
(:func:`dko.frontend.element_psfs`), applies DKO's gain calibration (:func:`dko.frontend.calibrate_gains`,
``dko.gain_calibration``), passes the images through the opto-electronic conv1
(:class:`dko.frontend.OptoConv1`) and then through the rest of the depth network, with stage 1's loss
(:func:`dko.depth.losses.multiscale_depth_loss`), data order, augmentation and batch size.

Variants (``e2e.variants``):

* ``optics``: the stage-1 network is the frozen back-end (parameters fixed, BatchNorm in eval mode); the
  elements are those of its conv1 (:func:`dko.frontend.extract_kernel_bank`, the bank DKO fits); only ``p``
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

The loop is stage 1's (:class:`dko.depth.trainer.Trainer`, with this module's ``_E2ETask``): every
``e2e.checkpoint_every`` steps ``out_dir/checkpoint.pt`` holds the networks, optimisers, RNG states, curves and
budget so far; a rerun resumes (bit-identical with a step budget; with a time budget the schedule depends on
measured time).
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
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from dko.catalogue import E2E_VARIANTS
from dko.config import EXECUTION_KEYS, Config, resolve_device
from dko.depth.checkpoint import load_depthnet, save_depthnet
from dko.depth.losses import multiscale_depth_loss
from dko.depth.model import DepthNet
from dko.depth.trainer import (BOOKKEEPING_TRAIN_KEYS, CHECKPOINT_FILE, BudgetPlan, Trainer, TrainingData,
                               TrainingDivergence, TrainingTask, Validation, validate)
from dko.frontend import (KernelBank, OptoConv1, array_layout, build_kernel_bank, calibrate_gains, design_radius,
                          element_pitch_m, element_psfs, evaluation_distances, extract_kernel_bank, initial_designs,
                          psf_fft_flops, radius_psfs, save_frontend)
from dko.io import files_fingerprint, read_json
from dko.io import run_key as hash_run_key
from dko.metrics import METRIC_NAMES
from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.psf import OpticalSystem
from dko.optics.sensor import SensorModel

__all__ = ["VARIANTS", "CHECKPOINT_FILE", "CURVE_COLUMNS", "E2EDivergence", "budget_plan", "lr_factor", "E2EFrontEnd",
           "scratch_bank", "build_e2e", "e2e_step", "train_e2e", "run_key", "optics_lr"]

log = logging.getLogger(__name__)

VARIANTS = E2E_VARIANTS  # the schema's values of e2e.variants (dko.catalogue)
CURVE_COLUMNS = (["step", "wall_s", "cpu_s", "wall_total_s", "cpu_total_s", "budget_used", "lr", "lr_backend",
                  "train_loss"] + [f"val_{m}" for m in METRIC_NAMES])


class E2EDivergence(TrainingDivergence):
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


def budget_plan(cfg: Config, variant: str, stage1_budget: str | Path | Mapping | None = None,
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
    # e2e.budget is "time" here; the schema holds e2e.budget_basis to cpu / wall, e2e.optics_budget to its two values
    stages = ["stage1", "stage2"] if variant == "scratch" or e.optics_budget == "stage1+stage2" else ["stage2"]
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
    t = (f - warmup_fraction) / max(1e-12, 1.0 - warmup_fraction)  # cosine (the schema allows only the two)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def optics_lr(cfg: Config, variant: str) -> float:
    """Adam learning rate of the design variables: ``e2e.lr_optics``, or ``e2e.lr_optics_scratch`` (when set)
    for variant scratch."""
    _check_variant(variant)
    if variant == "scratch" and cfg.e2e.lr_optics_scratch is not None:
        return float(cfg.e2e.lr_optics_scratch)
    return float(cfg.e2e.lr_optics)


# ----------------------------------------------------------------------------- the trainable front end
def scratch_bank(model, wavelengths_m: Sequence[float]) -> KernelBank:
    """Full ``K x C x 2`` element layout of an (untrained) DepthNet's conv1, elements ordered like
    :func:`dko.frontend.build_kernel_bank` (k, c, sign +, -). Gains / bias / targets come from the split of
    the given conv1; a part that happens to be all zero gets gain 0 and a centred delta target."""
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
    return bank.replace(targets=torch.stack(t), gains=torch.stack(g), sign=torch.tensor(sg),
                        out_channel=torch.tensor(oc), in_channel=torch.tensor(ic),
                        wavelength_m=torch.tensor(wl, dtype=torch.float64))


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
        return element_psfs(self.p, self.bank, self.system, self.library, self.object_distances_m,
                            self.parametrization)

    def layer(self, psfs: torch.Tensor | None = None) -> OptoConv1:
        """The :class:`OptoConv1` of the current designs (or of ``psfs`` (D, E, P, P)); differentiable."""
        if psfs is None:
            psfs = self.simulate()[0]
        psfs = psfs.to(torch.float32)
        gains = calibrate_gains(psfs[0], self.kernel_gains, self.bank.kernel_size, self.gain_calibration)
        return OptoConv1(self.bank.replace(gains=gains, bias=self.bias), psfs, self.object_distances_m,
                         sensor=self.sensor)

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
        model = DepthNet.from_config(cfg.network, (float(meta["min_depth_m"]), float(meta["max_depth_m"])),
                                     meta.get("source", "synthetic"))
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
E2E_BOOKKEEPING_KEYS = ("e2e.checkpoint_every", "e2e.log_every", "e2e.variants")
"""e2e.* keys that do not change a variant's training (left out of its checkpoints' run keys)."""


def _lr_keys(cfg: Config, variant: str, lr_optics: float, lr_backend: float) -> str:
    """The learning-rate keys of one variant with their values, for error messages."""
    optics_key = "e2e.lr_optics_scratch" if variant == "scratch" and cfg.e2e.lr_optics_scratch is not None \
        else "e2e.lr_optics"
    optics = f"{optics_key} ({lr_optics:g})"
    if variant == "optics":
        return optics
    backend = f"e2e.lr_backend ({lr_backend:g}{', null: train.lr' if cfg.e2e.lr_backend is None else ''})"
    return f"{backend} or {optics}"


def run_key(cfg: Config, variant: str, plan: Mapping, inputs: Sequence[str | Path | None] = ()) -> str:
    """:func:`dko.io.run_key` of the whole configuration minus the execution keys and the bookkeeping intervals,
    with the variant, the budget plan's mode, basis and limit, and the input files (dataset, stage-1 model,
    meta-atom table: :func:`dko.io.files_fingerprint`)."""
    return hash_run_key(cfg.to_dict(), exclude=(*EXECUTION_KEYS, *BOOKKEEPING_TRAIN_KEYS, *E2E_BOOKKEEPING_KEYS),
                        extra={"variant": variant, "plan": {k: plan[k] for k in ("mode", "basis", "limit")},
                               "inputs": files_fingerprint(*inputs)})


def _validate(model, front: E2EFrontEnd, split, meta, device, batch_size: int,
              predict_wrapper: Callable | None = None) -> dict[str, float]:
    with torch.no_grad():
        layer = front.layer()
        for name, buf in list(layer.named_buffers()):
            setattr(layer, name, buf.detach())
    model.front = _FixedFront(layer)
    try:
        return validate(model, split, meta, device, batch_size=batch_size, predict_wrapper=predict_wrapper)
    finally:
        model.front = None


def _save_outputs(cfg: Config, variant: str, model, front: E2EFrontEnd, out_dir: Path, dataset: Mapping, steps: int,
                  plan: Mapping) -> None:
    model = model.cpu()
    model.front = None
    save_depthnet(model, out_dir / "model.pt", config=cfg.to_dict(), steps=steps, dataset=dict(dataset),
                  e2e={"variant": variant, "budget_mode": plan["mode"]})
    front = front.cpu()
    # the distances DKO stores (first: the design distance optics.object_distances_m[0], the one trained at)
    distances = evaluation_distances(cfg)
    with torch.no_grad():
        radius = design_radius(front.p, front.bank, front.library, front.parametrization)
        psfs, eff = radius_psfs(radius, front.bank, front.system, front.library, distances)
        psfs = psfs.float()
        gains = calibrate_gains(psfs[0], front.kernel_gains, front.bank.kernel_size, front.gain_calibration)
    bank = front.bank.replace(gains=front.kernel_gains.detach(), bias=front.bias.detach())
    pitch = element_pitch_m(cfg)
    info = {"method": "e2e", "variant": variant, "steps": steps, "budget_mode": plan["mode"],
            "budget_basis": plan["basis"], "gain_calibration": front.gain_calibration,
            "targets": ("the stage-1 conv1 kernels" if variant == "optics"
                        else "split of the UNTRAINED conv1 of the fresh network (scratch has no target kernels)")}
    save_frontend(out_dir / "frontend.npz", radius_m=radius, psfs=psfs, object_distances_m=distances, efficiency=eff,
                  gains=gains, bank=bank,
                  element_centers_m=array_layout(bank, float(pitch)), system=front.system, info=info)


# ----------------------------------------------------------------------------- training
class _E2ETask(TrainingTask):
    """One E2E variant in the :class:`dko.depth.trainer.Trainer`: the designs (Adam) and, for scratch, the back-end
    and electronic gains (AdamW), their learning rates following the fraction of the budget used."""

    curve_columns = CURVE_COLUMNS
    logged = {"train_loss": "train_loss", "lr": "lr_optics", "budget_used": "budget_used"}

    def __init__(self, cfg: Config, variant: str, model: nn.Module, front: E2EFrontEnd, device: torch.device):
        e, tc = cfg.e2e, cfg.train
        self.model, self.front, self.device = model, front, device
        self.stage = f"E2E {variant}"
        self.lr_backend = float(e.lr_backend if e.lr_backend is not None else tc.lr)
        self.lr_optics = optics_lr(cfg, variant)
        self.lr_keys = _lr_keys(cfg, variant, self.lr_optics, self.lr_backend)
        self.warmup_fraction, self.schedule = e.warmup_fraction, e.schedule
        self.train_noise, self.si_lambda = e.train_noise, tc.si_lambda
        self.opt_optics = torch.optim.Adam([front.p], lr=self.lr_optics)
        self.optimisers: list[torch.optim.Optimizer] = [self.opt_optics]
        self.opt_backend = None
        if variant == "scratch":
            self.opt_backend = torch.optim.AdamW(
                [{"params": list(model.parameters()), "weight_decay": tc.weight_decay},
                 {"params": [front.kernel_gains, front.bias], "weight_decay": 0.0}], lr=self.lr_backend)
            self.optimisers.append(self.opt_backend)
        self.noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "front": self.front.state_dict(),
                "optimisers": [opt.state_dict() for opt in self.optimisers], "noise_rng": self.noise_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.front.load_state_dict(state["front"])
        for opt, opt_state in zip(self.optimisers, state["optimisers"], strict=True):
            opt.load_state_dict(opt_state)
        self.noise_gen.set_state(state["noise_rng"])

    def flop_probe(self) -> Callable[[torch.Tensor, torch.Tensor], None]:
        probe_model, probe_front = copy.deepcopy(self.model), copy.deepcopy(self.front)

        def one_step(x: torch.Tensor, gt: torch.Tensor) -> None:
            y = probe_front(x, noise=self.train_noise, generator=torch.Generator(device=self.device).manual_seed(0))
            loss = multiscale_depth_loss(probe_model.forward_from_conv1(y), gt, gt > 0, probe_model.depth_from_disp,
                                         self.si_lambda)
            loss.backward()

        return one_step

    def train_step(self, step: int, images: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                   fraction: float) -> float:
        factor = lr_factor(fraction, self.warmup_fraction, self.schedule)
        for g in self.opt_optics.param_groups:
            g["lr"] = self.lr_optics * factor
        if self.opt_backend is not None:
            for g in self.opt_backend.param_groups:
                g["lr"] = self.lr_backend * factor
        return e2e_step(self.model, self.front, self.optimisers, images, depth, valid, self.si_lambda,
                        noise=self.train_noise, generator=self.noise_gen, step=step)

    def curve_values(self) -> dict:
        return {"lr": self.opt_optics.param_groups[0]["lr"],
                "lr_backend": self.opt_backend.param_groups[0]["lr"] if self.opt_backend is not None else ""}

    def validate(self, split, meta: Mapping, batch_size: int, predict_wrapper: Callable) -> dict[str, float]:
        return _validate(self.model, self.front, split, meta, self.device, batch_size=batch_size,
                         predict_wrapper=predict_wrapper)


def train_e2e(cfg: Config, variant: str, data_dir: str | Path, out_dir: str | Path, *,
              stage1_model: str | Path | None = None, stage1_budget: str | Path | Mapping | None = None,
              dko_budget: str | Path | Mapping | None = None, library_path: str | Path | None = None,
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
    _check_variant(variant)
    device = torch.device(device) if device is not None else resolve_device(cfg.device)
    out_dir = Path(out_dir)
    e, tc = cfg.e2e, cfg.train
    plan = budget_plan(cfg, variant, stage1_budget, dko_budget)
    data = TrainingData.load(data_dir)
    log.info("E2E %s: budget %s", variant, json.dumps(plan))

    model, front = build_e2e(cfg, variant, meta=data.meta, stage1_model=stage1_model, library_path=library_path,
                             device=device)
    task = _E2ETask(cfg, variant, model, front, device)
    limits = BudgetPlan(plan["mode"], plan["basis"], plan["limit"],
                        max_steps=e.max_steps if plan["mode"] == "time" else None)
    trainer = Trainer(task, data, out_dir, run_key=run_key(cfg, variant, plan, (data_dir, stage1_model, library_path)), name=f"e2e_{variant}", plan=limits,
                      batch_size=tc.batch_size, flip=tc.flip, color_jitter=tc.color_jitter, seed=cfg.seed,
                      log_every=e.log_every, checkpoint_every=e.checkpoint_every,
                      validation=Validation(n_fractions=e.n_val, initial=True), collapse_check=tc.collapse_check,
                      divergence_factor=e.divergence_factor, divergence_key="e2e.divergence_factor",
                      divergence_error=E2EDivergence)
    result = trainer.run(on_metrics, progress)

    _save_outputs(cfg, variant, model, front, out_dir, data.dataset_info(), result.steps, plan)
    model.to(device)
    fft_per_step = psf_fft_flops(front.system, front.bank.n_elements, len(front.object_distances_m))
    times = result.times
    summary, kept = trainer.finish(dict(
        variant=variant, budget_mode=plan["mode"], budget_basis=plan["basis"], budget_limit=plan["limit"],
        budget_used=result.spent, budget_stages=plan["stages"], budget_stage_s=plan["stage_s"],
        budget_stage_wall_s=plan["stage_wall_s"], budget_stage_cpu_s=plan["stage_cpu_s"],
        budget_scale=plan["scale"], train_wall_s=times["wall_s"], train_cpu_s=times["cpu_s"],
        val_wall_s=result.val_time["wall_s"], val_cpu_s=result.val_time["cpu_s"],
        stopped_by=result.stopped_by, lr_optics=task.lr_optics,
        lr_backend=task.lr_backend if variant == "scratch" else None, train_noise=e.train_noise,
        n_elements=front.bank.n_elements, n_superpixels=front.system.n_superpixels,
        flops_note="flops_*: torch.utils.flop_counter (matmuls / convolutions); the PSF FFTs are estimated in fft_flops_*",
        fft_flops_per_step_est=fft_per_step, fft_flops_total_est=fft_per_step * result.steps,
        final_val=dict(result.val)), keep_checkpoint)
    return {"variant": variant, "steps": result.steps, "resumed_from_step": result.resumed_from_step,
            "final_train_loss": result.last_loss, "val": result.val, "budget": summary, "plan": plan,
            "stopped_by": result.stopped_by, "checkpoint": kept}
