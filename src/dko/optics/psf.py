"""Point-spread functions of metasurface elements (DESIGN.md section 3).

One element = an ``N x N`` grid of superpixels of side ``superpixel_m`` (each a block of identical
pillars) behind an aperture of side/diameter ``D = N * superpixel_m``, at one wavelength. For an
on-axis point source at object distance ``z_o`` the PSF is computed as

1. incident field on the metasurface: spherical wave ``(z_o / R) exp(i k (R - z_o))``,
   ``R = sqrt(x^2 + y^2 + z_o^2)`` (the constant phase ``exp(i k z_o)`` is dropped), or a plane wave
   of amplitude 1 for ``z_o = None`` / ``inf`` (infinity);
2. times the aperture (circular: sample centres within ``D/2`` of the axis; square: the whole grid)
   and the complex transmission ``t`` of every superpixel (piecewise constant; the simulation grid
   samples each superpixel ``oversample x oversample`` times);
3. band-limited angular-spectrum propagation over ``sensor_distance_m`` on a grid zero-padded by
   ``pad_factor`` (:func:`dko.optics.propagation.asm_propagate`);
4. ``|U|^2`` integrated over square sensor pixels of pitch ``pixel_pitch_m`` by exact area
   resampling (each simulation sample is a uniform square cell; a pixel receives the overlapping
   fraction of every cell, so any pixel/sample ratio works and energy is conserved);
5. divided by the incident energy ``sum |U_in|^2`` over the aperture: the PSF's sum over all pixels
   is the transmitted (and propagated) efficiency, 1 for a lossless phase mask.

The PSF is returned on a ``psf_size_px x psf_size_px`` window of sensor pixels (odd size), the
centre pixel centred on the optical axis; array orientation (row = y, column = x) is the same as
the radius / phase maps'. The efficiency over the whole simulated sensor plane is available with
``return_efficiency=True``.

Geometry sanity (ideal lens focused at infinity, circular aperture): first Airy zero at
``1.22 lambda z_s / D``; a point at finite ``z_o`` is defocused into a disk of diameter about
``D z_s / z_o`` (see :func:`geometric_defocus_diameter_m`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from dko.optics.propagation import asm_transfer_function, center_pad, padded_size

__all__ = [
    "OpticalSystem",
    "TransmissionLibrary",
    "psf_from_transmission",
    "psf_from_phase",
    "psf_from_radii",
    "psf_bank",
    "transmission_for_elements",
    "ideal_lens_phase",
    "ideal_lens_transmission",
    "ideal_lens_radii",
    "airy_first_zero_m",
    "geometric_defocus_diameter_m",
    "is_infinite_distance",
    "wrap_phase",
    "clear_caches",
]

_COMPLEX = {"complex64": torch.complex64, "complex128": torch.complex128}
_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


class TransmissionLibrary(Protocol):
    """What the PSF code needs from :class:`dko.optics.metaatoms.MetaAtomLibrary`."""

    def transmission(self, radius_m: torch.Tensor, wavelength_m: float) -> torch.Tensor: ...


@dataclass(frozen=True)
class OpticalSystem:
    """Geometry and numerics of one metasurface element and its sensor (all lengths in metres).

    Attributes:
        superpixel_m: superpixel side.
        n_superpixels: N, superpixels per side; aperture D = N * superpixel_m.
        sensor_distance_m: metasurface-to-sensor distance z_s.
        pixel_pitch_m: sensor pixel pitch.
        aperture: ``circular`` or ``square``.
        pad_factor: zero padding of the simulation grid (>= 1).
        oversample: simulation samples per superpixel side (integer >= 1).
        psf_size_px: side of the returned PSF window in sensor pixels (odd).
        dtype: torch.complex64 (default) or torch.complex128.
    """

    superpixel_m: float
    n_superpixels: int
    sensor_distance_m: float
    pixel_pitch_m: float
    aperture: str = "circular"
    pad_factor: float = 2.0
    oversample: int = 1
    psf_size_px: int = 21
    dtype: torch.dtype = torch.complex64

    def __post_init__(self):
        for name in ("superpixel_m", "sensor_distance_m", "pixel_pitch_m"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"optics.{name} must be a positive finite number, got {value!r}")
        if not isinstance(self.n_superpixels, int) or self.n_superpixels < 2:
            raise ValueError(f"optics.n_superpixels must be an integer >= 2, got {self.n_superpixels!r}")
        if self.aperture not in ("circular", "square"):
            raise ValueError(f"optics.aperture must be 'circular' or 'square', got {self.aperture!r}")
        if not (self.pad_factor >= 1):
            raise ValueError(f"optics.pad_factor must be >= 1, got {self.pad_factor!r}")
        if not isinstance(self.oversample, int) or self.oversample < 1:
            raise ValueError(f"optics.oversample must be an integer >= 1, got {self.oversample!r}")
        if not isinstance(self.psf_size_px, int) or self.psf_size_px < 1 or self.psf_size_px % 2 == 0:
            raise ValueError(f"optics.psf_size_px must be an odd positive integer, got {self.psf_size_px!r}")
        if self.dtype not in _REAL_OF:
            raise TypeError(f"optics.dtype must be complex64 or complex128, got {self.dtype}")
        window_m = self.psf_size_px * self.pixel_pitch_m
        if window_m > self.grid_extent_m * (1 + 1e-9):
            raise ValueError(
                f"optics.psf_size_px ({self.psf_size_px}) x pixel_pitch_m ({self.pixel_pitch_m}) = {window_m:.3e} m "
                f"exceeds the simulated sensor plane ({self.grid_extent_m:.3e} m = n_superpixels x superpixel_m x "
                "pad_factor): raise pad_factor or lower psf_size_px")

    @classmethod
    def from_config(cls, optics: Any, **overrides) -> "OpticalSystem":
        """Build from a :class:`dko.config.OpticsConfig` (or any object with the same attributes)."""
        kwargs = dict(superpixel_m=optics.superpixel_m, n_superpixels=optics.n_superpixels,
                      sensor_distance_m=optics.sensor_distance_m, pixel_pitch_m=optics.pixel_pitch_m,
                      aperture=optics.aperture, pad_factor=optics.pad_factor, oversample=optics.oversample,
                      psf_size_px=optics.psf_size_px, dtype=_COMPLEX[optics.dtype])
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def real_dtype(self) -> torch.dtype:
        return _REAL_OF[self.dtype]

    @property
    def aperture_m(self) -> float:
        """Aperture side / diameter D, metres."""
        return self.n_superpixels * self.superpixel_m

    @property
    def sim_pitch_m(self) -> float:
        return self.superpixel_m / self.oversample

    @property
    def sim_size(self) -> int:
        """Samples per side of the unpadded simulation grid."""
        return self.n_superpixels * self.oversample

    @property
    def padded_sim_size(self) -> int:
        return padded_size(self.sim_size, self.pad_factor)

    @property
    def grid_extent_m(self) -> float:
        """Side of the padded simulation grid (= the simulated sensor plane), metres."""
        return self.padded_sim_size * self.sim_pitch_m

    def sample_coords_m(self, device=None) -> torch.Tensor:
        """float64 (sim_size,) coordinates of the simulation samples, axis at the grid centre."""
        n = self.sim_size
        return (torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2) * self.sim_pitch_m

    def superpixel_coords_m(self, device=None) -> torch.Tensor:
        """float64 (N,) coordinates of the superpixel centres."""
        n = self.n_superpixels
        return (torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2) * self.superpixel_m

    def aperture_mask(self, device=None) -> torch.Tensor:
        """bool (sim_size, sim_size): True where light passes."""
        x = self.sample_coords_m(device)
        if self.aperture == "square":
            return torch.ones(x.numel(), x.numel(), dtype=torch.bool, device=device)
        r2 = x[:, None] ** 2 + x[None, :] ** 2
        return r2 <= (self.aperture_m / 2) ** 2

    def superpixel_aperture_mask(self, device=None) -> torch.Tensor:
        """bool (N, N): superpixels whose centre lies inside the aperture (for layouts / GDS)."""
        x = self.superpixel_coords_m(device)
        if self.aperture == "square":
            return torch.ones(x.numel(), x.numel(), dtype=torch.bool, device=device)
        return x[:, None] ** 2 + x[None, :] ** 2 <= (self.aperture_m / 2) ** 2


def is_infinite_distance(distance_m: float | None) -> bool:
    """True for ``None`` or ``inf`` (a point source at infinity = a plane wave)."""
    return distance_m is None or math.isinf(distance_m)


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """Phase wrapped into [0, 2 pi)."""
    return torch.remainder(phase, 2 * math.pi)


def airy_first_zero_m(wavelength_m: float, sensor_distance_m: float, aperture_m: float) -> float:
    """Radius of the first Airy zero, 1.22 lambda z_s / D (more precisely 3.8317 / pi)."""
    return 3.831705970207512 / math.pi * wavelength_m * sensor_distance_m / aperture_m


def geometric_defocus_diameter_m(aperture_m: float, focal_length_m: float, sensor_distance_m: float,
                                 object_distance_m: float | None) -> float:
    """Geometric blur-disk diameter of a thin lens (focal length f) for a point at z_o, sensor at z_s.

    The lens images the point at z_i = 1 / (1/f - 1/z_o); the cone of diameter D converging to z_i
    crosses the sensor plane with diameter B = D |z_i - z_s| / z_i = D |1 - z_s (1/f - 1/z_o)|.
    For a lens focused at infinity (z_s = f) this is B = D z_s / z_o.
    """
    inv_zo = 0.0 if is_infinite_distance(object_distance_m) else 1.0 / object_distance_m
    return aperture_m * abs(1.0 - sensor_distance_m * (1.0 / focal_length_m - inv_zo))


# ----------------------------------------------------------------------------- cached grids
def _unique_index(wavelengths: tuple[float, ...]) -> tuple[tuple[float, ...], list[int]]:
    unique = tuple(sorted(set(wavelengths)))
    return unique, [unique.index(w) for w in wavelengths]


def _device_key(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


@functools.lru_cache(maxsize=32)
def _illumination(system: OpticalSystem, wavelengths: tuple[float, ...], object_distance_m: float | None,
                  device: str) -> tuple[torch.Tensor, float]:
    """Incident field times aperture, (W, M, M) complex, and its energy sum |U_in|^2 (W-independent)."""
    x = system.sample_coords_m(device)
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    mask = system.aperture_mask(device).to(torch.float64)
    if is_infinite_distance(object_distance_m):
        field = torch.stack([torch.complex(mask, torch.zeros_like(mask)) for _ in wavelengths])
        amplitude = mask
    else:
        z = float(object_distance_m)
        if z <= 0:
            raise ValueError(f"object distance must be positive (or null for infinity), got {object_distance_m}")
        radius = torch.sqrt(r2 + z * z)
        amplitude = mask * z / radius
        path = r2 / (radius + z)  # = R - z_o without cancellation
        field = torch.stack([torch.polar(amplitude, 2 * math.pi / wl * path) for wl in wavelengths])
    energy = float((amplitude**2).sum())
    return field.to(system.dtype), energy


def _overlap_matrix(n_px: int, pixel_m: float, n_cells: int, cell_m: float) -> torch.Tensor:
    """float64 (n_px, n_cells): fraction of each (centred) cell inside each (centred) pixel."""
    pc = (torch.arange(n_px, dtype=torch.float64) - (n_px - 1) / 2) * pixel_m
    cc = (torch.arange(n_cells, dtype=torch.float64) - (n_cells - 1) / 2) * cell_m
    lo = torch.maximum(pc[:, None] - pixel_m / 2, cc[None, :] - cell_m / 2)
    hi = torch.minimum(pc[:, None] + pixel_m / 2, cc[None, :] + cell_m / 2)
    return torch.clamp(hi - lo, min=0.0) / cell_m


@functools.lru_cache(maxsize=32)
def _resampler(system: OpticalSystem, device: str) -> tuple[torch.Tensor, int, int]:
    """Overlap matrix restricted to the simulation samples that touch the PSF window: (P, hi - lo), lo, hi."""
    a = _overlap_matrix(system.psf_size_px, system.pixel_pitch_m, system.padded_sim_size, system.sim_pitch_m)
    used = torch.nonzero(a.sum(dim=0) > 0).reshape(-1)
    lo, hi = int(used[0]), int(used[-1]) + 1
    return a[:, lo:hi].to(device=device, dtype=system.real_dtype).contiguous(), lo, hi


def clear_caches() -> None:
    """Drop cached illuminations, resampling matrices and transfer functions (frees device memory)."""
    from dko.optics.propagation import clear_transfer_cache

    _illumination.cache_clear()
    _resampler.cache_clear()
    clear_transfer_cache()


# ----------------------------------------------------------------------------- PSFs
def _as_wavelength_tuple(wavelength_m, n_elements: int) -> tuple[float, ...]:
    if isinstance(wavelength_m, (int, float)):
        values = [float(wavelength_m)] * n_elements
    elif isinstance(wavelength_m, torch.Tensor):
        values = wavelength_m.detach().reshape(-1).cpu().tolist()
    else:
        values = [float(w) for w in wavelength_m]
    if len(values) != n_elements:
        raise ValueError(f"got {len(values)} wavelengths for {n_elements} elements (need one per element)")
    for w in values:
        if not (math.isfinite(w) and 1e-8 < w < 1e-4):
            raise ValueError(f"wavelength_m must be in metres (e.g. 5.5e-7), got {w}")
    return tuple(float(w) for w in values)


def psf_from_transmission(transmission: torch.Tensor, wavelength_m: float | Sequence[float] | torch.Tensor,
                          system: OpticalSystem, object_distance_m: float | None = None, *,
                          return_efficiency: bool = False):
    """PSFs of a batch of elements given their complex superpixel transmissions.

    Args:
        transmission: complex (E, N, N) (or (N, N)) transmission of every superpixel (|t| <= 1).
            Differentiable. Cast to ``system.dtype``.
        wavelength_m: one wavelength for all elements, or E (one per element), metres.
        system: geometry and numerics.
        object_distance_m: point-source distance z_o, metres; None or inf = infinity.
        return_efficiency: also return the transmitted efficiency over the whole simulated plane.
    Returns:
        psf: real (E, P, P) (P = ``system.psf_size_px``) of ``system.real_dtype``; or (psf,
        efficiency (E,)) with ``return_efficiency``. Unbatched input gives unbatched output.
    """
    if not isinstance(transmission, torch.Tensor):
        raise TypeError(f"transmission must be a torch.Tensor, got {type(transmission).__name__}")
    squeeze = transmission.ndim == 2
    t = transmission[None] if squeeze else transmission
    n = system.n_superpixels
    if t.ndim != 3 or tuple(t.shape[-2:]) != (n, n):
        raise ValueError(f"transmission must have shape (E, {n}, {n}) for optics.n_superpixels={n}, "
                         f"got {tuple(transmission.shape)}")
    if not t.is_complex():
        t = torch.complex(t.to(system.real_dtype), torch.zeros_like(t, dtype=system.real_dtype))
    t = t.to(system.dtype)
    wls = _as_wavelength_tuple(wavelength_m, t.shape[0])
    device = _device_key(t.device)
    unique, index = _unique_index(wls)
    illum, energy = _illumination(system, unique, None if is_infinite_distance(object_distance_m)
                                  else float(object_distance_m), device)
    if system.oversample > 1:
        t = t.repeat_interleave(system.oversample, dim=-2).repeat_interleave(system.oversample, dim=-1)
    a, lo, hi = _resampler(system, device)
    m = system.padded_sim_size
    psfs, effs, positions = [], [], []
    # one propagation per wavelength group: the transfer function broadcasts, no gather of padded grids
    for u, wl in enumerate(unique):
        if len(unique) == 1:
            t_group = t
        else:
            pos = torch.tensor([e for e, i in enumerate(index) if i == u], device=t.device)
            positions.append(pos)
            t_group = t.index_select(0, pos)
        # = asm_propagate(..., crop=False) evaluated only where the PSF window needs it: the inverse FFT
        # runs over all columns but only over the rows [lo, hi) of the window (separable transform)
        field = center_pad(illum[u] * t_group, (m, m))
        h = asm_transfer_function((m, m), system.sim_pitch_m, wl, system.sensor_distance_m, device=t.device,
                                  dtype=system.dtype)
        spectrum = torch.fft.fft2(field) * h
        rows = torch.fft.ifft(spectrum, dim=-1)[..., lo:hi]
        out = torch.fft.ifft(rows, dim=-2)[..., lo:hi, :]
        window = torch.view_as_real(out).square().sum(dim=-1)  # |U|^2 near the axis
        psfs.append(torch.matmul(torch.matmul(a, window), a.transpose(0, 1)) / energy)
        if return_efficiency:  # Parseval: sum |U|^2 over the padded plane = sum |FFT|^2 / m^2
            effs.append(torch.view_as_real(spectrum).square().sum(dim=(-3, -2, -1)) / (m * m) / energy)
    if len(unique) == 1:
        psf = psfs[0]
        efficiency = effs[0] if return_efficiency else None
    else:
        order = torch.argsort(torch.cat(positions))
        psf = torch.cat(psfs).index_select(0, order)
        efficiency = torch.cat(effs).index_select(0, order) if return_efficiency else None
    if squeeze:
        psf = psf[0]
    if not return_efficiency:
        return psf
    return psf, (efficiency[0] if squeeze else efficiency)


def psf_from_phase(phase: torch.Tensor, wavelength_m, system: OpticalSystem, object_distance_m: float | None = None,
                   **kwargs):
    """:func:`psf_from_transmission` of the lossless phase mask ``exp(i phase)``; phase real (E, N, N), radians."""
    phase = phase.to(system.real_dtype)
    return psf_from_transmission(torch.polar(torch.ones_like(phase), phase), wavelength_m, system,
                                 object_distance_m, **kwargs)


def per_element_wavelength(fn: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor,
                           wavelength_m: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``fn(x[e], wavelength_m[e])`` for every element of ``x`` (E, ...) (or unbatched), one call per distinct
    wavelength (``fn(x_subset, wavelength)`` must map (E_w, ...) to (E_w, ...)); differentiable in ``x``."""
    squeeze = x.ndim == 2
    r = x[None] if squeeze else x
    wls = _as_wavelength_tuple(wavelength_m, r.shape[0])
    unique, index = _unique_index(wls)
    if len(unique) == 1:
        t = fn(r, unique[0])
    else:
        index_t = torch.tensor(index, device=r.device)
        parts, positions = [], []
        for u, wl in enumerate(unique):
            sel = torch.nonzero(index_t == u).reshape(-1)
            parts.append(fn(r.index_select(0, sel), wl))
            positions.append(sel)
        order = torch.argsort(torch.cat(positions))
        t = torch.cat(parts).index_select(0, order)
    return t[0] if squeeze else t


