"""Direct Kernel Optimization (stage 2): fit metasurface PSFs to conv1 kernel targets.

Core pieces (physics-agnostic: the PSF model is a callable, so any design parametrisation works):

* :func:`center_window` - crop / zero-pad a PSF stack to an odd ``w x w`` window around the axis.
* :func:`kernel_loss` - MSE between the sum-normalised PSF and the sum-normalised target, both in a
  window ``window_factor * k`` (rounded up to odd) so light outside the kernel is penalised, averaged
  over object distances, plus ``efficiency_weight * mean(1 - fraction of the light in the k x k window)``.
* :func:`optimize_designs` - Adam on the design variables with plateau early stop, NaN guard,
  optional checkpoint/resume and an ``on_metrics(step, dict)`` callback.
* :func:`fidelity_metrics` - per element: relative L2 error of the realised kernel (after the
  electronic gain is calibrated on the realised element) vs the target part, energy fraction inside
  the k x k window, normalised cross-correlation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from dko.io import atomic_path, read_checkpoint

__all__ = ["center_window", "kernel_loss", "optimize_designs", "fidelity_metrics", "OptimizationError"]

log = logging.getLogger(__name__)


class OptimizationError(RuntimeError):
    """The optimisation diverged (non-finite loss or gradient)."""


def center_window(psf: torch.Tensor, window: int) -> torch.Tensor:
    """Centre crop or zero-pad the last two (odd, square) dims of ``psf`` (..., P, P) to (..., w, w)."""
    p = psf.shape[-1]
    if psf.shape[-2] != p or p % 2 == 0 or window % 2 == 0:
        raise ValueError(f"PSF ({tuple(psf.shape[-2:])}) and window ({window}) must be square and odd")
    if window <= p:
        o = (p - window) // 2
        return psf[..., o:o + window, o:o + window]
    d = (window - p) // 2
    return F.pad(psf, (d, d, d, d))


def loss_window(kernel_size: int, window_factor: float) -> int:
    """Odd window size >= kernel_size: ``ceil(window_factor * k)`` rounded up to odd."""
    if window_factor < 1:
        raise ValueError(f"dko.window_factor must be >= 1, got {window_factor}")
    w = max(kernel_size, math.ceil(window_factor * kernel_size - 1e-9))
    return w if w % 2 else w + 1


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def kernel_loss(psfs: torch.Tensor, targets: torch.Tensor, *, window_factor: float = 2.0,
                efficiency: torch.Tensor | None = None, efficiency_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Stage-2 loss: relative shape MSE in the enlarged window + ``efficiency_weight * (1 - window fraction)``.

    Args:
        psfs: float (D, E, P, P) PSFs at D object distances (P odd), in units of the incident power
            (sum over the whole sensor plane = transmitted fraction).
        targets: float (E, k, k) non-negative target PSFs (k odd).
        window_factor: the shape comparison window is ``loss_window(k, window_factor)`` pixels wide.
        efficiency: optional (D, E) total transmitted fraction (reported only). The window fraction is
            ``sum(PSF in k x k)``, the fraction of the incident light that lands in the kernel window.
        efficiency_weight: weight of ``mean(1 - window fraction)``; 0 = the paper's loss.
    Returns:
        (scalar loss, {"shape": float, "window_fraction": float, "efficiency": float (nan if none)}).
    """
    k = targets.shape[-1]
    w = loss_window(k, window_factor)
    p = _normalise(center_window(psfs, w))
    t = _normalise(center_window(targets.to(psfs.dtype), w))
    # MSE normalised per element by mean(t^2): a relative squared error, of order 1 whatever k and w
    shape = ((p - t[None]).square().sum(dim=(-2, -1)) / t.square().sum(dim=(-2, -1))[None]).mean()
    in_k = center_window(psfs, k).sum(dim=(-2, -1))
    # fraction of the INCIDENT light: dividing by the transmitted power would reward scattering light
    # out of the simulated plane (measured: efficiency fell from 0.91 to 0.61)
    frac = in_k
    loss = shape + efficiency_weight * (1.0 - frac).mean() if efficiency_weight else shape
    eff = float(efficiency.detach().mean()) if efficiency is not None else float("nan")
    return loss, {"shape": float(shape.detach()), "window_fraction": float(frac.detach().mean()), "efficiency": eff}


