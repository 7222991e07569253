"""The final design re-simulated in the faithful optical model (rule ``faithful_fidelity``; DESIGN.md section 3).

Every reported optical figure comes from the faithful model (:mod:`dko.optics.faithful`); the cheap model of stage 2
(:func:`dko.optics.psf.psf_from_radii`: one field sample per superpixel, cell-constant pixels, no Fresnel loss, on
axis, one wavelength) drives the optimisation, and its error against the faithful model is measured here, per
element, and printed beside the result.

* :func:`read_gds_radii` - the pillar radius of every superpixel of every element, read from the GDSII file as
  written (:func:`dko.optics.gds.write_array_gds`: quantised to ``dko.gds_radius_step_m``; the file holds 1 nm
  cell names and a 1 nm database grid, so radii come back to the nanometre), each element matched to the front
  end's element by its centre on the array.
* :func:`faithful_fidelity` - every element at every ``faithful.field_positions`` entry: the band-integrated
  faithful PSF (:func:`dko.optics.faithful.band_psf` over the element's colour filter, dispersion from the
  meta-atom table) against the element's target kernel with the metrics of ``fidelity.csv``
  (:func:`dko.stage2.fidelity_table`, i.e. :func:`dko.dko.fidelity_metrics`), the light ledger, and beside it the
  cheap model's result on axis.
* :func:`write_faithful_fidelity` - the rule's work: read, simulate, write the CSV, the JSON summary and the figure.

Rows (``fidelity_faithful.csv``, one per element and field position):

* element identity (``element``, ``out_channel``, ``in_channel``, ``sign``, ``wavelength_m`` = the passband
  centre, ``object_distance_m`` = the design distance ``optics.object_distances_m[0]``), the field position
  (``field_x``, ``field_y`` normalised image coordinates; ``field_angle_x_deg``, ``field_angle_y_deg``;
  ``incidence_angle_deg`` the polar angle; ``relative_illumination`` cos of it, not applied);
* the fidelity metrics of ``fidelity.csv`` for the faithful PSF: ``rel_l2``, ``energy_k``, ``energy_2k``,
  ``energy_k_incident``, ``energy_psf_window`` (here the faithful window of ``window_px``), ``ncc`` and
  ``efficiency`` (= the light reaching the simulated sensor plane per incident light, the cheap model's
  definition, so that ``energy_k`` keeps its meaning);
* the ledger, fractions of the incident light summing to 1: ``fresnel_loss``, ``metasurface_loss`` (meta-atom
  absorption / reflection / higher orders: 1 - |t|^2), ``beyond_band`` and ``evanescent`` (spatial frequencies the
  sensor never sees), ``band_limited_out`` (propagating light that lands beyond the simulated plane),
  ``on_target`` (in the k x k kernel window and on the element's own sensor area), ``outside_target`` (elsewhere
  on the element's own sensor area), ``other_elements`` (on the neighbours' areas, crosstalk at the array pitch:
  at an image edge this includes the part of the kernel window beyond the edge), ``gaps``, ``off_pixel_grid``;
* the cheap model beside it: ``cheap_rel_l2``, ``cheap_energy_k``, ``cheap_energy_k_incident`` (on axis, one
  wavelength: the same for every field position), ``psf_rel_diff`` = ||P_faithful - P_cheap|| / ||P_faithful||
  over the common window (both in units of the incident light, the faithful one centred on its chief-ray pixel),
  ``kernel_rel_diff`` = the same for the sum-normalised k x k kernels.

The pillars (``faithful.metaatom_model``): ``oblique`` (default) takes every element's transmission from the faithful
meta-atom table (:mod:`dko.optics.oblique_table`, rule ``metaatom_oblique``): the field position's own incidence
direction, both input polarisations (unpolarised light: the PSF is the mean of the s and p inputs' PSFs, each the sum of
its co- and cross-polarised outputs' intensities, each with its own Fresnel loss), every passband wavelength of the
table exact, the fidelity's other passband samples interpolated between the channel's table wavelengths and held beyond
its outermost ones (summary ``metaatoms``: the model, the table's convergence and radius-interpolation checks, the held
wavelengths). ``normal_incidence`` (the term switched off) uses the cheap model's table at normal incidence for every
field position, one polarisation, interpolated between its wavelengths ``optics.wavelengths_m`` and held beyond them.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dko.dko import center_window, loss_window
from dko.frontend.design import element_pitch_m
from dko.frontend.file import FrontEnd, load_frontend
from dko.io import write_csv, write_json
from dko.optics.faithful import (FaithfulNumerics, _area_masks, auto_samples_per_superpixel, band_psf,
                                 library_transmission_fn)
from dko.optics.gds import TOP_CELL, read_array_cells
from dko.optics.propagation import padded_size
from dko.optics.psf import OpticalSystem, is_infinite_distance, psf_from_radii

__all__ = ["LEDGER_COLUMNS", "transmission_fn", "oblique_table_settings", "read_gds_radii", "filled_radii", "field_angles_rad", "faithful_fidelity",
           "flat_metrics", "plot_faithful_psfs", "write_faithful_fidelity"]

log = logging.getLogger(__name__)

LEDGER_COLUMNS = ("fresnel_loss", "metasurface_loss", "beyond_band", "evanescent", "band_limited_out", "on_target",
                  "outside_target", "other_elements", "gaps", "off_pixel_grid")
"""The ledger columns of a row: fractions of the incident light, summing to 1."""

_LOSS_CATEGORIES = {  # summary category -> ledger columns
    "fresnel_loss": ("fresnel_loss",), "metasurface_loss": ("metasurface_loss",),
    "nonpropagating": ("beyond_band", "evanescent"), "beyond_plane": ("band_limited_out",),
    "outside_target": ("outside_target", "off_pixel_grid"), "other_elements": ("other_elements", "gaps"),
}


# ----------------------------------------------------------------------------- the GDSII as written
def read_gds_radii(gds_path: str | Path, element_centers_m: np.ndarray, n_superpixels: int,
                   superpixel_m: float, *, tolerance_m: float = 1e-8) -> np.ndarray:
    """Pillar radius of every superpixel of every element, from a file written by :func:`dko.optics.gds.write_array_gds`.

    Each ``ELEMENT_*`` reference of the top cell is matched to the front-end element whose centre lies within
    ``tolerance_m`` of its origin; each superpixel's radius is the radius of the pillar cell its array reference
    places (the cell name's nanometres, checked against the polygon's geometry to 1.5 nm), its position from the
    reference's origin (first pillar at half a period from the superpixel's lower-left corner).

    Args:
        gds_path: the ``.gds`` file.
        element_centers_m: float (E, 2) (x, y) centres of the front end's elements on the array, metres.
        n_superpixels: N; superpixel_m: superpixel side, metres.
    Returns:
        float64 (E, N, N) radii, metres (row = y, top row = largest y); NaN where the file has no pillars
        (outside the aperture).
    Raises:
        ValueError: missing / unreadable file, no top cell, an element that matches no front-end element (or two),
        a front-end element missing from the file, a superpixel placed twice or off the grid.
    """
    path = Path(gds_path)
    cells, radius_nm, to_m = read_array_cells(path, " (run rule metasurface_gds)")
    radius_of = {name: r * 1e-9 for name, r in radius_nm.items()}
    centres = np.asarray(element_centers_m, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"element_centers_m must have shape (E, 2), got {centres.shape}")
    n, s = int(n_superpixels), float(superpixel_m)
    half = n * s / 2
    radii = np.full((len(centres), n, n), np.nan)
    found = np.zeros(len(centres), dtype=bool)
    for ref in cells[TOP_CELL].references:
        origin = np.asarray(ref.origin, dtype=np.float64) * to_m
        dist = np.hypot(*(centres - origin).T)
        e = int(np.argmin(dist))
        if dist[e] > tolerance_m or found[e]:
            raise ValueError(f"GDSII file '{path}': element cell {ref.cell.name} at {origin.tolist()} m matches no "
                             "(or an already matched) front-end element: the file is stale, rerun metasurface_gds")
        found[e] = True
        for sub in ref.cell.references:
            name = sub.cell.name
            if name not in radius_of:
                continue
            x0, y0 = sub.origin[0] * to_m, sub.origin[1] * to_m
            col = math.floor((x0 + half) / s + 1e-6)
            row = math.floor((half - y0) / s + 1e-6)
            if not (0 <= row < n and 0 <= col < n) or not math.isnan(radii[e, row, col]):
                raise ValueError(f"GDSII file '{path}': cell {ref.cell.name} places pillars at ({x0:.4e}, {y0:.4e}) m, "
                                 f"off the {n} x {n} superpixel grid or twice on one superpixel")
            radii[e, row, col] = radius_of[name]
    if not found.all():
        missing = np.nonzero(~found)[0].tolist()
        raise ValueError(f"GDSII file '{path}' lacks front-end elements {missing[:10]}: rerun metasurface_gds")
    return radii


# ----------------------------------------------------------------------------- geometry and the table
def field_angles_rad(cfg, positions: Sequence[Sequence[float]] | None = None) -> list[tuple[float, float]]:
    """Field angles (theta_x, theta_y), radians, of normalised image positions (default ``faithful.field_positions``).

    Position (x, y) in -1..1 lands at ``(x data.width / 2, y data.height / 2) x optics.pixel_pitch_m`` from the
    element's axis; the angle is ``atan(that / optics.sensor_distance_m)`` per axis.
    """
    positions = cfg.faithful.field_positions if positions is None else positions
    p, zs = cfg.optics.pixel_pitch_m, cfg.optics.sensor_distance_m
    hx, hy = cfg.data.width / 2 * p, cfg.data.height / 2 * p
    return [(math.atan(float(u) * hx / zs), math.atan(float(v) * hy / zs)) for u, v in positions]


def oblique_table_settings(cfg) -> dict:
    """Settings of the faithful model's meta-atom table (:func:`dko.optics.oblique_table.oblique_settings`) for ``cfg``.

    Directions: the field-grid nodes of the faithful front end and the fidelity positions; wavelengths: every
    channel's centre (``optics.wavelengths_m``) and its image-formation passband samples
    (``faithful.image_spectral_samples``); physics, radius range and Fourier order: ``metaatoms.*``;
    ``faithful.table_radii`` radii and ``faithful.table_order`` (null: ``metaatoms.rcwa_order``); normal-vector
    factorisation on the table's 256-point raster.
    """
    from dko.frontend.faithful_frontend import node_angles_rad
    from dko.optics.faithful import spectral_samples
    from dko.optics.metaatoms import GRID_POINTS
    from dko.optics.oblique_table import oblique_settings

    fc, m = cfg.faithful, cfg.metaatoms
    centres = [float(w) for w in cfg.optics.wavelengths_m]
    if len(fc.passband_fwhm_m) < len(centres):
        raise ValueError(f"config key 'faithful.passband_fwhm_m' has {len(fc.passband_fwhm_m)} entries for "
                         f"{len(centres)} wavelengths")
    wls = []
    for c, centre in enumerate(centres):
        wls += spectral_samples(centre, float(fc.passband_fwhm_m[c]), int(fc.image_spectral_samples),
                                fc.passband_shape)[0]
    nodes = node_angles_rad(tuple(fc.field_grid), cfg.data.height, cfg.data.width, cfg.optics.pixel_pitch_m,
                            cfg.optics.sensor_distance_m).reshape(-1, 2)
    angles = [tuple(a) for a in nodes.tolist()] + list(field_angles_rad(cfg))
    return oblique_settings(pillar_index=m.pillar_index, substrate_index=m.substrate_index,
                            pillar_height_m=m.pillar_height_m, period_m=m.period_m, radius_min_m=m.radius_min_m,
                            radius_max_m=m.radius_max_m, n_radii=fc.table_radii,
                            order=m.rcwa_order if fc.table_order is None else fc.table_order,
                            grid_points=GRID_POINTS, centres_m=centres, wavelengths_m=wls, field_angles_rad=angles)


def _position_name(x: float, y: float) -> str:
    return f"x{x:g}_y{y:g}"


class _TableDispersion:
    """``transmission(radius, wavelength)`` of a meta-atom table, held at its end wavelengths beyond its range."""

    def __init__(self, library):
        self.library = library
        self.lo, self.hi = float(library.wavelengths_m[0]), float(library.wavelengths_m[-1])
        self.held: set[float] = set()

    def transmission(self, radius_m: torch.Tensor, wavelength_m: float) -> torch.Tensor:
        wl = min(max(float(wavelength_m), self.lo), self.hi)
        if wl != float(wavelength_m):
            self.held.add(round(float(wavelength_m), 15))
        return self.library.transmission(radius_m, wl)


def transmission_fn(cfg, table: _TableDispersion, oblique, radius: torch.Tensor):
    """The faithful PSFs' :data:`dko.optics.faithful.TransmissionFn` of pillar radii (E, N, N) under
    ``faithful.metaatom_model``: the oblique table's unpolarised components, or the cheap model's table."""
    model = cfg.faithful.metaatom_model
    if model == "oblique":
        if oblique is None:
            raise ValueError("config key 'faithful.metaatom_model' is oblique but no oblique meta-atom table was given "
                             "(rule metaatom_oblique)")
        return oblique.transmission_fn(radius)
    if model == "normal_incidence":
        return library_transmission_fn(table, radius)
    raise ValueError(f"config key 'faithful.metaatom_model' must be oblique or normal_incidence, got {model!r}")


def metaatom_model_summary(cfg, table: _TableDispersion, oblique) -> dict:
    """What the faithful PSFs' pillars were: the model, and for the oblique table its checks and held wavelengths."""
    if cfg.faithful.metaatom_model != "oblique" or oblique is None:
        return {"metaatom_model": cfg.faithful.metaatom_model,
                "table_wavelengths_m": [float(w) for w in table.library.wavelengths_m],
                "held_wavelengths_m": sorted(table.held)}
    return {"metaatom_model": "oblique", "factorisation": oblique.settings.get("factorisation"),
            "order": oblique.settings.get("order"), "n_radii": int(oblique.radii_m.size),
            "table_wavelengths_m": [float(w) for w in oblique.wavelengths_m],
            "directions_deg": np.degrees(oblique.directions).round(4).tolist(),
            "cross_power_max": oblique.cross_power_max(),
            "convergence": oblique.report.get("convergence", {}).get("overall"),
            "interpolation": oblique.report.get("interpolation", {}).get("overall"),
            "held_wavelengths_m": sorted(oblique.held)}