def transmission_for_elements(library: TransmissionLibrary, radius_m: torch.Tensor,
                              wavelength_m: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Complex (E, N, N) transmission of radius maps (E, N, N) metres, element e at wavelength_m[e].

    Calls ``library.transmission(radius, wavelength)`` once per distinct wavelength (differentiable
    in ``radius_m``).
    """
    return per_element_wavelength(library.transmission, radius_m, wavelength_m)


def psf_from_radii(radius_m: torch.Tensor, wavelength_m, system: OpticalSystem, library: TransmissionLibrary,
                   object_distance_m: float | None = None, **kwargs):
    """PSFs of pillar-radius maps (E, N, N) metres, realised with a meta-atom ``library``."""
    return psf_from_transmission(transmission_for_elements(library, radius_m, wavelength_m), wavelength_m, system,
                                 object_distance_m, **kwargs)


def psf_bank(transmission: torch.Tensor, wavelength_m, system: OpticalSystem,
             object_distances_m: Sequence[float | None]) -> torch.Tensor:
    """PSFs for several object distances: real (D, E, P, P)."""
    if len(object_distances_m) == 0:
        raise ValueError("object_distances_m must list at least one distance")
    return torch.stack([psf_from_transmission(transmission, wavelength_m, system, z) for z in object_distances_m])


# ----------------------------------------------------------------------------- ideal lens
def ideal_lens_phase(system: OpticalSystem, wavelength_m, focus_distance_m: float | None = None, *,
                     device=None) -> torch.Tensor:
    """Hyperbolic lens phase at the superpixel centres (unwrapped, radians, float64).

    Focuses a point at ``focus_distance_m`` (None = infinity) onto the axis at ``sensor_distance_m``:
    phi(r) = -k (sqrt(r^2 + z_s^2) - z_s) - k (sqrt(r^2 + z_f^2) - z_f) (second term only for finite z_f).

    Args:
        wavelength_m: float (-> (N, N)) or a sequence of E wavelengths (-> (E, N, N)).
    """
    x = system.superpixel_coords_m(device)
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    zs = system.sensor_distance_m
    path = r2 / (torch.sqrt(r2 + zs * zs) + zs)
    if not is_infinite_distance(focus_distance_m):
        zf = float(focus_distance_m)
        if zf <= 0:
            raise ValueError(f"focus_distance_m must be positive or None, got {focus_distance_m}")
        path = path + r2 / (torch.sqrt(r2 + zf * zf) + zf)
    if isinstance(wavelength_m, (int, float)):
        return -2 * math.pi / float(wavelength_m) * path
    wls = torch.tensor(_as_wavelength_tuple(wavelength_m, len(wavelength_m)), dtype=torch.float64, device=device)
    return -2 * math.pi / wls[:, None, None] * path


def ideal_lens_transmission(system: OpticalSystem, wavelength_m, focus_distance_m: float | None = None, *,
                            device=None) -> torch.Tensor:
    """Lossless ideal lens ``exp(i phi)``, complex (E, N, N) / (N, N) of ``system.dtype``."""
    phase = ideal_lens_phase(system, wavelength_m, focus_distance_m, device=device)
    return torch.polar(torch.ones_like(phase), phase).to(system.dtype)


def ideal_lens_radii(system: OpticalSystem, wavelength_m, library: Any,
                     focus_distance_m: float | None = None, *, device=None) -> torch.Tensor:
    """Pillar radii (E, N, N) metres realising the ideal lens by reverse lookup in a meta-atom library.

    Uses ``library.design_for_phase(phase, wavelength_m)`` (the design variable whose transmission
    phase is closest to the wrapped target phase) and ``library.radius_from_design``.
    """
    single = isinstance(wavelength_m, (int, float))
    wls = (float(wavelength_m),) if single else _as_wavelength_tuple(wavelength_m, len(wavelength_m))
    phase = wrap_phase(ideal_lens_phase(system, list(wls), focus_distance_m, device=device))
    radii = []
    for e, wl in enumerate(wls):
        design = library.design_for_phase(phase[e], wl)
        radii.append(library.radius_from_design(design))
    out = torch.stack(radii)
    return out[0] if single else out
