"""Stage 2 (DKO) as pipeline steps: optimise one shard of elements, assemble the front end, write the layout.

* :func:`optimize_shard` - rule ``optimize_metasurface``: the elements of one shard of output channels
  (:func:`dko.frontend.shards`), initialised by :func:`dko.frontend.initial_designs` (computed for the whole
  bank, so an element's start does not depend on the sharding), fitted with :func:`dko.dko.optimize_designs`
  through :func:`dko.frontend.element_psfs` at the optimisation distance(s); checkpoint/resume; its own budget.
* :func:`assemble_frontend` - rule ``assemble_frontend``: gathers the shards, simulates the realised PSFs at
  every evaluation distance, calibrates the gains, lays the elements out, writes ``frontend.npz``,
  ``fidelity.csv``, ``fidelity_summary.json``, the aggregated ``budget.json`` and the figures.
* :func:`write_frontend_gds` - rule ``metasurface_gds``: the GDSII of the array (:mod:`dko.optics.gds`).

Fidelity (``fidelity.csv``, one row per element and evaluated object distance):

* ``rel_l2`` - ||crop_k(PSF) / sum(crop_k(PSF)) - target|| / ||target||: the relative L2 error of the realised
  kernel inside its k x k support after the electronic gain (calibrated on the element) - the shape error.
* ``energy_k`` - fraction of the light transmitted by the element (its whole simulated sensor plane) that
  lands inside the k x k kernel window. The remainder reaches the sensor as a halo around every image point:
  it is not part of the kernel. **This is the energy fraction of the acceptance criterion.**
* ``energy_2k`` - the same inside the loss window (``dko.window_factor`` x k) - what the paper's loss sees.
* ``energy_k_incident`` - light in the k x k window per incident light (includes the meta-atom losses).
* ``energy_psf_window`` - fraction of the transmitted light inside the simulated ``psf_size_px`` window.
* ``ncc`` - zero-mean normalised cross-correlation of crop_k(PSF) and the target.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dko.budget import BudgetRecorder
from dko.config import EXECUTION_KEYS, Config
from dko.dko import center_window, fidelity_metrics, kernel_loss, loss_window, optimize_designs
from dko.frontend import (KernelBank, array_layout, calibrate_gains, design_radius, distances_to_array,
                          element_pitch_m, element_psfs, evaluation_distances, initial_designs, load_frontend,
                          optimization_distances, psf_fft_flops, radius_psfs, save_frontend, shards)
from dko.io import atomic_path, check_format, write_csv, write_json
from dko.io import run_key as hash_run_key
from dko.optics.gds import read_array_summary, write_array_gds
from dko.optics.psf import OpticalSystem, is_infinite_distance
from dko.plots import plot_dko_fidelity_vs_distance, plot_dko_kernel_fit, plot_dko_loss_curves

__all__ = ["SHARD_FORMAT", "optimize_shard", "load_shard", "assemble_frontend", "aggregate_budgets",
           "write_frontend_gds"]

log = logging.getLogger(__name__)
SHARD_FORMAT = "dko.shard/1"


# ----------------------------------------------------------------------------- configuration helpers
# ----------------------------------------------------------------------------- one shard
SHARD_BOOKKEEPING_KEYS = ("dko.steps", "dko.checkpoint_every", "dko.log_every", "dko.fidelity_distances_m",
                          "dko.element_pitch_m", "dko.gds_radius_step_m", "dko.gain_calibration")
"""dko.* keys a shard's optimisation does not depend on (``dko.steps``: a longer run continues an earlier one)."""


def shard_run_key(cfg: Config, bank: KernelBank, index: torch.Tensor, library=None) -> str:
    """:func:`dko.io.run_key` of a shard: the configuration minus the execution keys and
    :data:`SHARD_BOOKKEEPING_KEYS`, with the shard's element indices, target kernels and the meta-atom table
    (a checkpoint resumes only under the same key)."""
    table = [] if library is None else [np.ascontiguousarray(a).tobytes()
                                        for a in (library.radii_m, library.wavelengths_m, library.table)]
    return hash_run_key(cfg.to_dict(), exclude=(*EXECUTION_KEYS, *SHARD_BOOKKEEPING_KEYS),
                        extra={"elements": [int(i) for i in index.tolist()]},
                        extra_bytes=[bank.targets.detach().cpu().numpy().tobytes(), *table])