def _check_geometry(frontend: FrontEnd, system: OpticalSystem) -> None:
    fs = frontend.system
    for name in ("superpixel_m", "n_superpixels", "sensor_distance_m", "pixel_pitch_m", "aperture"):
        a, b = getattr(fs, name), getattr(system, name)
        if (a != b) if isinstance(a, str) else not math.isclose(float(a), float(b), rel_tol=1e-9):
            raise ValueError(f"frontend.npz has {name} = {a} but the config's optics.{name} = {b}: the front end is "
                             "stale, rerun assemble_frontend")


def filled_radii(frontend: FrontEnd, system: OpticalSystem, radii) -> torch.Tensor:
    """float64 (E, N, N) radii of :func:`read_gds_radii` checked against the front end, NaN (no pillars: outside the
    aperture, opaque and masked by every model) replaced by the front end's radii there."""
    n, e_count = system.n_superpixels, frontend.n_elements
    radius = torch.as_tensor(np.asarray(radii, dtype=np.float64))
    if tuple(radius.shape) != (e_count, n, n):
        raise ValueError(f"radii must have shape ({e_count}, {n}, {n}) (the front end's elements), got "
                         f"{tuple(radius.shape)}")
    if bool(torch.isnan(radius[:, system.superpixel_aperture_mask()]).any()):
        raise ValueError("the GDSII radii leave open superpixels of the aperture without pillars "
                         f"(optics.aperture = {system.aperture}): the layout is stale, rerun metasurface_gds")
    return torch.where(torch.isnan(radius), torch.as_tensor(frontend.radius_m, dtype=torch.float64), radius)