CHECKPOINT_FORMAT = "dko.designstate/1"


def _matching_checkpoint(path: Path, shape: tuple, run_key: str | None) -> dict | None:
    """The checkpoint at ``path`` if it resumes designs of ``shape`` under ``run_key``
    (:func:`dko.io.read_checkpoint`), else None."""

    def unfit(state: dict) -> str | None:
        if tuple(state["p"].shape) != shape:
            return f"its designs have shape {tuple(state['p'].shape)}, these {shape}"
        if "best_p" not in state:
            return "it predates the best-design record"
        return None

    return read_checkpoint(path, run_key, CHECKPOINT_FORMAT, validate=unfit)


def optimize_designs(p0: torch.Tensor, targets: torch.Tensor,
                     psf_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]], *,
                     steps: int = 300, lr: float = 0.05, window_factor: float = 2.0,
                     efficiency_weight: float = 0.0, plateau_patience: int = 50, plateau_rel_tol: float = 1e-3,
                     checkpoint_path: str | Path | None = None, checkpoint_every: int = 100,
                     on_metrics: Callable[[int, dict], None] | None = None,
                     progress: bool = False, run_key: str | None = None,
                     checkpoint_extra: Callable[[], dict] | None = None,
                     on_resume: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Adam on design variables ``p`` (any shape, float) so that ``psf_fn(p)`` matches ``targets``.

    Args:
        p0: initial design variables (E, N, N) float (e.g. superpixel phases, or logits of pillar radii: :mod:`dko.frontend`).
        targets: (E, k, k) target PSFs.
        psf_fn: ``p -> (psfs (D, E, P, P), efficiency (D, E) or None)``, differentiable in ``p``.
        steps, lr: Adam schedule.
        plateau_patience, plateau_rel_tol: stop when the best loss has not improved by a relative
            ``plateau_rel_tol`` for ``plateau_patience`` steps (patience 0 disables).
        checkpoint_path: if given, (p, Adam state, step, history, best design, plateau counter) saved
            every ``checkpoint_every`` steps and at the end; an existing file is resumed from (one saved at
            the end returns its result without another step, unless ``steps`` or ``plateau_patience`` grew).
        on_metrics: called ``on_metrics(step, {"loss", "shape", "window_fraction", "efficiency"})`` every step.
        run_key: identifies the settings; a checkpoint written for other settings (or other shapes), or
            an unreadable one, is ignored with a warning and the optimisation starts over.
        checkpoint_extra: ``() -> dict`` of the caller's state, saved in every checkpoint (e.g. its budget).
        on_resume: called with that dict when a checkpoint is resumed from.
    Returns:
        (best p (detached, same shape), history list of per-step metric dicts).
    Raises:
        OptimizationError: the loss or gradient became non-finite (message names step and elements).
    """
    p = p0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    history: list[dict] = []
    start = 0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    state = _matching_checkpoint(ckpt, tuple(p.shape), run_key) if ckpt is not None else None
    if state is not None:
        with torch.no_grad():
            p.copy_(state["p"].to(p.device, p.dtype))
        opt.load_state_dict(state["adam"])
        start, history = int(state["step"]), list(state["history"])
        log.info("resumed stage-2 optimisation from %s at step %d", ckpt, start)
    best_p = p.detach().clone()
    best, ref, since_best = math.inf, math.inf, 0
    if state is not None:
        # the best design so far and the plateau counter, so that a resumed run ends like an uninterrupted one
        best_p = state["best_p"].to(p.device, p.dtype)
        best, ref, since_best = float(state["best"]), float(state["plateau_ref"]), int(state["since_best"])
        if on_resume is not None:
            on_resume(dict(state.get("extra") or {}))
        if plateau_patience and since_best >= plateau_patience:  # it had stopped on a plateau: nothing to add
            return best_p.detach().clone(), history

    def save(step: int) -> None:
        if ckpt is None:
            return
        with atomic_path(ckpt) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "p": p.detach().cpu(), "adam": opt.state_dict(), "step": step,
                        "history": history, "best_p": best_p.cpu(), "best": best, "plateau_ref": ref,
                        "since_best": since_best,
                        "extra": checkpoint_extra() if checkpoint_extra is not None else {},
                        "run_key": run_key}, tmp)

    iterator = range(start, steps)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="dko", initial=start, total=steps)
    for step in iterator:
        opt.zero_grad(set_to_none=True)
        psfs, eff = psf_fn(p)
        loss, parts = kernel_loss(psfs, targets, window_factor=window_factor, efficiency=eff,
                                  efficiency_weight=efficiency_weight)
        if not torch.isfinite(loss):
            raise OptimizationError(f"stage-2 loss became {float(loss.detach())} at step {step} (lr={lr}); "
                                    "lower dko.lr or check the optics / meta-atom library")
        loss.backward()
        if not torch.isfinite(p.grad).all():
            bad = torch.nonzero(~torch.isfinite(p.grad).reshape(p.shape[0], -1).all(dim=1)).flatten().tolist()
            raise OptimizationError(f"non-finite gradient at step {step} for elements {bad[:10]}; lower dko.lr")
        value = float(loss.detach())
        # plateau: no improvement by a relative plateau_rel_tol over the loss at the last reset (``ref``) for
        # plateau_patience steps; comparing each step with the running best would stop a slow, steady descent
        if value < ref * (1 - plateau_rel_tol):
            ref, since_best = value, 0
        else:
            since_best += 1
        if value < best:
            best, best_p = value, p.detach().clone()
        opt.step()
        metrics = {"loss": value, **parts}
        history.append(metrics)
        if on_metrics is not None:
            on_metrics(step, metrics)
        if ckpt is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            save(step + 1)
        if plateau_patience and since_best >= plateau_patience:
            log.info("stage-2 plateau at step %d (best loss %.3e)", step, best)
            break
    save(len(history))
    return best_p, history


def fidelity_metrics(psf: torch.Tensor, target: torch.Tensor, total_power: torch.Tensor | None = None) -> dict:
    """Per-element kernel fidelity.

    The electronic gain is calibrated on the realised element (``g_real = g / sum(crop_k(psf))``), so
    the realised kernel after gains is ``g * crop_k(psf) / sum(crop_k(psf))`` and the relative L2 error
    is independent of ``g``; the light lost outside the window is reported separately.

    Args:
        psf: float (E, P, P) realised PSFs (P >= k, odd), any common unit of power.
        target: float (E, k, k) target PSFs (sum 1).
        total_power: optional (E,) power of the whole PSF in the unit of ``psf`` (e.g. 1 for the
            incident power, or the transmitted efficiency); default ``psf.sum()`` over its window.
    Returns:
        dict of float64 (E,) CPU tensors: ``rel_l2`` = ||crop_k(psf)/sum - target|| / ||target||,
        ``energy_in_window`` = sum(crop_k(psf)) / total_power, ``ncc`` = zero-mean normalised
        cross-correlation of crop_k(psf) and target, in [-1, 1].
    """
    k = target.shape[-1]
    psf = psf.detach().double()
    t = target.detach().double().to(psf.device)
    crop = center_window(psf, k)
    in_k = crop.sum(dim=(-2, -1))
    total = psf.sum(dim=(-2, -1)) if total_power is None else total_power.detach().double().to(psf.device)
    shape = crop / in_k.clamp_min(1e-300)[:, None, None]
    rel = (shape - t).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1).clamp_min(1e-300)
    a = crop.flatten(1) - crop.flatten(1).mean(dim=1, keepdim=True)
    b = t.flatten(1) - t.flatten(1).mean(dim=1, keepdim=True)
    ncc = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return {"rel_l2": rel.cpu(), "energy_in_window": (in_k / total.clamp_min(1e-300)).cpu(), "ncc": ncc.cpu()}