def optimize_shard(cfg: Config, bank: KernelBank, library, shard: int, out_path: str | Path, *,
                   checkpoint_path: str | Path | None = None, device: Any = "cpu",
                   on_metrics: Callable[[int, dict], None] | None = None, progress: bool = True,
                   keep_checkpoint: bool = False) -> dict:
    """Optimise the elements of shard ``shard`` and write ``out_path`` (.pt).

    Args:
        cfg: :class:`dko.config.Config` (``dko``, ``optics``, ``seed``).
        bank: the whole kernel bank (CPU).
        library: :class:`dko.optics.metaatoms.MetaAtomLibrary`.
        shard: index in ``dko.frontend.shards(bank, cfg.dko.shard_size)``.
        out_path: result file: ``{"format", "shard", "index" (long (E_s,)), "design" (float32 (E_s, N, N)),
            "radius_m" (float32 (E_s, N, N)), "history" (list of per-step dicts), "budget" (dict), "distances_m"}``.
        checkpoint_path: optimiser checkpoint with the budget so far (resumed when present; removed after
            success unless ``keep_checkpoint``: then the caller removes it when its own work is done, and a
            rerun finding the final one writes the shard again without another step).
    Returns:
        The budget summary (also stored in the file).
    """
    parts = shards(bank, cfg.dko.shard_size)
    if not 0 <= shard < len(parts):
        raise ValueError(f"shard {shard} does not exist: dko.shard_size={cfg.dko.shard_size} gives {len(parts)} shards")
    index = parts[shard]
    system = OpticalSystem.from_config(cfg.optics)
    distances = optimization_distances(cfg)
    budget = BudgetRecorder(f"dko_shard{shard}", device)
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    key = shard_run_key(cfg, bank, index, library)

    def resume_budget(extra: dict) -> None:
        if "budget" in extra:
            budget.load_state_dict(extra["budget"])
            log.info("shard %d: resuming, earlier segments %.1f s", shard, budget.prior["wall_s"])

    history: list[dict] = []
    design = torch.zeros(0, system.n_superpixels, system.n_superpixels)
    if index.numel():
        sub = bank.subset(index).to(device)
        # the whole bank's initialisation (seeded once): an element starts the same whatever the sharding
        p0 = initial_designs(bank, system, library, noise_std=cfg.dko.init_noise_std, seed=cfg.seed,
                             parametrization=cfg.dko.parametrization)[index].to(device)
        targets = sub.targets.to(device=device, dtype=torch.float32)

        def psf_fn(p):
            return element_psfs(p, sub, system, library, distances, cfg.dko.parametrization)

        def one_step():
            q = p0.clone().requires_grad_(True)
            psfs, eff = psf_fn(q)
            loss, _ = kernel_loss(psfs, targets, window_factor=cfg.dko.window_factor, efficiency=eff,
                                  efficiency_weight=cfg.dko.efficiency_weight)
            loss.backward()

        budget.measure_flops(one_step)  # before the clock starts (not charged)
        budget.start()
        last = {"wall": time.perf_counter(), "cpu": time.process_time()}

        def metrics_cb(step: int, metrics: dict) -> None:
            now_w, now_c = time.perf_counter(), time.process_time()
            budget.add_step(now_w - last["wall"], now_c - last["cpu"])
            last["wall"], last["cpu"] = now_w, now_c
            if on_metrics is not None:
                on_metrics(step, metrics)

        design, history = optimize_designs(
            p0, targets, psf_fn, steps=cfg.dko.steps, lr=cfg.dko.lr, window_factor=cfg.dko.window_factor,
            efficiency_weight=cfg.dko.efficiency_weight, plateau_patience=cfg.dko.plateau_patience,
            plateau_rel_tol=cfg.dko.plateau_rel_tol, checkpoint_path=ckpt, checkpoint_every=cfg.dko.checkpoint_every,
            on_metrics=metrics_cb, progress=progress, run_key=key,
            checkpoint_extra=lambda: {"budget": budget.state_dict()}, on_resume=resume_budget)
    else:
        budget.start()
    budget.stop()
    budget.extra.update(shard=shard, n_elements=int(index.numel()), n_superpixels=system.n_superpixels,
                        n_distances=len(distances),
                        fft_flops_per_step_est=psf_fft_flops(system, int(index.numel()), len(distances)))
    summary = budget.summary()
    # a resumed optimisation re-reads its history from the checkpoint: count its steps from there
    summary["steps"] = len(history)
    if summary["flops_per_step"] is not None:
        summary["flops_total"] = summary["flops_per_step"] * len(history)
    summary["fft_flops_total_est"] = summary["fft_flops_per_step_est"] * len(history)
    design = design.detach().to("cpu", torch.float32)
    payload = {"format": SHARD_FORMAT, "shard": shard, "index": index.cpu(), "design": design,
               "radius_m": design_radius(design, bank.subset(index), library,
                                         cfg.dko.parametrization).to(torch.float32),
               "history": history, "budget": summary, "distances_m": distances}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    if ckpt is not None and not keep_checkpoint:
        ckpt.unlink(missing_ok=True)
    if history:
        log.info("shard %d: %d elements, %d steps, loss %.4g -> %.4g, %.1f s", shard, index.numel(), len(history),
                 history[0]["loss"], min(h["loss"] for h in history), summary["wall_s"])
    return summary