# ----------------------------------------------------------------------------- the simulation
def _simulate(cfg, frontend: FrontEnd, library, radii, *, oblique=None, device: Any = "cpu",
              progress: bool = True) -> dict:
    """Faithful band PSFs (F, E, W, W), ledgers, the cheap PSFs and everything the rows and summary need."""
    from tqdm import tqdm

    fc = cfg.faithful
    bank = frontend.bank
    system = OpticalSystem.from_config(cfg.optics)
    _check_geometry(frontend, system)
    k = bank.kernel_size
    w_loss = loss_window(k, cfg.dko.window_factor)
    window = w_loss if fc.window_px is None else int(fc.window_px)
    if window % 2 == 0 or window < k:
        raise ValueError(f"config key 'faithful.window_px' must be odd and >= the kernel size {k}, got {window}")
    e_count, n = bank.n_elements, system.n_superpixels
    radius = filled_radii(frontend, system, radii)
    radius = radius.to(device)
    pitch = element_pitch_m(cfg)
    numerics = FaithfulNumerics(samples_per_superpixel=fc.samples_per_superpixel, route=fc.route,
                                exact_pixels=fc.exact_pixels, fresnel=fc.fresnel,
                                substrate_index=cfg.metaatoms.substrate_index, window_px=window,
                                pad_factor=fc.pad_factor, element_pitch_m=(pitch, pitch), max_batch=fc.batch_size)
    distance = cfg.optics.object_distances_m[0]
    positions = [tuple(float(a) for a in p) for p in fc.field_positions]
    angles = field_angles_rad(cfg, positions)
    table = _TableDispersion(library)
    channels = sorted({int(c) for c in bank.in_channel.tolist()})
    ledger_keys = ("fresnel_loss", "metasurface_loss", "beyond_band", "evanescent", "band_limited_out", "on_plane",
                   "window", "own_area", "other_elements", "gaps", "off_pixel_grid")
    psfs = torch.zeros(len(angles), e_count, window, window, dtype=torch.float64)
    ledger = {key: torch.zeros(len(angles), e_count, dtype=torch.float64) for key in ledger_keys}
    channel_info, n_psfs, centre_px = {}, 0, [None] * len(angles)
    chunks = {c: torch.nonzero(bank.in_channel == c).flatten().split(fc.batch_size) for c in channels}
    bar = tqdm(total=sum(len(v) for v in chunks.values()) * len(angles), desc="faithful", disable=not progress)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for c in channels:
        first = int(chunks[c][0][0])
        centre_m = float(bank.wavelength_m[first])
        if c >= len(fc.passband_fwhm_m):
            raise ValueError(f"config key 'faithful.passband_fwhm_m' has no entry for input channel {c}")
        fwhm_m = float(fc.passband_fwhm_m[c])
        span = fwhm_m if fc.passband_shape == "flat" else 3 * fwhm_m
        m = fc.samples_per_superpixel or auto_samples_per_superpixel(system.superpixel_m, centre_m - span / 2)
        info_c = {"centre_m": centre_m, "fwhm_m": fwhm_m, "shape": fc.passband_shape, "samples_per_superpixel": m}
        pad = system.pad_factor if fc.pad_factor is None else fc.pad_factor
        big = m * padded_size(n, pad)
        log.info("faithful: channel %d, %d elements: %d x %d field grid (m = %d), about %.2f GB per batch of %d",
                 c, sum(len(i) for i in chunks[c]), big, big, m, 5 * 16 * big * big * fc.batch_size / 1e9, fc.batch_size)
        for f, angle in enumerate(angles):
            t0 = time.perf_counter()
            for idx in chunks[c]:
                fn = transmission_fn(cfg, table, oblique, radius[idx.to(radius.device)])
                psf, info = band_psf(fn, system, numerics, centre_m, fwhm_m, shape=fc.passband_shape,
                                     n_samples=fc.spectral_samples, field_angle_rad=angle, object_distance_m=distance)
                psfs[f, idx] = psf.double().cpu()
                for key in ledger_keys:
                    ledger[key][f, idx] = info["ledger"][key].double().cpu()
                n_psfs += len(info["wavelengths_m"]) * len(idx)
                centre_px[f] = info["centre_px"]
                info_c.update(spectral_samples=info["n_samples"], wavelengths_m=info["wavelengths_m"],
                              weights=info["weights"])
                bar.update(1)
            log.info("faithful: channel %d (%.0f nm, %d spectral samples, m = %d), field (%+.2f, %+.2f) = "
                     "(%.1f, %.1f) deg: %d elements in %.1f s", c, centre_m * 1e9, info_c["spectral_samples"], m,
                     *positions[f], *(math.degrees(a) for a in angle), sum(len(i) for i in chunks[c]),
                     time.perf_counter() - t0)
        channel_info[str(c)] = info_c
    bar.close()
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    cheap, cheap_eff = [], []
    with torch.no_grad():
        for idx in torch.arange(e_count).split(16):
            p, eff = psf_from_radii(radius[idx.to(radius.device)], bank.wavelength_m[idx], system, library, distance,
                                    return_efficiency=True)
            cheap.append(p.double().cpu())
            cheap_eff.append(eff.double().cpu())
    return dict(psfs=psfs, ledger=ledger, cheap=torch.cat(cheap), cheap_eff=torch.cat(cheap_eff), window=window,
                w_loss=w_loss, positions=positions, angles=angles, distance=distance, pitch=pitch, numerics=numerics,
                system=system, channels=channel_info, centre_px=centre_px, table=table, n_psfs=n_psfs,
                metaatoms=metaatom_model_summary(cfg, table, oblique), wall_s=wall_s, cpu_s=cpu_s)


