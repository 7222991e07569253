"""The faithful front end: a design's image formation in the faithful optical model (rule ``faithful_frontend``).

The opto-electronic evaluations (``dko``, ``dko_noisy``, ``e2e_<variant>``, ``e2e_<variant>_noisy``) form their
images with it; the ``*_cheap`` models use the front end as optimised (the cheap model of stage 2 / E2E training),
so that the two stand side by side in ``compare/summary.csv``.

What it holds (a ``frontend.npz``, :mod:`dko.frontend.file`, with PSFs on a field grid):

* **Radii as fabricated**: read back from the design's GDSII file (:func:`dko.frontend.faithful.read_gds_radii`;
  quantised to ``dko.gds_radius_step_m``).
* **PSFs on a field grid** (``faithful.field_grid`` = [Fy, Fx]): node (i, j) sits at input row ``i (H - 1) / (Fy -
  1)``, column ``j (W - 1) / (Fx - 1)`` (:func:`dko.frontend.layer.field_weights`; the corner nodes are the image's
  corner pixels), its chief ray lands on that pixel: the pixel's offset from the image centre, rounded to whole
  pixels (the PSF window then sits on the pixel grid), gives the field angles ``atan(offset p / z_s)``; sensor
  x = image columns, sensor y = image rows (the orientation of the PSF arrays). Each node's PSF is the faithful
  band-integrated PSF (:func:`dko.optics.faithful.band_psf`: resolved superpixels, exact pixels, Fresnel loss, the
  colour filter's passband with ``faithful.image_spectral_samples`` wavelengths, the pillars' response to the node's
  incidence direction and wavelength for unpolarised light (``faithful.metaatom_model``, :mod:`dko.optics.oblique_table`),
  the field angle) in a window of ``faithful.image_window_px`` pixels centred on the chief-ray pixel, times the
  relative illumination ``cos^4`` of the node (:func:`dko.optics.faithful.relative_illumination`;
  ``faithful.relative_illumination``). The layer blends the nodes bilinearly (overlap-add,
  :class:`dko.frontend.layer.OptoConv1`). One object distance: the design distance (index 0 of the front end).
* **Gains, calibrated on the built device**: every element's gain is scaled so that its DC response equals the
  design's: ``g_faithful = g x sum(PSF_design) / sum(PSF_faithful, centre node)`` over the window of
  ``dko.gain_calibration`` (``total``: the whole PSF window; ``window``: k x k; ``none``: gains unchanged). Light
  the faithful model loses is then paid for in signal-to-noise (the noisy evaluations), not hidden.
* **Flat-field correction** (``faithful.flat_field``): the electronics divide each element's sensor image by its
  relative response over the field (:class:`OptoConv1`), as a camera's lens-shading correction does, its gain capped at
  ``faithful.flat_field_max_gain`` when set.

The summary (``frontend_faithful.json``) lists per node the field angles, the relative illumination, the
median light in the window (with and without it), the median share of the light reaching the simulated sensor
plane that the window holds (the rest lands outside the modelled window: booked, not imaged), and the cheap model's
error against the faithful one per element (``psf_rel_diff`` at the node nearest the axis, both in units of the
incident light, the measure of ``fidelity_faithful.csv``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dko.dko import center_window
from dko.frontend.design import GAIN_CALIBRATIONS, element_pitch_m
from dko.frontend.faithful import (_TableDispersion, _check_geometry, filled_radii, metaatom_model_summary,
                                   read_gds_radii, transmission_fn)
from dko.frontend.file import FrontEnd, load_frontend, save_frontend
from dko.frontend.layer import centre_node
from dko.io import write_json
from dko.optics.faithful import FaithfulNumerics, band_psf, relative_illumination
from dko.optics.psf import OpticalSystem

__all__ = ["node_offsets_px", "node_angles_rad", "calibration_sums", "faithful_frontend", "write_faithful_frontend",
           "plot_psf_field_map"]

log = logging.getLogger(__name__)


def _round_half_away(value: float) -> int:
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def node_offsets_px(n_nodes: int, size: int) -> list[int]:
    """Whole-pixel offsets from the image centre of ``n_nodes`` grid nodes over ``size`` pixels (node ``i`` at
    pixel ``i (size - 1) / (n_nodes - 1)``, rounded half away from the centre; one node: 0)."""
    if n_nodes < 1 or size < 1:
        raise ValueError(f"need n_nodes >= 1 and size >= 1, got {n_nodes}, {size}")
    if n_nodes == 1:
        return [0]
    centre = (size - 1) / 2
    return [_round_half_away(i * (size - 1) / (n_nodes - 1) - centre) for i in range(n_nodes)]


def node_angles_rad(grid: tuple[int, int], height: int, width: int, pixel_pitch_m: float,
                    sensor_distance_m: float) -> np.ndarray:
    """Field angles of the field-grid nodes: float64 (Fy, Fx, 2) (theta_x, theta_y), radians (module docstring)."""
    fy, fx = (int(g) for g in grid)
    oy, ox = node_offsets_px(fy, height), node_offsets_px(fx, width)
    out = np.zeros((fy, fx, 2))
    for i, dy in enumerate(oy):
        for j, dx in enumerate(ox):
            out[i, j] = (math.atan(dx * pixel_pitch_m / sensor_distance_m),
                         math.atan(dy * pixel_pitch_m / sensor_distance_m))
    return out


def calibration_sums(psf: torch.Tensor, kernel_size: int, mode: str) -> torch.Tensor:
    """(E,) the light of PSFs (E, P, P) in the window of gain calibration ``mode`` (total / window / none: ones)."""
    if mode not in GAIN_CALIBRATIONS:
        raise ValueError(f"dko.gain_calibration must be one of {GAIN_CALIBRATIONS}, got {mode!r}")
    if mode == "none":
        return torch.ones(psf.shape[0], dtype=psf.dtype)
    region = psf if mode == "total" else center_window(psf, kernel_size)
    return region.sum(dim=(-2, -1))


def faithful_frontend(cfg, frontend: FrontEnd, library, radii, *, oblique=None, device: Any = "cpu",
                      progress: bool = True) -> tuple[dict, dict]:
    """The faithful front end of a design (module docstring).

    Args:
        cfg: :class:`dko.config.Config` (reads ``faithful.*``, ``optics.*`` but the wavelengths, ``data.height``,
            ``data.width``, ``dko.element_pitch_m``, ``dko.gain_calibration``, ``metaatoms.substrate_index``).
        frontend: the design's front end as optimised (its bank, layout, cheap PSFs and gains).
        library: :class:`dko.optics.metaatoms.MetaAtomLibrary` (the cheap model's table: the pillars with
            ``faithful.metaatom_model: normal_incidence``).
        oblique: :class:`dko.optics.oblique_table.ObliqueTable` (the pillars with ``metaatom_model: oblique``).
        radii: float (E, N, N) pillar radii, metres, NaN outside the aperture (:func:`read_gds_radii`).
        device: torch device of the simulation.
    Returns:
        (the :func:`save_frontend` keyword arguments: psfs float32 (1, Fy, Fx, E, W, W), gains, efficiency, ...;
        the summary dict).
    """
    from tqdm import tqdm

    fc = cfg.faithful
    bank = frontend.bank
    system = OpticalSystem.from_config(cfg.optics)
    _check_geometry(frontend, system)
    k = bank.kernel_size
    window = int(fc.image_window_px) if fc.image_window_px is not None else int(frontend.psfs.shape[-1])
    if window % 2 == 0 or window < k:
        raise ValueError(f"config key 'faithful.image_window_px' must be odd and >= the kernel size {k}, got {window}")
    radius = filled_radii(frontend, system, radii).to(device)
    pitch = element_pitch_m(cfg)
    numerics = FaithfulNumerics(samples_per_superpixel=fc.samples_per_superpixel, route=fc.route,
                                exact_pixels=fc.exact_pixels, fresnel=fc.fresnel,
                                substrate_index=cfg.metaatoms.substrate_index, window_px=window,
                                pad_factor=fc.pad_factor, element_pitch_m=(pitch, pitch), max_batch=fc.batch_size)
    fy, fx = (int(g) for g in fc.field_grid)
    angles = node_angles_rad((fy, fx), cfg.data.height, cfg.data.width, system.pixel_pitch_m,
                             system.sensor_distance_m)
    distance = frontend.distances[0]
    table = _TableDispersion(library)
    e_count = bank.n_elements
    psfs = torch.zeros(fy, fx, e_count, window, window, dtype=torch.float64)
    keys = ("window", "on_plane", "transmitted")
    ledger = {key: torch.zeros(fy, fx, e_count, dtype=torch.float64) for key in keys}
    illumination = np.zeros((fy, fx))
    channels = sorted({int(c) for c in bank.in_channel.tolist()})
    chunks = {c: torch.nonzero(bank.in_channel == c).flatten().split(fc.batch_size) for c in channels}
    bar = tqdm(total=sum(len(v) for v in chunks.values()) * fy * fx, desc="faithful front end", disable=not progress)
    wall0, cpu0, n_psfs = time.perf_counter(), time.process_time(), 0
    for c in channels:
        if c >= len(fc.passband_fwhm_m):
            raise ValueError(f"config key 'faithful.passband_fwhm_m' has no entry for input channel {c}")
        centre_m, fwhm_m = float(bank.wavelength_m[int(chunks[c][0][0])]), float(fc.passband_fwhm_m[c])
        for i in range(fy):
            for j in range(fx):
                angle = (float(angles[i, j, 0]), float(angles[i, j, 1]))
                gamma = math.atan(math.hypot(math.tan(angle[0]), math.tan(angle[1])))
                ri = relative_illumination(gamma) if fc.relative_illumination else 1.0
                illumination[i, j] = ri
                for idx in chunks[c]:
                    fn = transmission_fn(cfg, table, oblique, radius[idx.to(radius.device)])
                    psf, info = band_psf(fn, system, numerics, centre_m, fwhm_m, shape=fc.passband_shape,
                                         n_samples=fc.image_spectral_samples, field_angle_rad=angle,
                                         object_distance_m=distance)
                    if max(abs(o) for o in info["offset_m"]) > 1e-3 * system.pixel_pitch_m:
                        raise RuntimeError(f"node ({i}, {j}): the chief ray misses its pixel centre by "
                                           f"{info['offset_m']}")
                    psfs[i, j, idx] = ri * psf.double().cpu()
                    for key in keys:
                        ledger[key][i, j, idx] = info["ledger"][key].double().cpu()
                    n_psfs += len(info["wavelengths_m"]) * len(idx)
                    bar.update(1)
    bar.close()
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    ci, cj = (fy - 1) // 2, (fx - 1) // 2
    centre = centre_node(psfs[None])[0]  # the layer's centre PSFs (E, W, W)
    design = torch.as_tensor(frontend.centre_psfs[0], dtype=torch.float64)
    mode = cfg.dko.gain_calibration
    ratio = calibration_sums(design, k, mode) / calibration_sums(centre, k, mode).clamp_min(1e-300)
    gains = torch.as_tensor(frontend.gains, dtype=torch.float64) * ratio
    # the cheap model's error: at the node nearest the axis, in units of the incident light (no illumination factor)
    near = psfs[ci, cj] / max(float(illumination[ci, cj]), 1e-300)
    common = min(window, design.shape[-1])
    f_w, c_w = center_window(near, common), center_window(design, common)
    psf_diff = (f_w - c_w).flatten(1).norm(dim=1) / f_w.flatten(1).norm(dim=1).clamp_min(1e-300)
    nodes = []
    for i in range(fy):
        for j in range(fx):
            nodes.append({
                "node": [i, j], "field_angle_x_deg": math.degrees(angles[i, j, 0]),
                "field_angle_y_deg": math.degrees(angles[i, j, 1]), "relative_illumination": float(illumination[i, j]),
                "median_window_light": float(psfs[i, j].sum(dim=(-2, -1)).median()),
                "median_window_light_without_illumination": float(ledger["window"][i, j].median()),
                "median_window_share_of_plane": float((ledger["window"][i, j]
                                                       / ledger["on_plane"][i, j].clamp_min(1e-300)).median()),
                "median_transmitted": float(ledger["transmitted"][i, j].median()),
            })
    info = {
        **frontend.info, "optical_model": "faithful", "field_grid": [fy, fx], "image_window_px": window,
        "spectral_samples": fc.image_spectral_samples, "passband_fwhm_m": [float(v) for v in fc.passband_fwhm_m],
        "passband_shape": fc.passband_shape, "relative_illumination": bool(fc.relative_illumination),
        "flat_field": bool(fc.flat_field), "flat_field_max_gain": fc.flat_field_max_gain,
        "gain_calibration": mode, "radii_from": "GDSII",
        "object_distance_m": None if distance is None else float(distance),
    }
    summary = {
        "n_elements": e_count, "field_grid": [fy, fx], "image_window_px": window, "nodes": nodes,
        "object_distance_m": None if distance is None else float(distance),
        "spectral_samples": fc.image_spectral_samples, "flat_field": bool(fc.flat_field),
        "flat_field_max_gain": fc.flat_field_max_gain,
        "relative_illumination": bool(fc.relative_illumination), "route": numerics.route,
        "exact_pixels": numerics.exact_pixels, "fresnel": numerics.fresnel, "gain_calibration": mode,
        "metaatoms": metaatom_model_summary(cfg, table, oblique),
        "cheap_vs_faithful": {
            "median_psf_rel_diff": float(psf_diff.median()), "max_psf_rel_diff": float(psf_diff.max()),
            "median_gain_ratio": float(ratio.median()), "min_gain_ratio": float(ratio.min()),
            "max_gain_ratio": float(ratio.max()),
            "per_element_psf_rel_diff": [float(v) for v in psf_diff],
        },
        "n_monochromatic_psfs": n_psfs, "wall_s": wall_s, "cpu_s": cpu_s,
        "wall_s_per_psf": wall_s / max(1, n_psfs),
    }
    arrays = dict(radius_m=radius.cpu().numpy(), psfs=psfs[None].float().numpy(),
                  object_distances_m=[distance], efficiency=ledger["on_plane"][ci, cj][None].float().numpy(),
                  gains=gains.float().numpy(), bank=bank, element_centers_m=frontend.element_centers_m,
                  system=frontend.system, info=info, flat_field=bool(fc.flat_field),
                  flat_field_max_gain=fc.flat_field_max_gain)
    return arrays, summary


def plot_psf_field_map(psfs: np.ndarray, angles_rad: np.ndarray, elements: list[int], labels: list[str],
                       out_png: str | Path) -> Path:
    """PSF maps: for each listed element a block of Fy x Fx panels (its PSF at every node, each on its own range,
    titled with the node's field angles and light in the window).

    Args:
        psfs: float (Fy, Fx, E, W, W); angles_rad: (Fy, Fx, 2); elements: indices to show; labels: one per element.
    """
    from dko.plots import _new_figure, _save

    fy, fx = psfs.shape[:2]
    n = len(elements)
    fig = _new_figure(1.5 * fx + 0.3, 1.55 * fy * n + 0.3)
    axes = fig.subplots(fy * n, fx, squeeze=False)
    for b, e in enumerate(elements):
        for i in range(fy):
            for j in range(fx):
                ax = axes[b * fy + i, j]
                img = psfs[i, j, e]
                ax.imshow(img, cmap="magma", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"({math.degrees(angles_rad[i, j, 0]):.0f}, {math.degrees(angles_rad[i, j, 1]):.0f}) deg"
                             f"\nlight {img.sum():.3g}", fontsize=6)
        axes[b * fy, 0].set_ylabel(labels[b], fontsize=7)
    return _save(fig, out_png)


def write_faithful_frontend(cfg, frontend_path: str | Path, gds_path: str | Path, library, out_path: str | Path,
                            summary_path: str | Path, figure_path: str | Path, *, oblique=None, device: Any = "cpu",
                            progress: bool = True) -> dict:
    """Rule ``faithful_frontend``: the radii of ``gds_path`` -> :func:`faithful_frontend` -> ``out_path``
    (``frontend_faithful.npz``), the summary (JSON) and the PSF field map (PNG). Returns the summary."""
    frontend = load_frontend(frontend_path)
    system = frontend.system
    radii = read_gds_radii(gds_path, frontend.element_centers_m, system.n_superpixels, system.superpixel_m)
    arrays, summary = faithful_frontend(cfg, frontend, library, radii, oblique=oblique, device=device,
                                        progress=progress)
    save_frontend(out_path, **arrays)
    write_json(summary_path, summary)
    bank = frontend.bank
    diffs = summary["cheap_vs_faithful"]["per_element_psf_rel_diff"]
    show = sorted({int(np.argmin(diffs)), int(np.argmax(diffs))})
    labels = [f"k{int(bank.out_channel[e])} c{int(bank.in_channel[e])} {'+' if bank.sign[e] > 0 else '-'}\n"
              f"cheap vs faithful {diffs[e]:.2f}" for e in show]
    fg = summary["field_grid"]
    angles = node_angles_rad(fg, cfg.data.height, cfg.data.width, system.pixel_pitch_m, system.sensor_distance_m)
    plot_psf_field_map(arrays["psfs"][0], angles, show, labels, figure_path)
    for node in summary["nodes"]:
        log.info("faithful front end, node %s at (%.1f, %.1f) deg: relative illumination %.4f, window light %.4f "
                 "(%.4f before it), window share of the light on the sensor plane %.3f", node["node"],
                 node["field_angle_x_deg"], node["field_angle_y_deg"], node["relative_illumination"], node["median_window_light"],
                 node["median_window_light_without_illumination"], node["median_window_share_of_plane"])
    cvf = summary["cheap_vs_faithful"]
    log.info("cheap vs faithful at the centre node: PSF difference median %.3f (max %.3f); gain ratio median %.3f "
             "(%.3f-%.3f); %d monochromatic PSFs in %.1f s (%.3f s each)", cvf["median_psf_rel_diff"],
             cvf["max_psf_rel_diff"], cvf["median_gain_ratio"], cvf["min_gain_ratio"], cvf["max_gain_ratio"],
             summary["n_monochromatic_psfs"], summary["wall_s"], summary["wall_s_per_psf"])
    return summary
