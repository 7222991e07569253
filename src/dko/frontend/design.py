"""Design variables -> PSFs, gains and array geometry: the optics that DKO (stage 2) and E2E share.

Everything that both methods must do *identically* lives here, so that their comparison is fair:

* Design parametrisations (``dko.parametrization``), the meaning of the design variable ``p`` (E, N, N):
  ``phase`` (default) - the target phase of each superpixel in radians, periodic; the pillar radius is the
  meta-atom library's reverse lookup of that phase (:meth:`MetaAtomLibrary.radius_for_phase`) and the
  transmission is the realised one, with a straight-through gradient (:meth:`MetaAtomLibrary.transmission_for_phase`).
  ``radius`` - a logit: ``r = r_min + (r_max - r_min) sigmoid(p)``, transmission ``t(r, lambda)`` by the
  differentiable interpolant. Measured (8 elements, NA 0.36, 1500 steps): the radius parametrisation cannot
  wrap a superpixel's phase through 2 pi (sigmoid ends) and keeps ~40-50 % of the light in the kernel window
  where the phase parametrisation keeps ~90 % at a lower shape error.
* :func:`initial_designs` - the initialisation: a hyperbolic lens focused on the sensor (its wrapped phase, or
  the library's reverse lookup of it for ``radius``), plus Gaussian noise on the design variable.
* :func:`element_psfs` - the PSF model: design ``p`` (E, N, N) -> complex transmission at the element's
  wavelength (:func:`design_transmission`) -> band-limited ASM PSF on the sensor
  (:func:`dko.optics.psf.psf_from_transmission`), for every object distance: (D, E, P, P), in units of the
  incident power, and the transmitted efficiency (D, E). Differentiable in ``p``.
* :func:`design_radius` / :func:`radius_psfs` - the realised pillar radii of a design and their PSFs (the
  physics of the fabricated array; for ``phase`` identical to :func:`element_psfs`'s forward values).
* :func:`calibrate_gains` - the electronic gains applied to the realised PSFs.
* Geometry from the config: :func:`optimization_distances` / :func:`evaluation_distances` (the object
  distances PSFs are fitted at and stored at), :func:`element_pitch_m` and :func:`array_layout` (where the
  elements sit on the array), :func:`psf_fft_flops` (the FFT cost of one :func:`element_psfs` call).

Gain calibration (``dko.gain_calibration``): the kernel bank's gain ``g = sum(W+-)`` assumes a PSF that sums
to 1. A realised PSF sums to its efficiency ``eta`` over the simulated window, and only part of that lands in
the k x k kernel window. ``total`` (default) uses ``g / sum(PSF over the whole P x P window)``: the
response to a uniform scene (the DC gain, which the folded bias relies on) is exactly the electronic one.
``window`` uses ``g / sum(PSF over k x k)``: inside the kernel window the realised kernel then equals the
target up to its shape error (this is how :func:`dko.dko.fidelity_metrics` defines the error), and the light
outside adds to it. ``none`` keeps ``g`` (an uncalibrated system: the efficiency scales every feature).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from dko.dko import center_window
from dko.frontend.bank import KernelBank
from dko.optics.psf import (OpticalSystem, ideal_lens_phase, is_infinite_distance, per_element_wavelength,
                            psf_from_transmission, transmission_for_elements, wrap_phase)

__all__ = ["PARAMETRIZATIONS", "GAIN_CALIBRATIONS", "design_radius", "design_transmission", "initial_designs",
           "element_psfs", "radius_psfs", "calibrate_gains", "array_layout", "optimization_distances",
           "evaluation_distances", "element_pitch_m", "psf_fft_flops"]

GAIN_CALIBRATIONS = ("total", "window", "none")
PARAMETRIZATIONS = ("phase", "radius")


def _check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"dko.parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")


def design_radius(p: torch.Tensor, bank: KernelBank, library, parametrization: str = "phase") -> torch.Tensor:
    """Pillar radii (float64 (E, N, N), metres) realising the design variables ``p`` (E, N, N) of ``bank``'s
    elements (each at its wavelength). Not differentiable for ``phase`` (a lookup)."""
    _check_parametrization(parametrization)
    if parametrization == "radius":
        return library.radius_from_design(p.double())
    return per_element_wavelength(library.radius_for_phase, p.detach(), bank.wavelength_m)


def design_transmission(p: torch.Tensor, bank: KernelBank, library, parametrization: str = "phase") -> torch.Tensor:
    """Complex (E, N, N) transmission of the design variables ``p`` (E, N, N), differentiable in ``p``."""
    _check_parametrization(parametrization)
    if parametrization == "radius":
        return transmission_for_elements(library, library.radius_from_design(p), bank.wavelength_m)
    return per_element_wavelength(library.transmission_for_phase, p, bank.wavelength_m)


# ----------------------------------------------------------------------------- designs -> PSFs
def initial_designs(bank: KernelBank, system: OpticalSystem, library, *, noise_std: float, seed: int,
                    focus_distance_m: float | None = None, parametrization: str = "phase") -> torch.Tensor:
    """Focusing-lens initialisation of every element, plus noise.

    Element e gets the hyperbolic lens (:func:`dko.optics.psf.ideal_lens_phase`) at its wavelength that
    images a point at ``focus_distance_m`` (None = infinity) onto the sensor: its wrapped phase
    (``phase`` parametrisation; the realised radii are the library's reverse lookup of it) or, for
    ``radius``, the design variable of the radius whose transmission is closest to ``exp(i phase)``; then
    ``noise_std * N(0, 1)`` is added to the design variable (seeded; radians for ``phase``).

    Args:
        bank: the elements (only ``wavelength_m`` (E,) is used).
        system: optics geometry (N = ``system.n_superpixels``).
        library: :class:`dko.optics.metaatoms.MetaAtomLibrary`.
        noise_std: standard deviation of the noise on the design variable (radians or logit radius).
        seed: seed of the noise.
        focus_distance_m: object distance the lens is focused at (None = infinity).
        parametrization: ``phase`` or ``radius`` (see the module docstring).
    Returns:
        float32 (E, N, N) design variables ``p`` on the bank's device.
    """
    _check_parametrization(parametrization)
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"dko.init_noise_std must be >= 0, got {noise_std!r}")
    device = bank.targets.device
    wls = [float(w) for w in bank.wavelength_m.detach().cpu().tolist()]
    if not wls:
        raise ValueError("the kernel bank has no element")
    designs = []
    lens = {}
    for wl in wls:
        if wl not in lens:
            phase = wrap_phase(ideal_lens_phase(system, wl, focus_distance_m))
            lens[wl] = (phase if parametrization == "phase" else library.design_for_phase(phase, wl)).to(torch.float32)
        designs.append(lens[wl])
    p = torch.stack(designs)
    if noise_std > 0:
        g = torch.Generator().manual_seed(int(seed))
        p = p + noise_std * torch.randn(p.shape, generator=g, dtype=torch.float32)
    return p.to(device)


def element_psfs(p: torch.Tensor, bank: KernelBank, system: OpticalSystem, library,
                 object_distances_m: Sequence[float | None], parametrization: str = "phase"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """PSFs of design variables ``p`` at every object distance (the one PSF model of DKO and E2E).

    Args:
        p: float (E, N, N) design variables (see ``parametrization``), differentiable.
        bank: the E elements (their ``wavelength_m`` is used; element e is simulated at its wavelength).
        system: optics geometry and numerics.
        library: meta-atom library.
        object_distances_m: D point-source distances, metres (None / inf = infinity).
        parametrization: ``phase`` or ``radius`` (module docstring).
    Returns:
        ``psfs`` real (D, E, P, P) (P = ``system.psf_size_px``, ``system.real_dtype``) in units of the incident
        power, and ``efficiency`` (D, E): transmitted fraction over the whole simulated sensor plane.
    """
    if p.ndim != 3 or p.shape[0] != bank.n_elements:
        raise ValueError(f"p must have shape (E={bank.n_elements}, N, N), got {tuple(p.shape)}")
    return _psfs_of_transmission(design_transmission(p, bank, library, parametrization), bank, system,
                                 object_distances_m)


def radius_psfs(radius_m: torch.Tensor, bank: KernelBank, system: OpticalSystem, library,
                object_distances_m: Sequence[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`element_psfs` of realised pillar radii (E, N, N) metres: the PSFs of the fabricated array."""
    if radius_m.ndim != 3 or radius_m.shape[0] != bank.n_elements:
        raise ValueError(f"radius_m must have shape (E={bank.n_elements}, N, N), got {tuple(radius_m.shape)}")
    return _psfs_of_transmission(transmission_for_elements(library, radius_m, bank.wavelength_m), bank, system,
                                 object_distances_m)


def _psfs_of_transmission(t: torch.Tensor, bank: KernelBank, system: OpticalSystem,
                          object_distances_m: Sequence[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(object_distances_m) == 0:
        raise ValueError("object_distances_m must list at least one distance")
    psfs, effs = [], []
    for z in object_distances_m:
        psf, eff = psf_from_transmission(t, bank.wavelength_m, system, z, return_efficiency=True)
        psfs.append(psf)
        effs.append(eff)
    return torch.stack(psfs), torch.stack(effs)


def calibrate_gains(psf: torch.Tensor, kernel_gains: torch.Tensor, kernel_size: int, mode: str = "total") -> torch.Tensor:
    """Electronic gains for realised PSFs (see the module docstring).

    Args:
        psf: (E, P, P) realised PSFs (P odd >= k), units of the incident power.
        kernel_gains: (E,) gains ``g = sum(W+-)`` of the kernel bank.
        kernel_size: k.
        mode: ``total`` (g / PSF sum), ``window`` (g / PSF sum in k x k) or ``none`` (g).
    Returns:
        (E,) gains, dtype of ``kernel_gains``.
    """
    if mode not in GAIN_CALIBRATIONS:
        raise ValueError(f"dko.gain_calibration must be one of {GAIN_CALIBRATIONS}, got {mode!r}")
    if mode == "none":
        return kernel_gains.clone()
    region = psf if mode == "total" else center_window(psf, kernel_size)
    s = region.sum(dim=(-2, -1)).to(kernel_gains.dtype)
    if torch.any(s <= 0):
        bad = torch.nonzero(s <= 0).flatten().tolist()
        raise ValueError(f"elements {bad[:10]} put no light in the {mode} window: cannot calibrate their gains")
    return kernel_gains / s


def array_layout(bank: KernelBank, pitch_m: float) -> np.ndarray:
    """Element centres on the array, float64 (E, 2) (x, y) metres, centred on the origin.

    Column = output channel k (left to right), row = (input channel c, sign): rows ``2c`` (positive part)
    and ``2c + 1`` (negative part), top to bottom, so the elements behind one colour filter form a band of
    two rows. Every (k, c, sign) has its slot; a dropped (all-zero) part leaves its slot empty.
    """
    if not (pitch_m > 0 and math.isfinite(pitch_m)):
        raise ValueError(f"dko.element_pitch_m must be positive, got {pitch_m!r}")
    cols = bank.out_channel.detach().cpu().numpy().astype(np.float64)
    rows = 2 * bank.in_channel.detach().cpu().numpy() + (bank.sign.detach().cpu().numpy() < 0)
    n_cols, n_rows = bank.n_out, 2 * bank.n_in
    x = (cols - (n_cols - 1) / 2) * pitch_m
    y = ((n_rows - 1) / 2 - rows) * pitch_m
    return np.stack([x, y], axis=1)


# ----------------------------------------------------------------------------- geometry from the config
def optimization_distances(cfg) -> list[float | None]:
    """Object distances of the loss: ``optics.object_distances_m[0]`` (``single``) or all of them (``multi``)."""
    dists = list(cfg.optics.object_distances_m)
    return dists[:1] if cfg.dko.distance_mode == "single" else dists  # the schema allows single and multi only


def _same(a: float | None, b: float | None) -> bool:
    if is_infinite_distance(a) or is_infinite_distance(b):
        return is_infinite_distance(a) and is_infinite_distance(b)
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def evaluation_distances(cfg) -> list[float | None]:
    """The optimisation distances (first: the design distance), then the other ``dko.fidelity_distances_m``
    ascending (infinity last)."""
    out = optimization_distances(cfg)
    rest = [z for z in cfg.dko.fidelity_distances_m if not any(_same(z, o) for o in out)]
    rest = sorted({math.inf if is_infinite_distance(z) else float(z) for z in rest})
    return out + [None if math.isinf(z) else z for z in rest]


def element_pitch_m(cfg) -> float:
    """``dko.element_pitch_m`` or, when null, max(aperture, max(data.height, data.width) * pixel pitch)."""
    if cfg.dko.element_pitch_m is not None:
        return float(cfg.dko.element_pitch_m)
    aperture = cfg.optics.n_superpixels * cfg.optics.superpixel_m
    image = max(cfg.data.height, cfg.data.width) * cfg.optics.pixel_pitch_m
    return float(max(aperture, image))


def psf_fft_flops(system: OpticalSystem, n_elements: int, n_distances: int, *, backward: bool = True) -> int:
    """Estimated FLOPs of the FFTs of one :func:`element_psfs` call (``torch.utils.flop_counter`` counts none).

    Per element and distance: one 2-D FFT of the padded M x M grid (5 M^2 log2(M^2)), the row inverse FFTs of
    all M rows (5 M^2 log2 M) and the column inverse FFTs of the PSF window's columns (5 M w log2 M), with
    the backward pass counted as the same again.
    """
    m = system.padded_sim_size
    w = math.ceil(system.psf_size_px * system.pixel_pitch_m / system.sim_pitch_m) + 2
    per = 5 * m * m * math.log2(m * m) + 5 * m * m * math.log2(m) + 5 * m * min(w, m) * math.log2(m)
    return int(per * n_elements * n_distances * (2 if backward else 1))