def load_shard(path: str | Path) -> dict:
    """Read a file written by :func:`optimize_shard`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"shard file '{path}' does not exist (run optimize_metasurface)")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    check_format(payload, SHARD_FORMAT, path, "shard file")
    return payload


def aggregate_budgets(shard_budgets: Sequence[dict]) -> dict:
    """Stage-2 budget from the per-shard budgets: sums of ``wall_s``, ``cpu_s``, ``steps``, ``flops_total``
    (and the FFT estimate), max of ``peak_rss_mb``, ``n_jobs``, and the list ``shards``."""
    if not shard_budgets:
        raise ValueError("no shard budget to aggregate")

    def total(key):
        values = [b.get(key) for b in shard_budgets]
        return None if any(v is None for v in values) else sum(values)

    return {
        "name": "dko",
        "wall_s": float(sum(b["wall_s"] for b in shard_budgets)),
        "cpu_s": float(sum(b["cpu_s"] for b in shard_budgets)),
        "steps": int(sum(b["steps"] for b in shard_budgets)),
        "peak_rss_mb": float(max(b["peak_rss_mb"] for b in shard_budgets)),
        "flops_total": total("flops_total"),
        "fft_flops_total_est": total("fft_flops_total_est"),
        "n_jobs": len(shard_budgets),
        "element_steps": int(sum(b["steps"] * b.get("n_elements", 0) for b in shard_budgets)),
        "device": shard_budgets[0].get("device"),
        "shards": list(shard_budgets),
    }


# ----------------------------------------------------------------------------- assembly
def _psfs_no_grad(radius_m: torch.Tensor, bank: KernelBank, system: OpticalSystem, library,
                  distances: Sequence[float | None], chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """PSFs (D, E, P, P) and efficiencies (D, E) of the realised radii (E, N, N), in chunks of elements."""
    psfs, effs = [], []
    with torch.no_grad():
        for start in range(0, bank.n_elements, chunk):
            idx = torch.arange(start, min(start + chunk, bank.n_elements))
            p, e = radius_psfs(radius_m[idx], bank.subset(idx), system, library, distances)
            psfs.append(p)
            effs.append(e)
    return torch.cat(psfs, dim=1).float(), torch.cat(effs, dim=1).float()


def fidelity_table(psfs: torch.Tensor, efficiency: torch.Tensor, bank: KernelBank, distances: Sequence[float | None],
                   window_factor: float) -> list[dict]:
    """Rows of ``fidelity.csv`` (see the module docstring) for PSFs (D, E, P, P) and efficiencies (D, E)."""
    k = bank.kernel_size
    w = min(loss_window(k, window_factor), psfs.shape[-1])
    w = w if w % 2 else w - 1
    rows = []
    for d, z in enumerate(distances):
        psf = psfs[d].double()
        eff = efficiency[d].double()
        m = fidelity_metrics(psf, bank.targets, total_power=eff)
        in_k_incident = center_window(psf, k).sum(dim=(-2, -1))
        in_2k = center_window(psf, w).sum(dim=(-2, -1)) / eff
        in_p = psf.sum(dim=(-2, -1)) / eff
        for e in range(bank.n_elements):
            rows.append({
                "element": e, "out_channel": int(bank.out_channel[e]), "in_channel": int(bank.in_channel[e]),
                "sign": int(bank.sign[e]), "wavelength_m": float(bank.wavelength_m[e]),
                "object_distance_m": math.inf if is_infinite_distance(z) else float(z),
                "rel_l2": float(m["rel_l2"][e]), "energy_k": float(m["energy_in_window"][e]),
                "energy_2k": float(in_2k[e]), "energy_k_incident": float(in_k_incident[e]),
                "energy_psf_window": float(in_p[e]), "ncc": float(m["ncc"][e]), "efficiency": float(eff[e]),
            })
    return rows


def summarize_fidelity(rows: list[dict], design_distance: float | None, *, max_rel_l2: float = 0.02,
                       min_energy: float = 0.8) -> dict:
    """Medians / extremes at the design distance, per-distance medians, and the issue's acceptance check
    (median rel L2 <= ``max_rel_l2`` and median ``energy_k`` >= ``min_energy``)."""
    z0 = math.inf if is_infinite_distance(design_distance) else float(design_distance)
    at = [r for r in rows if r["object_distance_m"] == z0]
    arr = {k: np.array([r[k] for r in at]) for k in ("rel_l2", "energy_k", "energy_2k", "energy_k_incident",
                                                      "energy_psf_window", "ncc", "efficiency")}
    out = {"design_distance_m": z0, "n_elements": len(at)}
    for k, v in arr.items():
        out[f"median_{k}"] = float(np.median(v))
        out[f"min_{k}"] = float(v.min())
        out[f"max_{k}"] = float(v.max())
    by_distance = {}
    for z in sorted({r["object_distance_m"] for r in rows}):
        sel = [r for r in rows if r["object_distance_m"] == z]
        by_distance[str(z)] = {k: float(np.median([r[k] for r in sel])) for k in ("rel_l2", "energy_k", "ncc")}
    out["by_distance"] = by_distance
    out["criterion"] = {"max_median_rel_l2": max_rel_l2, "min_median_energy_k": min_energy,
                        "energy_definition": "light inside the k x k kernel window / light transmitted by the element",
                        "passed": bool(out["median_rel_l2"] <= max_rel_l2 and out["median_energy_k"] >= min_energy)}
    return out


def assemble_frontend(cfg, bank: KernelBank, library, shard_files: Sequence[str | Path], out_dir: str | Path) -> dict:
    """Gather the shards into ``out_dir``: ``frontend.npz``, ``fidelity.csv``, ``fidelity_summary.json``,
    ``budget.json``, ``kernels_fit.png``, ``loss_curves.png``, ``fidelity_vs_distance.png``.

    Returns the fidelity summary (with the budget's totals).
    """
    out_dir = Path(out_dir)
    system = OpticalSystem.from_config(cfg.optics)
    n = system.n_superpixels
    design = torch.full((bank.n_elements, n, n), float("nan"))
    seen = torch.zeros(bank.n_elements, dtype=torch.bool)
    budgets, histories = [], {}
    for path in shard_files:
        s = load_shard(path)
        idx = s["index"].long()
        if tuple(s["design"].shape[1:]) != (n, n):
            raise ValueError(f"shard file '{path}' holds {tuple(s['design'].shape[1:])} designs but optics.n_superpixels={n}: "
                             "it is stale, re-run optimize_metasurface")
        if idx.numel() and (seen[idx].any() or int(idx.max()) >= bank.n_elements):
            raise ValueError(f"shard file '{path}' overlaps another shard or does not fit the kernel bank")
        design[idx] = s["design"]
        seen[idx] = True
        budgets.append(s["budget"])
        histories[int(s["shard"])] = s["history"]
    if not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten().tolist()
        raise ValueError(f"elements {missing[:10]} are in no shard file: pass every optimize_metasurface output")
    distances = evaluation_distances(cfg)
    radius = design_radius(design, bank, library, cfg.dko.parametrization)
    psfs, eff = _psfs_no_grad(radius, bank, system, library, distances)
    gains = calibrate_gains(psfs[0], bank.gains.float(), bank.kernel_size, cfg.dko.gain_calibration)
    centers = array_layout(bank, element_pitch_m(cfg))
    budget = aggregate_budgets(sorted(budgets, key=lambda b: b.get("shard", 0)))
    write_json(out_dir / "budget.json", budget)
    rows = fidelity_table(psfs, eff, bank, distances, cfg.dko.window_factor)
    write_csv(out_dir / "fidelity.csv", rows)
    summary = summarize_fidelity(rows, distances[0])
    summary.update(budget_wall_s=budget["wall_s"], budget_cpu_s=budget["cpu_s"], n_jobs=budget["n_jobs"],
                   gain_calibration=cfg.dko.gain_calibration, n_superpixels=n,
                   loss_window_px=loss_window(bank.kernel_size, cfg.dko.window_factor))
    write_json(out_dir / "fidelity_summary.json", summary)
    save_frontend(out_dir / "frontend.npz", radius_m=radius.float(), psfs=psfs,
                  object_distances_m=distances, efficiency=eff, gains=gains, bank=bank,
                  element_centers_m=centers, system=system,
                  info={"method": "dko", "gain_calibration": cfg.dko.gain_calibration,
                        "optimization_distances_m": distances_to_array(optimization_distances(cfg)).tolist(),
                        "element_pitch_m": element_pitch_m(cfg), "period_m": cfg.metaatoms.period_m,
                        "median_rel_l2": summary["median_rel_l2"], "median_energy_k": summary["median_energy_k"]})
    plot_dko_kernel_fit(bank.targets.numpy(), center_window(psfs[0], bank.kernel_size).numpy(),
                        np.array([r["rel_l2"] for r in rows[:bank.n_elements]]),
                        bank.out_channel.numpy(), bank.in_channel.numpy(), bank.sign.numpy(), out_dir / "kernels_fit.png")
    plot_dko_loss_curves(histories, out_dir / "loss_curves.png")
    plot_dko_fidelity_vs_distance(rows, out_dir / "fidelity_vs_distance.png")
    log.info("front end: %d elements, median rel L2 %.4f (max %.4f), median energy in k window %.3f (2k %.3f), "
             "NCC %.4f at %s m", bank.n_elements, summary["median_rel_l2"], summary["max_rel_l2"],
             summary["median_energy_k"], summary["median_energy_2k"], summary["median_ncc"], summary["design_distance_m"])
    return summary


# ----------------------------------------------------------------------------- layout
def write_frontend_gds(frontend_path: str | Path, gds_path: str | Path, *, period_m: float,
                       radius_step_m: float = 1e-9) -> dict:
    """GDSII of the array in ``frontend.npz`` and its read-back summary (:mod:`dko.optics.gds`)."""
    fe = load_frontend(frontend_path)
    system, bank = fe.system, fe.bank
    mask = system.superpixel_aperture_mask().numpy()
    names = [f"K{int(k):03d}_C{int(c)}_{'P' if s > 0 else 'N'}"
             for k, c, s in zip(bank.out_channel.tolist(), bank.in_channel.tolist(), bank.sign.tolist())]
    written = write_array_gds(gds_path, fe.radius_m.astype(np.float64), fe.element_centers_m, system.superpixel_m,
                              period_m, element_names=names, aperture_mask=mask, radius_step_m=radius_step_m)
    back = read_array_summary(gds_path)
    expected = int(mask.sum()) * round(system.superpixel_m / period_m) ** 2
    problems = [name for name, el in back["elements"].items() if el["n_pillars"] != expected]
    if len(back["elements"]) != fe.n_elements or problems:
        raise ValueError(f"GDSII '{gds_path}' read back wrong: {len(back['elements'])} elements, "
                         f"wrong pillar counts in {problems[:5]}")
    return {**written, "pillars_per_element": expected, "element_pitch_m": float(fe.info.get("element_pitch_m", float("nan"))),
            "radius_histogram_nm": back["radius_histogram_nm"]}