def _rows_and_summary(cfg, frontend: FrontEnd, sim: dict) -> tuple[list[dict], dict]:
    from dko.stage2 import fidelity_table  # dko.stage2 imports dko.frontend: import it when used

    bank = frontend.bank
    k, window, w_loss = bank.kernel_size, sim["window"], sim["w_loss"]
    distance, wf = sim["distance"], cfg.dko.window_factor
    cheap_rows = fidelity_table(sim["cheap"][None], sim["cheap_eff"][None], bank, [distance], wf)
    w_common = min(window, sim["cheap"].shape[-1])
    cheap_w = center_window(sim["cheap"], w_common)
    cheap_k = center_window(sim["cheap"], k)
    cheap_k = cheap_k / cheap_k.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    rows = []
    for f, ((u, v), (ax, ay)) in enumerate(zip(sim["positions"], sim["angles"])):
        led = {key: val[f] for key, val in sim["ledger"].items()}
        psf = sim["psfs"][f]
        faithful_rows = fidelity_table(psf[None], led["on_plane"][None], bank, [distance], wf)
        in_k = center_window(psf, k).sum(dim=(-2, -1))
        # the kernel window's pixels on the element's own sensor area (at an image edge part of it lies on a neighbour's)
        own_k, _, _ = _area_masks(k, sim["centre_px"][f], sim["system"].pixel_pitch_m, sim["numerics"])
        on_target = (center_window(psf, k) * own_k.to(psf.dtype)).sum(dim=(-2, -1))
        f_w = center_window(psf, w_common)
        psf_diff = (f_w - cheap_w).flatten(1).norm(dim=1) / f_w.flatten(1).norm(dim=1).clamp_min(1e-300)
        f_k = center_window(psf, k) / in_k.clamp_min(1e-300)[:, None, None]
        kernel_diff = (f_k - cheap_k).flatten(1).norm(dim=1) / f_k.flatten(1).norm(dim=1).clamp_min(1e-300)
        gamma = math.atan(math.hypot(math.tan(ax), math.tan(ay)))
        columns = {
            "fresnel_loss": led["fresnel_loss"], "metasurface_loss": led["metasurface_loss"],
            "beyond_band": led["beyond_band"], "evanescent": led["evanescent"],
            "band_limited_out": led["band_limited_out"], "on_target": on_target,
            "outside_target": led["own_area"] + led["window"] - on_target, "other_elements": led["other_elements"],
            "gaps": led["gaps"], "off_pixel_grid": led["off_pixel_grid"],
        }
        for e, (fr, cr) in enumerate(zip(faithful_rows, cheap_rows)):
            row = {key: fr[key] for key in ("element", "out_channel", "in_channel", "sign", "wavelength_m",
                                            "object_distance_m")}
            row.update(field_x=u, field_y=v, field_angle_x_deg=math.degrees(ax), field_angle_y_deg=math.degrees(ay),
                       incidence_angle_deg=math.degrees(gamma), relative_illumination=math.cos(gamma))
            row.update({key: fr[key] for key in ("rel_l2", "energy_k", "energy_2k", "energy_k_incident",
                                                 "energy_psf_window", "ncc", "efficiency")})
            row.update({key: float(val[e]) for key, val in columns.items()})
            row.update(cheap_rel_l2=cr["rel_l2"], cheap_energy_k=cr["energy_k"],
                       cheap_energy_k_incident=cr["energy_k_incident"], psf_rel_diff=float(psf_diff[e]),
                       kernel_rel_diff=float(kernel_diff[e]))
            rows.append(row)
    return rows, _summary(cfg, frontend, sim, rows)


def _median(rows: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def _summary(cfg, frontend: FrontEnd, sim: dict, rows: list[dict]) -> dict:
    numerics: FaithfulNumerics = sim["numerics"]
    system: OpticalSystem = sim["system"]
    pad = system.pad_factor if numerics.pad_factor is None else numerics.pad_factor
    fields, by_field = [], {}
    for (u, v), (ax, ay) in zip(sim["positions"], sim["angles"]):
        name = _position_name(u, v)
        sel = [r for r in rows if r["field_x"] == u and r["field_y"] == v]
        zs = system.sensor_distance_m
        fields.append({"name": name, "x": u, "y": v, "field_angle_x_deg": math.degrees(ax),
                       "field_angle_y_deg": math.degrees(ay), "incidence_angle_deg": sel[0]["incidence_angle_deg"],
                       "chief_ray_m": [zs * math.tan(ax), zs * math.tan(ay)]})
        entry = {f"median_{key}": _median(sel, key) for key in
                 ("rel_l2", "cheap_rel_l2", "energy_k", "cheap_energy_k", "on_target", "cheap_energy_k_incident",
                  "ncc", "psf_rel_diff", "kernel_rel_diff")}
        entry["max_rel_l2"] = float(max(r["rel_l2"] for r in sel))
        entry["lost"] = {cat: float(statistics.median(sum(r[c] for c in cols) for r in sel))
                         for cat, cols in _LOSS_CATEGORIES.items()}
        by_field[name] = entry
    return {
        "n_elements": frontend.n_elements, "n_field_positions": len(sim["positions"]),
        "object_distance_m": math.inf if is_infinite_distance(sim["distance"]) else float(sim["distance"]),
        "kernel_size": frontend.kernel_size, "window_px": sim["window"], "loss_window_px": sim["w_loss"],
        "element_pitch_m": sim["pitch"], "route": numerics.route, "fresnel": numerics.fresnel,
        "exact_pixels": numerics.exact_pixels, "pad_factor": pad,
        "plane_m": padded_size(system.n_superpixels, pad) * system.superpixel_m,
        "metaatoms": sim["metaatoms"],
        "channels": sim["channels"], "field_positions": fields, "by_field": by_field,
        "cheap_model": {"model": "dko.optics.psf.psf_from_radii (optics.* numerics, on axis, passband centre)",
                        "median_rel_l2": _median(rows[:frontend.n_elements], "cheap_rel_l2"),
                        "median_energy_k": _median(rows[:frontend.n_elements], "cheap_energy_k")},
        "n_monochromatic_psfs": sim["n_psfs"], "wall_s": sim["wall_s"], "cpu_s": sim["cpu_s"],
        "wall_s_per_psf": sim["wall_s"] / max(1, sim["n_psfs"]),
    }


def faithful_fidelity(cfg, frontend: FrontEnd, library, radii, *, oblique=None, device: Any = "cpu",
                      progress: bool = True) -> tuple[list[dict], dict]:
    """The final design in the faithful model, per element and field position (module docstring).

    Args:
        cfg: :class:`dko.config.Config` (reads ``faithful.*``, ``optics.*`` but the wavelengths, ``data.height``,
            ``data.width``, ``dko.window_factor``, ``dko.element_pitch_m``, ``metaatoms.substrate_index``).
        frontend: the assembled front end (its bank: targets, wavelengths; its layout).
        library: :class:`dko.optics.metaatoms.MetaAtomLibrary` (the cheap model; the faithful pillars with
            ``faithful.metaatom_model: normal_incidence``).
        radii: float (E, N, N) pillar radii, metres (:func:`read_gds_radii`; NaN outside the aperture).
        oblique: :class:`dko.optics.oblique_table.ObliqueTable` (``faithful.metaatom_model: oblique``).
        device: torch device of the simulation.
    Returns:
        (rows: one dict per element and field position, field-major; summary: settings, per field position the
        medians of the faithful and cheap kernel error, the light on target and the light lost per category, the
        time taken).
    """
    sim = _simulate(cfg, frontend, library, radii, oblique=oblique, device=device, progress=progress)
    return _rows_and_summary(cfg, frontend, sim)


def flat_metrics(summary: dict) -> dict[str, float]:
    """The summary's numbers as flat ``{name: value}`` (per field position ``<stat>_<position>``) for tracking."""
    out = {key: float(summary[key]) for key in ("wall_s", "cpu_s", "wall_s_per_psf", "n_monochromatic_psfs")}
    out["cheap_median_rel_l2"] = float(summary["cheap_model"]["median_rel_l2"])
    for name, entry in summary["by_field"].items():
        for key, value in entry.items():
            if isinstance(value, dict):
                out.update({f"lost_{cat}_{name}": float(v) for cat, v in value.items()})
            else:
                out[f"{key}_{name}"] = float(value)
    return out


# ----------------------------------------------------------------------------- figure
def plot_faithful_psfs(targets: np.ndarray, cheap: np.ndarray, centre: np.ndarray, corner: np.ndarray,
                       labels: Sequence[str], titles: Sequence[str], out_png: str | Path) -> Path:
    """Rows of elements, columns target | cheap PSF | faithful PSF at the centre | faithful PSF at the corner.

    Args:
        targets, cheap, centre, corner: float (R, W, W) images (any scale: each panel is shown on its own range).
        labels: R row labels; titles: 4 column titles.
    """
    from dko.plots import _new_figure, _save

    rows = len(targets)
    fig = _new_figure(2.0 * 4, 1.9 * rows + 0.4)
    axes = fig.subplots(rows, 4, squeeze=False)
    for r in range(rows):
        for c, img in enumerate((targets[r], cheap[r], centre[r], corner[r])):
            ax = axes[r, c]
            ax.imshow(np.asarray(img), cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
        axes[r, 0].set_ylabel(labels[r], fontsize=7)
    return _save(fig, out_png)


def _figure(frontend: FrontEnd, sim: dict, rows: list[dict], out_png: str | Path, n_show: int = 6) -> Path:
    bank = frontend.bank
    e_count, window = bank.n_elements, sim["window"]
    radius2 = [u * u + v * v for u, v in sim["positions"]]
    fc, fk = int(np.argmin(radius2)), int(np.argmax(radius2))
    show = sorted(set(np.linspace(0, e_count - 1, min(n_show, e_count)).round().astype(int).tolist()))
    w = min(window, sim["cheap"].shape[-1])
    by = {(r["field_x"], r["field_y"], r["element"]): r for r in rows}
    pc, pk = sim["positions"][fc], sim["positions"][fk]
    labels = []
    for e in show:
        a, b = by[(*pc, e)], by[(*pk, e)]
        labels.append(f"k{int(bank.out_channel[e])} c{int(bank.in_channel[e])} {'+' if bank.sign[e] > 0 else '-'}\n"
                      f"L2 cheap {a['cheap_rel_l2']:.3f}\ncentre {a['rel_l2']:.3f} corner {b['rel_l2']:.3f}\n"
                      f"on target {a['on_target']:.2f} / {b['on_target']:.2f}")
    idx = torch.tensor(show)
    targets = center_window(bank.targets[idx].double(), w).numpy()
    titles = ["target", "cheap model (on axis)", f"faithful at ({pc[0]:g}, {pc[1]:g})",
              f"faithful at ({pk[0]:g}, {pk[1]:g})"]
    return plot_faithful_psfs(targets, center_window(sim["cheap"][idx], w).numpy(),
                              center_window(sim["psfs"][fc][idx], w).numpy(),
                              center_window(sim["psfs"][fk][idx], w).numpy(), labels, titles, out_png)


# ----------------------------------------------------------------------------- the rule's work
def write_faithful_fidelity(cfg, frontend_path: str | Path, gds_path: str | Path, library, csv_path: str | Path,
                            summary_path: str | Path, figure_path: str | Path, *, oblique=None, device: Any = "cpu",
                            progress: bool = True) -> dict:
    """Rule ``faithful_fidelity``: the radii of ``gds_path`` (:func:`read_gds_radii`) re-simulated
    (:func:`faithful_fidelity`); writes the rows (CSV), the summary (JSON) and the figure (PNG). Returns the summary."""
    frontend = load_frontend(frontend_path)
    system = frontend.system
    t0 = time.perf_counter()
    radii = read_gds_radii(gds_path, frontend.element_centers_m, system.n_superpixels, system.superpixel_m)
    read_s = time.perf_counter() - t0
    sim = _simulate(cfg, frontend, library, radii, oblique=oblique, device=device, progress=progress)
    rows, summary = _rows_and_summary(cfg, frontend, sim)
    summary["gds_read_s"] = read_s
    write_csv(csv_path, rows)
    write_json(summary_path, summary)
    _figure(frontend, sim, rows, figure_path)
    for name, entry in summary["by_field"].items():
        log.info("faithful at %s: median rel L2 %.4f (cheap %.4f), on target %.3f (cheap %.3f), PSF difference "
                 "%.3f, lost: %s", name, entry["median_rel_l2"], entry["median_cheap_rel_l2"], entry["median_on_target"],
                 entry["median_cheap_energy_k_incident"], entry["median_psf_rel_diff"],
                 ", ".join(f"{k} {v:.3f}" for k, v in entry["lost"].items()))
    log.info("faithful: %d monochromatic PSFs in %.1f s (%.3f s each; CPU %.1f s), GDSII read in %.1f s",
             summary["n_monochromatic_psfs"], summary["wall_s"], summary["wall_s_per_psf"], summary["cpu_s"], read_s)
    return summary
