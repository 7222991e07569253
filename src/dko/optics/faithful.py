"""The faithful PSF model of one metasurface element and its sensor (DESIGN.md section 3, "faithful model").

For reporting, not optimisation (no gradients needed; a cheaper model such as :mod:`dko.optics.psf` drives
the optimisers and its error against this one is what gets reported). Every approximation of the cheap model
is a switch of :class:`FaithfulNumerics`, so that the effect of each term can be shown on its own.

Model (one wavelength, one point source; lengths in metres, angles in radians)
-----------------------------------------------------------------------------
1. **Illumination.** A point at field angles ``(theta_x, theta_y)``: the chief ray has slopes
   ``(tan theta_x, tan theta_y)`` (x/z and y/z) and meets the sensor at ``z_s (tan theta_x, tan theta_y)``;
   direction u = (tan theta_x, tan theta_y, 1) / norm, polar incidence angle gamma (cos gamma = u_z).
   Object at infinity: tilted plane wave ``exp(i 2 pi f0 . x)``, ``f0 = (u_x, u_y) / lambda``. Object at
   distance z_o (along the axis): spherical wave from ``-z_o (tan theta_x, tan theta_y, 1)``,
   ``(R_c / R) exp(i k (R - R_c))`` (R_c = distance to the aperture centre), written as the carrier
   ``exp(i 2 pi f0 . x)`` times a smooth residual.
2. **Fresnel loss** at the air -> substrate entrance (``substrate_index``, default SiO2 1.46): power
   transmittance ``T = 1 - (R_s + R_p) / 2`` at gamma (unpolarised); the field is scaled by ``sqrt(T)``
   (normal incidence T = 0.9650). The caller's transmission ``t`` (zeroth order, at the wavelength and
   incidence angle) covers the pillars and the substrate -> air exit.
3. **Resolved superpixels** (``route``). The exit field is ``carrier x staircase``: every superpixel a
   constant value ``a = sqrt(T) t x mask x residual`` over its s x s square (mask: superpixels whose centre
   lies inside the aperture, :meth:`OpticalSystem.superpixel_aperture_mask`, as fabricated; the residual of
   a spherical wave is taken at the superpixel centre, its phase varies by ``k r s / z_o`` across one
   superpixel, 4e-5 rad at the default geometry).

   - ``route="exact"`` (default): the exact continuous spectrum of the staircase,
     ``A(f) = s^2 sinc(f_x s) sinc(f_y s) sum_j a_j exp(-i 2 pi f . x_j)``: the DFT of the N x N values
     (zero-padded to ``N_pad = padded_size(N, pad_factor)``, frequency spacing ``1 / (N_pad s)``), tiled
     periodically ``m x m`` times to cover the band ``|f| < m / (2 s)`` and multiplied by the superpixel's
     sinc (:func:`staircase_spectrum`). Nothing is approximated but the band: components beyond
     ``m / (2 s)`` are left out and booked as ``beyond_band`` (evanescent whenever the sample pitch
     ``s / m <= lambda / 4``).
   - ``route="fft"``: the FFT of the ``m``-times oversampled staircase (:func:`staircase_spectrum_fft`),
     which equals the exact spectrum divided by ``sinc(f_x s / m) sinc(f_y s / m)`` (the sample cell):
     it converges to the exact route only as ``m -> inf`` (error ~ (f s / m)^2); ``m = 1`` is the cheap
     model's "one sample per superpixel".
4. **Propagation** over z_s in air: angular spectrum on the frequency grid ``f0 + g`` (g = the FFT
   frequencies of the ``M = m N_pad`` grid, pitch ``dx = s / m``), ``H = exp(i 2 pi z sqrt(1/lambda^2 - |f|^2))``,
   evanescent components removed (booked as ``evanescent``); with ``band_limit`` Matsushima's limit shifted
   to the output window: keep ``|z f_x / sqrt(1/lambda^2 - f_x^2) - x0| <= L / 2`` (and y; ``L = M dx``),
   the removed propagating light is booked as ``band_limited_out`` (it would land beyond the simulated
   plane). The simulated plane is the ``L x L`` square centred on the chief-ray pixel ``x0``; its field is
   exact for the L-periodic repetition of the element; pixels farther than ``(L - D) / 2`` from its centre
   may hold light wrapped around by up to one period (``wrap_free_halfwidth_m``).
5. **Pixels.** ``exact_pixels=True``: ``|U|^2`` (band-limited to ``2 / lambda``; exactly sampled when
   ``dx <= lambda / 4``) is integrated over square pixels of pitch p by the periodic band-limited
   interpolant, i.e. its spectrum times ``p sinc(p f)`` per axis, evaluated at the pixel centres
   (:func:`pixel_integration_matrix`: exact for a band-limited intensity). ``False``: ``|U|^2`` constant over
   each ``dx x dx`` sample cell (area overlap, the cheap model's rule).
6. **Ledger.** Divided by the incident power ``sum |U_in|^2`` over the aperture (|U|^2 measure, the
   projected-area factor cos(gamma) of the physical flux is not applied: ``relative_illumination`` in the
   result is cos(gamma) for callers who want it). ``incident (1) = fresnel_loss + metasurface_loss +
   transmitted``; ``transmitted = beyond_band + evanescent + band_limited_out + on_plane``; ``on_plane =
   window + own_area + other_elements + gaps + off_pixel_grid``: ``window`` is the PSF window, ``own_area``
   the rest of the element's own sensor area, ``other_elements`` the areas of the other elements of the array
   (pitch ``element_pitch_m``), ``gaps`` between areas, ``off_pixel_grid`` the plane's edge strip narrower
   than a pixel. Pixels are assigned by their centre.

Pixel grid: pixel centres at integer multiples of p from the element's optical axis (as in
:mod:`dko.optics.psf`); arrays are (row = y, column = x). The PSF window (``window_px``, odd) is centred on
the pixel nearest the chief-ray position; ``offset_m`` is the chief-ray position minus that pixel's centre.

Checks (tests/optics/test_faithful.py): with every term off (FFT route, m = 1, cell-constant pixels, no Fresnel,
on axis) the model is :func:`dko.optics.psf.psf_from_transmission` to 1e-12; the exact route matches a direct
Rayleigh-Sommerfeld sum to 3.5e-4; an ideal lens gives the Airy centre-pixel energy to 0.2 % and the encircled
energy at the first three zeros to 0.3 %; the exact route is converged at the auto m (doubling m changes the PSF by
< 1e-6) while the sampled staircase (FFT route) converges like (s/m)^2.

Cost: one small FFT (N_pad^2) per element; with the exact route and exact pixels (default, ``support_grid``) the
sensor field is formed only where the transfer function is non-zero: the kept (propagating, band-limited) frequencies
fill a box of nr x nc of the M x M grid (at the default geometry 27 % per axis on the axis, 1-19 % at 41-71 deg), and
over the period L the field is a trigonometric polynomial of those harmonics, so its values on an Ny x Nx grid
(Ny >= 2 nr, Nx >= 2 nc, same plane) are one small inverse FFT of the box, |U|^2 on that grid is exact, and the exact
pixel integral is that of the M x M grid (tests: equal to 1e-10). The full M x M route (``support_grid=False``,
always with cell-constant pixels) costs one M^2 tiling multiply, one M^2 inverse FFT, |U|^2 and two matrix products
with the (Q, M) pixel matrix per element. benchmarks/faithful_psf.py measures both against the bare FFT pair of M x M.
Complex64 by default; psf /
image / ledger are returned in float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from dko.optics.propagation import center_pad, padded_size
from dko.optics.psf import OpticalSystem, is_infinite_distance

__all__ = [
    "FaithfulNumerics",
    "FaithfulPSF",
    "TransmissionFn",
    "fresnel_transmittance",
    "relative_illumination",
    "auto_samples_per_superpixel",
    "staircase_spectrum",
    "staircase_spectrum_fft",
    "shifted_transfer_function",
    "pixel_integration_matrix",
    "cell_overlap_matrix",
    "faithful_psf",
    "faithful_field",
    "converge_samples_per_superpixel",
    "spectral_samples",
    "band_psf",
    "incoherent_psf",
    "window_for_fraction",
    "rayleigh_sommerfeld_staircase",
    "library_transmission_fn",
]

TransmissionFn = Callable[[float, tuple], "torch.Tensor | list[tuple[float, torch.Tensor, str | None]]"]
"""``transmission(wavelength_m, field_angle_rad) -> complex (E, N, N)`` superpixel transmissions (one coherent field,
unpolarised Fresnel), or a list of incoherent components ``[(weight, complex (E, N, N), input polarisation)]``
(:func:`incoherent_psf`; e.g. :meth:`dko.optics.oblique_table.ObliqueTable.components`)."""

_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


@dataclass(frozen=True)
class FaithfulNumerics:
    """Numerics and switches of the faithful model (see the module docstring).

    Attributes:
        samples_per_superpixel: m, samples per superpixel side; None = :func:`auto_samples_per_superpixel`
            (pitch s / m <= lambda / 4: all propagating light and the whole intensity band resolved).
        route: ``exact`` (exact staircase spectrum) or ``fft`` (FFT of the m-times oversampled staircase).
        exact_pixels: exact pixel integration of the band-limited |U|^2 (False: |U|^2 constant per sample cell).
        fresnel: apply the air -> substrate Fresnel loss.
        substrate_index: refractive index of the substrate (SiO2 1.46).
        window_px: side of the returned PSF window, sensor pixels (odd).
        pad_factor: zero padding of the superpixel grid (None = the OpticalSystem's); sets the simulated plane
            ``L = padded_size(N, pad_factor) * s``.
        band_limit: Matsushima's band limit, shifted to the output window.
        element_pitch_m: (pitch_y, pitch_x) of the element array on the sensor; None = no neighbours (the whole
            simulated plane is the element's own area).
        element_area_m: (height, width) of each element's sensor area, centred on its axis; None = the pitch.
        dtype: complex64 (default) or complex128.
        max_batch: elements propagated together (memory on the full M x M grid: about 5 x 16 M^2 bytes per element in
            complex64; the support grid needs a fraction of it).
        support_grid: with the exact route and exact pixels, form |U|^2 on the kept band's support grid
            (:func:`_support_kernel`: the same image and ledger to rounding, a fraction of the M^2 cost); False =
            on the full M x M grid (the check of it).
    """

    samples_per_superpixel: int | None = None
    route: str = "exact"
    exact_pixels: bool = True
    fresnel: bool = True
    substrate_index: float = 1.46
    window_px: int = 21
    pad_factor: float | None = None
    band_limit: bool = True
    element_pitch_m: tuple[float, float] | None = None
    element_area_m: tuple[float, float] | None = None
    dtype: torch.dtype = torch.complex64
    max_batch: int = 4
    support_grid: bool = True

    def __post_init__(self):
        m = self.samples_per_superpixel
        if m is not None and (not isinstance(m, int) or m < 1):
            raise ValueError(f"faithful samples_per_superpixel must be an integer >= 1 or None, got {m!r}")
        if self.route not in ("exact", "fft"):
            raise ValueError(f"faithful route must be 'exact' or 'fft', got {self.route!r}")
        if not isinstance(self.window_px, int) or self.window_px < 1 or self.window_px % 2 == 0:
            raise ValueError(f"faithful window_px must be an odd positive integer, got {self.window_px!r}")
        if self.pad_factor is not None and not self.pad_factor >= 1:
            raise ValueError(f"faithful pad_factor must be >= 1 or None, got {self.pad_factor!r}")
        if not (math.isfinite(self.substrate_index) and self.substrate_index >= 1):
            raise ValueError(f"faithful substrate_index must be >= 1, got {self.substrate_index!r}")
        for name in ("element_pitch_m", "element_area_m"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or not all(math.isfinite(a) and a > 0 for a in v)):
                raise ValueError(f"faithful {name} must be None or two positive lengths (y, x), got {v!r}")
        if self.element_area_m is not None and self.element_pitch_m is None:
            raise ValueError("faithful element_area_m needs element_pitch_m")
        if self.element_area_m is not None and any(a > p * (1 + 1e-12) for a, p in
                                                   zip(self.element_area_m, self.element_pitch_m)):
            raise ValueError(f"faithful element_area_m {self.element_area_m} exceeds element_pitch_m "
                             f"{self.element_pitch_m}")
        if self.dtype not in _REAL:
            raise TypeError(f"faithful dtype must be complex64 or complex128, got {self.dtype}")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"faithful max_batch must be a positive integer, got {self.max_batch!r}")


@dataclass
class FaithfulPSF:
    """Result of :func:`faithful_psf` (E elements; all fractions of the incident power).

    Attributes:
        psf: real (E, W, W) pixel energies in the window (W = ``window_px``), centred on the chief-ray pixel.
        image: real (E, Q, Q) pixel energies over the whole simulated plane (Q odd, same centre).
        centre_px: (row, column) = (c_y, c_x) integer pixel index of the window centre, from the axis pixel.
        offset_m: (y, x) chief-ray position minus the centre pixel's centre, metres.
        chief_ray_m: (y, x) chief-ray position on the sensor, z_s tan(theta), metres.
        ledger: dict of float64 (E,) tensors (see the module docstring); ``efficiency`` = ``window``.
        incidence_angle_rad: polar incidence angle gamma.
        relative_illumination: cos(gamma) (projected-area factor, not applied).
        samples_per_superpixel: m used; sample_pitch_m: s / m; plane_m: L; wrap_free_halfwidth_m: (L - D) / 2.
        wavelength_m: the wavelength, metres.
    """

    psf: torch.Tensor
    image: torch.Tensor
    centre_px: tuple[int, int]
    offset_m: tuple[float, float]
    chief_ray_m: tuple[float, float]
    ledger: dict[str, torch.Tensor]
    incidence_angle_rad: float
    relative_illumination: float
    samples_per_superpixel: int
    sample_pitch_m: float
    plane_m: float
    wrap_free_halfwidth_m: float
    wavelength_m: float


# ----------------------------------------------------------------------------- small physics helpers
def relative_illumination(incidence_angle_rad: float) -> float:
    """Relative illumination ``cos^4(gamma)`` of a field point at polar angle gamma from the axis.

    A scene patch of radiance L seen by one sensor pixel at the chief-ray angle gamma sends the aperture
    ``L (A cos gamma) (p^2 cos^3 gamma / z_s^2)``: the aperture's projected area times the patch's solid angle (the
    pixel at distance ``z_s / cos gamma``, tilted by gamma), i.e. ``cos^4 gamma`` times the on-axis pixel's light (the
    cos^4 law). The faithful PSF is per unit incident ``|U|^2`` on the aperture face (module docstring, item 6), so
    an image formed with it is multiplied by this factor per field point.
    """
    return math.cos(float(incidence_angle_rad)) ** 4


def fresnel_transmittance(angle_rad: float, n1: float = 1.0, n2: float = 1.46, polarisation: str | None = None) -> float:
    """Power transmittance of a flat n1 -> n2 interface at ``angle_rad``: ``1 - R_s``, ``1 - R_p`` or unpolarised.

    ``polarisation``: ``"s"``, ``"p"`` or None (unpolarised, ``1 - (R_s + R_p) / 2``). Normal incidence:
    ``1 - ((n2 - n1) / (n2 + n1))^2`` (0.96503 for air -> 1.46) for all three. Total internal reflection
    (n1 > n2 past the critical angle) gives 0.
    """
    if not (0 <= angle_rad < math.pi / 2):
        raise ValueError(f"incidence angle must be in [0, pi/2) radians, got {angle_rad}")
    if polarisation not in (None, "s", "p"):
        raise ValueError(f"polarisation must be 's', 'p' or None (unpolarised), got {polarisation!r}")
    ci = math.cos(angle_rad)
    st = n1 / n2 * math.sin(angle_rad)
    if st >= 1:
        return 0.0
    ct = math.sqrt(1 - st * st)
    rs = ((n1 * ci - n2 * ct) / (n1 * ci + n2 * ct)) ** 2
    rp = ((n1 * ct - n2 * ci) / (n1 * ct + n2 * ci)) ** 2
    if polarisation == "s":
        return 1.0 - rs
    if polarisation == "p":
        return 1.0 - rp
    return 1.0 - 0.5 * (rs + rp)


def auto_samples_per_superpixel(superpixel_m: float, wavelength_m: float) -> int:
    """Smallest m with sample pitch ``s / m <= lambda / 4`` (the intensity's Nyquist pitch)."""
    return max(1, math.ceil(4 * superpixel_m / wavelength_m - 1e-9))


def _direction(field_angle_rad: tuple[float, float]) -> tuple[float, float, float]:
    tx, ty = math.tan(field_angle_rad[0]), math.tan(field_angle_rad[1])
    norm = math.sqrt(1 + tx * tx + ty * ty)
    return tx / norm, ty / norm, 1 / norm


def _sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.sinc(x)  # sin(pi x) / (pi x)


# ----------------------------------------------------------------------------- spectra of the staircase
def _freqs(n: int, pitch_m: float, device) -> torch.Tensor:
    return torch.fft.fftfreq(n, d=pitch_m, dtype=torch.float64, device=device)


def staircase_spectrum(values: torch.Tensor, superpixel_m: float, m: int, n_pad: int) -> torch.Tensor:
    """Exact continuous Fourier transform of a piecewise-constant superpixel mask on the FFT frequency grid.

    ``A(f) = s^2 sinc(f_x s) sinc(f_y s) sum_j a_j exp(-i 2 pi f . x_j)`` with superpixel centres
    ``x_j = (j - (N - 1) / 2) s`` (axis at the grid centre), evaluated at ``f = fftfreq(M, s / m)``,
    ``M = m n_pad``: the DFT of the zero-padded ``n_pad x n_pad`` values tiled ``m x m`` times (it is
    periodic in f with period 1 / s) times the sinc and the phase of the centred coordinates.

    Args:
        values: complex (E, N, N) superpixel values a (row = y).
        superpixel_m: s, metres.
        m: samples per superpixel side (sets the band |f| < m / (2 s)).
        n_pad: padded superpixel grid (n_pad - N even).
    Returns:
        complex (E, M, M) of ``values``' dtype, units of a x m^2, unshifted FFT order.
    """
    e, n, _ = values.shape
    padded = center_pad(values, (n_pad, n_pad))
    dft = torch.fft.fft2(padded).repeat(1, m, m)
    big = m * n_pad
    f = _freqs(big, superpixel_m / m, values.device)
    # centred coordinates: x_q = (q - (n_pad - 1) / 2) s  ->  phase exp(+i pi f (n_pad - 1) s)
    w = torch.polar(superpixel_m * _sinc(f * superpixel_m), math.pi * f * (n_pad - 1) * superpixel_m)
    w = w.to(values.dtype)
    return dft * w[:, None] * w[None, :]


def staircase_spectrum_fft(values: torch.Tensor, superpixel_m: float, m: int, n_pad: int,
                           sample_factor: torch.Tensor | None = None) -> torch.Tensor:
    """FFT of the m-times oversampled staircase (sample pitch s / m), same grid and phase convention.

    Equals :func:`staircase_spectrum` divided by ``sinc(f_x s / m) sinc(f_y s / m)`` when ``sample_factor``
    is None (the sampled staircase's spectrum: exact only as m -> inf).

    Args:
        values: complex (E, N, N) superpixel values.
        sample_factor: optional complex (N m, N m) factor applied per sample (a smooth illumination).
    Returns:
        complex (E, M, M), ``M = m n_pad``, units of a x m^2 (the FFT times dx^2), unshifted order.
    """
    dx = superpixel_m / m
    samples = values.repeat_interleave(m, dim=-2).repeat_interleave(m, dim=-1)
    if sample_factor is not None:
        samples = samples * sample_factor.to(values.dtype)
    big = m * n_pad
    dft = torch.fft.fft2(center_pad(samples, (big, big)))
    f = _freqs(big, dx, values.device)
    w = torch.polar(torch.full_like(f, dx), math.pi * f * (big - 1) * dx).to(values.dtype)
    return dft * w[:, None] * w[None, :]


def _band(gy: torch.Tensor, gx: torch.Tensor, wavelength_m: float, z: float, f0x: float, f0y: float, x0: float,
          y0: float, length: float, band_limit: bool):
    """(arg = 1/lambda^2 - |f|^2 float64 (Y, X), propagating bool, kept bool) on rows gy x columns gx (FFT freqs)."""
    fx, fy = f0x + gx, f0y + gy
    inv2 = 1.0 / wavelength_m**2
    arg = inv2 - fx[None, :] ** 2 - fy[:, None] ** 2
    prop = arg > 0
    keep = prop
    if band_limit:
        def ok(f, c):
            a = inv2 - f * f
            tan = torch.where(a > 0, f / torch.sqrt(torch.clamp(a, min=1e-300)), torch.full_like(f, math.inf))
            return (z * tan - c).abs() <= length / 2
        keep = keep & ok(fx, x0)[None, :] & ok(fy, y0)[:, None]
    return arg, prop, keep


@functools.lru_cache(maxsize=8)
def _transfer_cached(big: int, dx: float, wavelength_m: float, z: float, f0x: float, f0y: float, x0: float,
                     y0: float, band_limit: bool, device: str, dtype: torch.dtype):
    g = _freqs(big, dx, device)
    arg, prop, keep = _band(g, g, wavelength_m, z, f0x, f0y, x0, y0, big * dx, band_limit)
    kz = torch.sqrt(torch.clamp(arg, min=0.0))
    # output samples at x0 + (n - (M - 1) / 2) dx: phase exp(i 2 pi g (x0 - (M - 1) dx / 2))
    sx = 2 * math.pi * g * (x0 - (big - 1) * dx / 2)
    sy = 2 * math.pi * g * (y0 - (big - 1) * dx / 2)
    phase = 2 * math.pi * z * kz + sx[None, :] + sy[:, None]
    h = torch.polar(keep.to(torch.float64), phase).to(dtype)
    return h, prop, keep


def shifted_transfer_function(big: int, dx: float, wavelength_m: float, distance_m: float,
                              carrier_m_inv: tuple[float, float] = (0.0, 0.0),
                              centre_m: tuple[float, float] = (0.0, 0.0), *, band_limit: bool = True,
                              device="cpu", dtype=torch.complex64):
    """Angular-spectrum transfer function on the frequency grid ``f0 + fftfreq(big, dx)``, output window shifted.

    Args:
        big: M, grid size; dx: sample pitch, metres; distance_m: z.
        carrier_m_inv: f0 = (f0x, f0y), cycles per metre (tilted illumination).
        centre_m: (x0, y0) centre of the output window; output samples at ``x0 + (n - (M - 1) / 2) dx``.
        band_limit: shifted Matsushima limit ``|z f / sqrt(1/lambda^2 - f^2) - x0| <= M dx / 2`` per axis.
    Returns:
        (H complex (M, M) incl. the output-shift phase, propagating bool (M, M), kept bool (M, M)); cached,
        do not modify. With f0 = 0 and x0 = 0, ``H`` times ``exp(i 2 pi (g_x + g_y) (M - 1) dx / 2)`` is
        :func:`dko.optics.propagation.asm_transfer_function` (the same grid, Matsushima limit).
    """
    dev = torch.device(device)
    return _transfer_cached(int(big), float(dx), float(wavelength_m), float(distance_m), float(carrier_m_inv[0]),
                            float(carrier_m_inv[1]), float(centre_m[0]), float(centre_m[1]), bool(band_limit),
                            str(dev), dtype)


# ----------------------------------------------------------------------------- pixel integration
@functools.lru_cache(maxsize=16)
def _pixel_matrix_cached(n_samples: int, dx: float, pixel_m: float, n_px: int, exact: bool) -> torch.Tensor:
    half = (n_px - 1) // 2
    centres = torch.arange(-half, half + 1, dtype=torch.float64) * pixel_m  # relative to the plane centre
    if not exact:
        xs = (torch.arange(n_samples, dtype=torch.float64) - (n_samples - 1) / 2) * dx
        lo = torch.maximum(centres[:, None] - pixel_m / 2, xs[None, :] - dx / 2)
        hi = torch.minimum(centres[:, None] + pixel_m / 2, xs[None, :] + dx / 2)
        return torch.clamp(hi - lo, min=0.0)
    f = _freqs(n_samples, dx, None)
    b = pixel_m * _sinc(pixel_m * f)  # spectrum of the pixel box, metres
    # d = c_j - x_n = (c_j / dx + (M - 1) / 2 - n) dx = frac_j + (whole_j + M // 2 - n) dx
    shift = centres / dx + (n_samples - 1) / 2 - n_samples // 2
    whole = torch.floor(shift)
    frac = (shift - whole) * dx
    # h_j[k] = (1/M) sum_K b_K exp(i 2 pi f_K (frac_j + k dx))
    hj = torch.fft.ifft(torch.polar(b[None, :].expand(n_px, -1), 2 * math.pi * f[None, :] * frac[:, None]),
                        dim=-1).real
    n = torch.arange(n_samples)
    idx = (whole.to(torch.long)[:, None] - n[None, :] + n_samples // 2) % n_samples
    return torch.gather(hj, 1, idx)


def pixel_integration_matrix(n_samples: int, sample_pitch_m: float, pixel_pitch_m: float, n_px: int, *,
                             exact: bool = True) -> torch.Tensor:
    """1-D pixel-integration weights: ``pixel_j = sum_n W[j, n] I_n`` = the integral of I over pixel j (metres).

    Samples at ``(n - (M - 1) / 2) dx`` (n = 0..M-1, periodic with period M dx), pixel centres at ``j p``,
    ``j = -(Q-1)/2 .. (Q-1)/2``. ``exact``: the integral of the periodic band-limited (trigonometric)
    interpolant of the samples, exact when I has no content at or beyond the Nyquist frequency 1 / (2 dx);
    otherwise the cell-constant rule (each sample a uniform dx-wide cell, area overlap). Both row sums are p.
    2-D: ``W_y I W_x^T``.

    Returns:
        float64 (Q, M), cached (do not modify).
    """
    if n_px % 2 == 0 or n_px < 1:
        raise ValueError(f"n_px must be odd and positive, got {n_px}")
    return _pixel_matrix_cached(int(n_samples), float(sample_pitch_m), float(pixel_pitch_m), int(n_px), bool(exact))


def cell_overlap_matrix(n_samples: int, sample_pitch_m: float, pixel_pitch_m: float, n_px: int) -> torch.Tensor:
    """The cell-constant rule of :func:`pixel_integration_matrix` (``exact=False``)."""
    return pixel_integration_matrix(n_samples, sample_pitch_m, pixel_pitch_m, n_px, exact=False)


# ----------------------------------------------------------------------------- the model
def _resolve(system: OpticalSystem, numerics: FaithfulNumerics, wavelength_m: float):
    m = numerics.samples_per_superpixel or auto_samples_per_superpixel(system.superpixel_m, wavelength_m)
    pad = system.pad_factor if numerics.pad_factor is None else numerics.pad_factor
    n_pad = padded_size(system.n_superpixels, pad)
    return m, n_pad


def _illumination(system: OpticalSystem, wavelength_m: float, field_angle_rad, object_distance_m, coords):
    """Residual illumination (complex128) at ``coords`` (1-D, metres, both axes) and the carrier f0 (1/m)."""
    ux, uy, uz = _direction(field_angle_rad)
    f0 = (ux / wavelength_m, uy / wavelength_m)
    x = coords[None, :]
    y = coords[:, None]
    if is_infinite_distance(object_distance_m):
        res = torch.ones(coords.numel(), coords.numel(), dtype=torch.complex128, device=coords.device)
        return res, f0
    z = float(object_distance_m)
    if z <= 0:
        raise ValueError(f"object distance must be positive (or None for infinity), got {object_distance_m}")
    sx, sy = -z * math.tan(field_angle_rad[0]), -z * math.tan(field_angle_rad[1])
    rc = math.sqrt(sx * sx + sy * sy + z * z)
    dxs, dys = x - sx, y - sy
    r = torch.sqrt(dxs**2 + dys**2 + z * z)
    # R - R_c - u.x without cancellation: (R^2 - R_c^2) / (R + R_c) - u.x
    path = (x * x + y * y - 2 * (x * sx + y * sy)) / (r + rc) - (ux * x + uy * y)
    return torch.polar(rc / r, 2 * math.pi / wavelength_m * path), f0


def _prepare(transmission: torch.Tensor, wavelength_m: float, system: OpticalSystem, numerics: FaithfulNumerics,
             field_angle_rad, object_distance_m):
    if not isinstance(transmission, torch.Tensor):
        raise TypeError(f"transmission must be a torch.Tensor, got {type(transmission).__name__}")
    t = transmission[None] if transmission.ndim == 2 else transmission
    n = system.n_superpixels
    if t.ndim != 3 or tuple(t.shape[-2:]) != (n, n):
        raise ValueError(f"transmission must have shape (E, {n}, {n}) for n_superpixels={n}, "
                         f"got {tuple(transmission.shape)}")
    if not (isinstance(wavelength_m, (int, float)) and 1e-8 < wavelength_m < 1e-4):
        raise ValueError(f"wavelength_m must be one wavelength in metres (e.g. 5.5e-7), got {wavelength_m!r}")
    if len(field_angle_rad) != 2 or not all(abs(a) < math.pi / 2 for a in field_angle_rad):
        raise ValueError(f"field_angle_rad must be (theta_x, theta_y) with |theta| < pi/2, got {field_angle_rad!r}")
    if not t.is_complex():
        t = torch.complex(t.to(torch.float64), torch.zeros_like(t, dtype=torch.float64))
    return t.to(torch.complex128)


@functools.lru_cache(maxsize=8)
def _exact_kernel(big: int, n_pad: int, m: int, superpixel_m: float, wavelength_m: float, z: float, f0x: float,
                  f0y: float, x0: float, y0: float, band_limit: bool, device: str, dtype: torch.dtype):
    """Exact route, fused: (sinc x phase x H) (M, M) and the ledger weights folded onto the (n_pad, n_pad) DFT.

    The tiled DFT value at big-grid index K is dft[K mod n_pad]; a sum of |A|^2 G over the big grid is therefore
    sum_k |dft_k|^2 (sum over the tiles of |w|^2 G): ``folded`` (3, n_pad, n_pad) float64 for G = on-grid,
    propagating, kept (times df^2).
    """
    h, prop, keep = _transfer_cached.__wrapped__(big, superpixel_m / m, wavelength_m, z, f0x, f0y, x0, y0,
                                                 band_limit, device, torch.complex128)
    f = _freqs(big, superpixel_m / m, device)
    w = torch.polar(superpixel_m * _sinc(f * superpixel_m), math.pi * f * (n_pad - 1) * superpixel_m)
    w2 = w[:, None] * w[None, :]
    kernel = (w2 * h * (m / superpixel_m) ** 2).to(dtype)  # times 1 / dx^2: ifft2 gives the field
    p2 = (w2.real ** 2 + w2.imag ** 2) / (big * superpixel_m / m) ** 2

    def fold(g):
        return g.reshape(m, n_pad, m, n_pad).sum(dim=(0, 2))

    folded = torch.stack([fold(p2), fold(p2 * prop), fold(p2 * keep)])
    return kernel, folded


def _fast_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (a fast FFT length)."""
    k = max(1, int(n))
    while True:
        r = k
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return k
        k += 1


def _signed_span(any_kept: torch.Tensor) -> tuple[int, int]:
    """(lowest, highest) signed FFT index (fftfreq order) with a kept frequency; (0, 0) if none is."""
    n = any_kept.numel()
    signed = torch.arange(n, device=any_kept.device)
    signed = torch.where(signed < (n + 1) // 2, signed, signed - n)[any_kept]
    if signed.numel() == 0:
        return 0, 0
    return int(signed.min()), int(signed.max())


@functools.lru_cache(maxsize=8)
def _support_kernel(big: int, n_pad: int, m: int, superpixel_m: float, wavelength_m: float, z: float, f0x: float,
                    f0y: float, x0: float, y0: float, band_limit: bool, device: str, dtype: torch.dtype):
    """Exact route restricted to the kept band (the "support grid" of :func:`faithful_psf`).

    The kept frequencies (propagating, inside the band limit) fill a box of nr x nc signed FFT indices of the
    M x M grid, usually a few per cent of it. Over the period L = M dx the sensor field is a trigonometric
    polynomial with those harmonics only, so its values on any Ny x Nx grid (pitch L / Ny, L / Nx, the same
    centre) with Ny >= nr, Nx >= nc are an inverse DFT of the box folded modulo (Ny, Nx), and |U|^2 (harmonics
    below nr, nc) is exactly represented by its samples when Ny >= 2 nr, Nx >= 2 nc: the exact pixel integral,
    the plane's power and the image are then those of the M x M grid, at a fraction of its cost.

    Returns:
        dict: kernel (nr, nc) of ``dtype`` (sinc x phase x H, output shift to the support grid, scaled so that its
        ifft2 is the field), rows_src / cols_src (the box's indices into the N_pad DFT), rows_dst / cols_dst (into
        the Ny x Nx grid), ny, nx, folded (3, n_pad, n_pad) float64 (as :func:`_exact_kernel`).
    """
    dx = superpixel_m / m
    length = big * dx
    g = _freqs(big, dx, device)
    w_abs2 = (superpixel_m * _sinc(g * superpixel_m)) ** 2
    fold1 = w_abs2.reshape(m, n_pad).sum(dim=0)
    # propagating frequencies lie in the box |f0 + g| < 1 / lambda per axis: the ledger's folds need only that box
    rows = torch.nonzero((f0y + g).abs() < 1.0 / wavelength_m).flatten()
    cols = torch.nonzero((f0x + g).abs() < 1.0 / wavelength_m).flatten()
    _, prop, keep = _band(g[rows], g[cols], wavelength_m, z, f0x, f0y, x0, y0, length, band_limit)
    p2 = w_abs2[rows][:, None] * w_abs2[cols][None, :]

    def fold(a):
        a = torch.zeros(n_pad, a.shape[1], dtype=a.dtype, device=a.device).index_add_(0, rows % n_pad, a)
        return torch.zeros(n_pad, n_pad, dtype=a.dtype, device=a.device).index_add_(1, cols % n_pad, a)

    folded = torch.stack([fold1[:, None] * fold1[None, :], fold(p2 * prop), fold(p2 * keep)]) / length**2
    any_r = torch.zeros(big, dtype=torch.bool, device=g.device)
    any_c = torch.zeros(big, dtype=torch.bool, device=g.device)
    any_r[rows] = keep.any(dim=1)
    any_c[cols] = keep.any(dim=0)
    (r0, r1), (c0, c1) = _signed_span(any_r), _signed_span(any_c)
    ks_r = torch.arange(r0, r1 + 1, device=g.device)
    ks_c = torch.arange(c0, c1 + 1, device=g.device)
    ny, nx = min(_fast_size(2 * ks_r.numel()), big), min(_fast_size(2 * ks_c.numel()), big)
    gr, gc = ks_r.to(torch.float64) / length, ks_c.to(torch.float64) / length
    arg_b, _, keep_b = _band(gr, gc, wavelength_m, z, f0x, f0y, x0, y0, length, band_limit)
    kz = torch.sqrt(torch.clamp(arg_b, min=0.0))
    # output samples at x0 + (n - (Nx - 1) / 2) L / Nx
    phase = (2 * math.pi * z * kz + (2 * math.pi * gc * (x0 - (nx - 1) * length / nx / 2))[None, :]
             + (2 * math.pi * gr * (y0 - (ny - 1) * length / ny / 2))[:, None])
    wr = torch.polar(superpixel_m * _sinc(gr * superpixel_m), math.pi * gr * (n_pad - 1) * superpixel_m)
    wc = torch.polar(superpixel_m * _sinc(gc * superpixel_m), math.pi * gc * (n_pad - 1) * superpixel_m)
    scale = (ny * nx) / (big * big) / (dx * dx)
    kernel = (wr[:, None] * wc[None, :] * torch.polar(keep_b.to(torch.float64), phase) * scale).to(dtype)
    return dict(kernel=kernel, rows_src=ks_r % n_pad, cols_src=ks_c % n_pad, rows_dst=ks_r % ny, cols_dst=ks_c % nx,
                ny=ny, nx=nx, folded=folded)


def _setup(transmission, wavelength_m, system, numerics, field_angle_rad, object_distance_m, centre_m,
           polarisation=None):
    """Everything the batches share: values (E, N, N) complex128, illumination, grids, powers (see faithful_field)."""
    t = _prepare(transmission, wavelength_m, system, numerics, field_angle_rad, object_distance_m)
    m, n_pad = _resolve(system, numerics, wavelength_m)
    s = system.superpixel_m
    dx = s / m
    big = m * n_pad
    zs = system.sensor_distance_m
    chief = (zs * math.tan(field_angle_rad[0]), zs * math.tan(field_angle_rad[1]))  # (x, y)
    p = system.pixel_pitch_m
    if centre_m is None:
        centre_m = (round(chief[0] / p) * p, round(chief[1] / p) * p)
    _, _, uz = _direction(field_angle_rad)
    gamma = math.acos(min(1.0, uz))
    fres = fresnel_transmittance(gamma, 1.0, numerics.substrate_index, polarisation) if numerics.fresnel else 1.0
    mask = system.superpixel_aperture_mask(t.device).to(torch.float64)
    info = dict(m=m, n_pad=n_pad, dx=dx, big=big, chief=chief, centre=tuple(centre_m), gamma=gamma, fresnel=fres)
    if numerics.route == "exact":
        res, f0 = _illumination(system, wavelength_m, field_angle_rad, object_distance_m,
                                system.superpixel_coords_m(t.device))
        weight = (res.abs() ** 2) * mask * s * s  # incident power per superpixel
        info["sample_factor"] = None
    else:
        nm = system.n_superpixels * m
        coords = (torch.arange(nm, dtype=torch.float64, device=t.device) - (nm - 1) / 2) * dx
        res, f0 = _illumination(system, wavelength_m, field_angle_rad, object_distance_m, coords)
        weight = ((res.abs() ** 2).reshape(system.n_superpixels, m, system.n_superpixels, m).sum(dim=(1, 3))
                  * mask * dx * dx)
        info["sample_factor"] = res
        res = torch.ones_like(mask, dtype=torch.complex128)
    info["f0"] = f0
    info["incident"] = float(weight.sum())
    info["t_power"] = ((t.abs() ** 2) * weight).sum(dim=(-2, -1))
    info["t_loss"] = ((1 - t.abs() ** 2) * weight).sum(dim=(-2, -1))
    info["exit"] = fres * info["t_power"]
    info["values"] = (math.sqrt(fres) * res * mask) * t
    return info


def _batches(info, numerics: FaithfulNumerics, system: OpticalSystem, wavelength_m: float, device,
             support: bool = False):
    """Yield (field complex (e, Ny, Nx) of numerics.dtype, (pitch_y, pitch_x) metres, on_grid, propagating, kept
    float64 (e,)) per batch, on the M x M grid (Ny = Nx = M, pitch dx) or, with ``support`` (exact route only), on
    the support grid of :func:`_support_kernel` (same plane and centre)."""
    m, n_pad, big, dx = info["m"], info["n_pad"], info["big"], info["dx"]
    s = system.superpixel_m
    args = (float(wavelength_m), float(system.sensor_distance_m), float(info["f0"][0]), float(info["f0"][1]),
            float(info["centre"][0]), float(info["centre"][1]), bool(numerics.band_limit), _device_key(device))
    values = info["values"]
    scale = 1.0 / (dx * dx)
    if support:
        if numerics.route != "exact":
            raise ValueError("the support grid needs faithful route 'exact'")
        sk = _support_kernel(big, n_pad, m, float(s), *args, numerics.dtype)
        ny, nx, folded = sk["ny"], sk["nx"], sk["folded"]
        pitch = (big * dx / ny, big * dx / nx)
        for lo in range(0, values.shape[0], numerics.max_batch):
            v = center_pad(values[lo:lo + numerics.max_batch], (n_pad, n_pad))
            dft = torch.fft.fft2(v)
            p = dft.real ** 2 + dft.imag ** 2
            sums = p.flatten(1) @ folded.flatten(1).T  # (e, 3)
            box = dft[:, sk["rows_src"]][:, :, sk["cols_src"]].to(numerics.dtype) * sk["kernel"]
            spec = torch.zeros(v.shape[0], ny, nx, dtype=numerics.dtype, device=v.device)
            spec[:, sk["rows_dst"][:, None], sk["cols_dst"][None, :]] = box
            u = torch.fft.ifft2(spec)
            del spec
            yield u, pitch, sums[:, 0], sums[:, 1], sums[:, 2]
    elif numerics.route == "exact":
        kernel, folded = _exact_kernel(big, n_pad, m, float(s), *args, numerics.dtype)  # kernel includes 1/dx^2
        for lo in range(0, values.shape[0], numerics.max_batch):
            v = center_pad(values[lo:lo + numerics.max_batch], (n_pad, n_pad))
            dft = torch.fft.fft2(v)
            p = dft.real ** 2 + dft.imag ** 2
            sums = p.flatten(1) @ folded.flatten(1).T  # (e, 3)
            spec = dft.to(numerics.dtype).repeat(1, m, m)
            spec *= kernel
            u = torch.fft.ifft2(spec)
            del spec
            yield u, (dx, dx), sums[:, 0], sums[:, 1], sums[:, 2]
    else:
        h, prop, keep = _transfer_cached(big, dx, *args, numerics.dtype)
        df2 = 1.0 / (big * dx) ** 2
        for lo in range(0, values.shape[0], numerics.max_batch):
            v = values[lo:lo + numerics.max_batch].to(numerics.dtype)
            spec = staircase_spectrum_fft(v, s, m, n_pad, sample_factor=info["sample_factor"])
            power = spec.real ** 2 + spec.imag ** 2
            sums = [power.sum(dim=(-2, -1)).double() * df2, (power * prop).sum(dim=(-2, -1)).double() * df2,
                    (power * keep).sum(dim=(-2, -1)).double() * df2]
            del power
            spec *= h
            u = torch.fft.ifft2(spec)
            del spec
            u *= scale
            yield (u, (dx, dx), *sums)


def _device_key(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def faithful_field(transmission: torch.Tensor, wavelength_m: float, system: OpticalSystem,
                   numerics: FaithfulNumerics = FaithfulNumerics(), field_angle_rad: tuple[float, float] = (0.0, 0.0),
                   object_distance_m: float | None = None, *, centre_m: tuple[float, float] | None = None):
    """Complex sensor-plane field of E elements on the simulated plane (carrier ``exp(i 2 pi f0 . x)`` dropped).

    Args:
        transmission: complex (E, N, N) (or (N, N)) superpixel transmissions at this wavelength and incidence.
        wavelength_m: metres. system: geometry. numerics: see :class:`FaithfulNumerics`.
        field_angle_rad: (theta_x, theta_y), radians. object_distance_m: z_o, None / inf = infinity.
        centre_m: (x0, y0) centre of the simulated plane; None = the centre of the chief-ray pixel.
    Returns:
        (field complex (E, M, M) of ``numerics.dtype`` (relative to a unit-amplitude incident wave; M = m N_pad),
        x_m float64 (M,) sample x coordinates (columns), y_m float64 (M,) (rows)). Multiply by
        ``exp(i 2 pi (f0x x + f0y y))``, f0 = (u_x, u_y) / lambda, for the full field (up to a constant phase).
    """
    info = _setup(transmission, wavelength_m, system, numerics, field_angle_rad, object_distance_m, centre_m)
    u = torch.cat([b[0] for b in _batches(info, numerics, system, wavelength_m, info["values"].device)])
    big, dx = info["big"], info["dx"]
    xs = info["centre"][0] + (torch.arange(big, dtype=torch.float64) - (big - 1) / 2) * dx
    ys = info["centre"][1] + (torch.arange(big, dtype=torch.float64) - (big - 1) / 2) * dx
    return u, xs, ys


def _area_masks(n_px: int, centre_px: tuple[int, int], pixel_m: float, numerics: FaithfulNumerics):
    """bool (Q, Q) masks own / other / gap of pixel centres (row = y)."""
    half = (n_px - 1) // 2
    j = torch.arange(-half, half + 1, dtype=torch.float64)
    y = (centre_px[0] + j)[:, None] * pixel_m
    x = (centre_px[1] + j)[None, :] * pixel_m
    if numerics.element_pitch_m is None:
        own = torch.ones(n_px, n_px, dtype=torch.bool)
        return own, ~own, ~own
    py, px = numerics.element_pitch_m
    ay, ax = numerics.element_area_m or numerics.element_pitch_m
    iy, ix = torch.round(y / py), torch.round(x / px)
    inside = ((y - iy * py).abs() <= ay / 2 * (1 + 1e-12)) & ((x - ix * px).abs() <= ax / 2 * (1 + 1e-12))
    home = (iy == 0) & (ix == 0)
    own = inside & home
    other = inside & ~home
    return own, other, ~inside


def faithful_psf(transmission: torch.Tensor, wavelength_m: float, system: OpticalSystem,
                 numerics: FaithfulNumerics = FaithfulNumerics(), field_angle_rad: tuple[float, float] = (0.0, 0.0),
                 object_distance_m: float | None = None, polarisation: str | None = None) -> FaithfulPSF:
    """Faithful PSFs of E elements at one wavelength and one field position (module docstring).

    Args:
        transmission: complex (E, N, N) (or (N, N)) superpixel transmissions, evaluated by the caller at this
            wavelength and the incidence angle (:attr:`FaithfulPSF.incidence_angle_rad`); any dtype.
        wavelength_m: one wavelength, metres.
        system: geometry (superpixel_m, n_superpixels, sensor_distance_m, pixel_pitch_m, aperture, pad_factor);
            its oversample / psf_size_px / dtype are not used.
        numerics: :class:`FaithfulNumerics`.
        field_angle_rad: (theta_x, theta_y) radians; the chief ray lands at z_s (tan theta_x, tan theta_y).
        object_distance_m: z_o (metres, along the axis); None / inf = infinity.
        polarisation: the input polarisation whose Fresnel transmittance applies (``"s"`` / ``"p"`` relative to the
            plane of incidence; None = unpolarised). ``transmission`` is then that polarisation's (co- or
            cross-polarised) output: :func:`incoherent_psf` sums such components.
    Returns:
        :class:`FaithfulPSF` (float64 psf / image / ledger; an (N, N) input still gives E = 1).
    """
    info = _setup(transmission, wavelength_m, system, numerics, field_angle_rad, object_distance_m, None,
                  polarisation)
    device = info["values"].device
    p = system.pixel_pitch_m
    big, dx = info["big"], info["dx"]
    length = big * dx
    n_half = int(math.floor(length / 2 / p - 0.5 + 1e-9))
    q = 2 * n_half + 1
    if q < numerics.window_px:
        raise ValueError(f"faithful window_px={numerics.window_px} exceeds the {q} pixels of the simulated plane "
                         f"({length:.3e} m): raise faithful pad_factor")
    rdtype = _REAL[numerics.dtype]
    support = numerics.support_grid and numerics.route == "exact" and numerics.exact_pixels
    images, planes, sums = [], [], []
    for u, (py, px), on_grid, propagating, kept in _batches(info, numerics, system, wavelength_m, device, support):
        wy = pixel_integration_matrix(u.shape[-2], py, p, q, exact=numerics.exact_pixels).to(device=device,
                                                                                            dtype=rdtype)
        wx = pixel_integration_matrix(u.shape[-1], px, p, q, exact=numerics.exact_pixels).to(device=device,
                                                                                            dtype=rdtype)
        intensity = u.real.square()
        intensity.addcmul_(u.imag, u.imag)
        del u
        images.append(torch.matmul(torch.matmul(wy, intensity), wx.transpose(0, 1)).double())
        planes.append(intensity.sum(dim=(-2, -1)).double() * py * px)
        sums.append(torch.stack([on_grid, propagating, kept], dim=-1))
        del intensity
    inc = info["incident"]
    image = torch.cat(images) / inc
    plane = torch.cat(planes) / inc
    info["on_grid"], info["propagating"], info["kept"] = torch.cat(sums).unbind(-1)
    c = (q - 1) // 2
    hw = (numerics.window_px - 1) // 2
    psf = image[:, c - hw:c + hw + 1, c - hw:c + hw + 1]
    cx, cy = round(info["centre"][0] / p), round(info["centre"][1] / p)
    own, other, gap = _area_masks(q, (cy, cx), p, numerics)
    own, other, gap = own.to(image.device), other.to(image.device), gap.to(image.device)
    window = psf.sum(dim=(-2, -1))
    grid_total = image.sum(dim=(-2, -1))
    fres = info["fresnel"]
    transmitted = info["exit"] / inc
    ledger = {
        "incident": torch.ones_like(window),
        "fresnel_loss": torch.full_like(window, 1 - fres),
        "metasurface_loss": fres * info["t_loss"] / inc,
        "transmitted": transmitted,
        "beyond_band": transmitted - info["on_grid"] / inc,
        "evanescent": (info["on_grid"] - info["propagating"]) / inc,
        "band_limited_out": (info["propagating"] - info["kept"]) / inc,
        "on_plane": info["kept"] / inc,
        "on_plane_sampled": plane,
        "window": window,
        "own_area": (image * own).sum(dim=(-2, -1)) - window,
        "other_elements": (image * other).sum(dim=(-2, -1)),
        "gaps": (image * gap).sum(dim=(-2, -1)),
        "off_pixel_grid": info["kept"] / inc - grid_total,
        "efficiency": window,
    }
    chief_x, chief_y = info["chief"]
    return FaithfulPSF(psf=psf, image=image, centre_px=(cy, cx), offset_m=(chief_y - cy * p, chief_x - cx * p),
                       chief_ray_m=(chief_y, chief_x), ledger=ledger, incidence_angle_rad=info["gamma"],
                       relative_illumination=math.cos(info["gamma"]), samples_per_superpixel=info["m"],
                       sample_pitch_m=dx, plane_m=length,
                       wrap_free_halfwidth_m=(length - system.aperture_m) / 2, wavelength_m=float(wavelength_m))


# ----------------------------------------------------------------------------- convergence, colour, windows
_INPUT_KEYS = ("incident", "fresnel_loss")


def incoherent_psf(components, wavelength_m: float, system: OpticalSystem,
                   numerics: FaithfulNumerics = FaithfulNumerics(), field_angle_rad: tuple[float, float] = (0.0, 0.0),
                   object_distance_m: float | None = None) -> FaithfulPSF:
    """The PSF of mutually incoherent fields: ``sum_k w_k PSF_k`` (e.g. unpolarised light, DESIGN.md section 3).

    Args:
        components: a complex (E, N, N) tensor (one coherent field, unpolarised Fresnel: :func:`faithful_psf`
            itself) or ``[(weight, complex (E, N, N), input polarisation "s" / "p" / None)]``: each input
            polarisation's output fields (co- and cross-polarised) with the input's weight (1/2 each for
            unpolarised light). The components of one input must share its weight.
        the rest: as :func:`faithful_psf`.
    Returns:
        :class:`FaithfulPSF` whose psf, image and output-side ledger entries are the weighted sums; the input-side
        entries (``incident``, ``fresnel_loss``) count each input polarisation once, and ``metasurface_loss`` is
        what is neither reflected at the interface nor transmitted (the ledger still balances).
    """
    if isinstance(components, torch.Tensor):
        return faithful_psf(components, wavelength_m, system, numerics, field_angle_rad, object_distance_m)
    comps = list(components)
    if not comps:
        raise ValueError("incoherent_psf needs at least one component")
    inputs: dict = {}
    for w, _, pol in comps:
        if not (isinstance(w, (int, float)) and w > 0):
            raise ValueError(f"incoherent_psf: component weights must be positive numbers, got {w!r}")
        if inputs.setdefault(pol, float(w)) != float(w):
            raise ValueError(f"incoherent_psf: the components of input polarisation {pol!r} have different weights")
    if abs(sum(inputs.values()) - 1.0) > 1e-9:
        raise ValueError(f"incoherent_psf: the input polarisations' weights {inputs} must sum to 1")
    results = [(float(w), pol, faithful_psf(t, wavelength_m, system, numerics, field_angle_rad, object_distance_m,
                                            polarisation=pol)) for w, t, pol in comps]
    if len(results) == 1:
        return results[0][2]
    first = results[0][2]
    ledger = {k: sum(w * r.ledger[k] for w, _, r in results) for k in first.ledger if k not in _INPUT_KEYS}
    seen: dict = {}
    for w, pol, r in results:
        seen.setdefault(pol, (w, r))
    for k in _INPUT_KEYS:
        ledger[k] = sum(w * r.ledger[k] for w, r in seen.values())
    ledger["metasurface_loss"] = ledger["incident"] - ledger["fresnel_loss"] - ledger["transmitted"]
    return replace(first, psf=sum(w * r.psf for w, _, r in results), image=sum(w * r.image for w, _, r in results),
                   ledger=ledger)


def converge_samples_per_superpixel(transmission: torch.Tensor, wavelength_m: float, system: OpticalSystem,
                                    numerics: FaithfulNumerics = FaithfulNumerics(), *, start: int | None = None,
                                    tol: float = 0.01, max_m: int = 64,
                                    **kwargs) -> tuple[int, list[tuple[int, float]]]:
    """Double m from ``start`` (None = :func:`auto_samples_per_superpixel`) until the PSF window changes by less
    than ``tol`` (relative L2, worst element) between m and 2m.

    Returns:
        (m, history [(m, change to 2m), ...]); m = the first value whose doubling changed less than ``tol``.
    """
    m = start or auto_samples_per_superpixel(system.superpixel_m, wavelength_m)
    prev = faithful_psf(transmission, wavelength_m, system, replace(numerics, samples_per_superpixel=m), **kwargs).psf
    history = []
    while 2 * m <= max_m:
        nxt = faithful_psf(transmission, wavelength_m, system, replace(numerics, samples_per_superpixel=2 * m),
                           **kwargs).psf
        change = float(((nxt - prev).flatten(1).norm(dim=1) / nxt.flatten(1).norm(dim=1)).max())
        history.append((m, change))
        if change < tol:
            return m, history
        m, prev = 2 * m, nxt
    raise ValueError(f"samples_per_superpixel did not converge to {tol} by m = {max_m}: {history}")


def spectral_samples(centre_m: float, fwhm_m: float, n: int, shape: str = "flat") -> tuple[list[float], list[float]]:
    """Wavelengths and weights (summing to 1) of a passband: midpoint rule over ``n`` equal sub-bands.

    ``flat``: [centre - fwhm/2, centre + fwhm/2]; ``gaussian``: sigma = fwhm / (2 sqrt(2 ln 2)) over
    +-1.5 fwhm (+-3.5 sigma), weights = the Gaussian at the midpoints, normalised. ``fwhm_m = 0`` gives the
    single wavelength ``centre_m`` with weight 1.
    """
    if not (centre_m > 0 and fwhm_m >= 0):
        raise ValueError(f"passband needs centre_m > 0 and fwhm_m >= 0, got {centre_m}, {fwhm_m}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n spectral samples must be a positive integer, got {n!r}")
    if shape not in ("flat", "gaussian"):
        raise ValueError(f"passband shape must be 'flat' or 'gaussian', got {shape!r}")
    if fwhm_m == 0:
        return [float(centre_m)], [1.0]
    span = fwhm_m if shape == "flat" else 3 * fwhm_m
    edges = np.linspace(centre_m - span / 2, centre_m + span / 2, n + 1)
    mids = 0.5 * (edges[1:] + edges[:-1])
    if shape == "flat":
        w = np.ones(n)
    else:
        sigma = fwhm_m / (2 * math.sqrt(2 * math.log(2)))
        w = np.exp(-0.5 * ((mids - centre_m) / sigma) ** 2)
    w = w / w.sum()
    return [float(x) for x in mids], [float(x) for x in w]


def band_psf(transmission_fn: TransmissionFn, system: OpticalSystem, numerics: FaithfulNumerics,
             centre_m: float, fwhm_m: float, *, shape: str = "flat", n_samples: int | None = None, tol: float = 0.01,
             max_samples: int = 64, field_angle_rad: tuple[float, float] = (0.0, 0.0),
             object_distance_m: float | None = None) -> tuple[torch.Tensor, dict]:
    """Band-integrated PSF ``sum_j w_j PSF(lambda_j)`` over a passband (dispersion through ``transmission_fn``).

    Args:
        transmission_fn: :data:`TransmissionFn` ``(wavelength_m, field_angle_rad) -> complex (E, N, N)`` or its
            incoherent components.
        centre_m, fwhm_m, shape: passband (:func:`spectral_samples`).
        n_samples: spectral samples; None = 1 for zero bandwidth, else 3, 9, 27, ... (tripling nests the midpoints,
            so every monochromatic PSF is reused) until the window changes by < ``tol`` (relative L2, worst element).
        numerics: one m for the whole band (None = the auto value at the shortest wavelength).
    Returns:
        (psf float64 (E, W, W), info dict: wavelengths_m, weights, n_samples, history [(n, change)], ledger
        (band-weighted), centre_px, offset_m).
    """
    span = fwhm_m if shape == "flat" else 3 * fwhm_m
    if numerics.samples_per_superpixel is None:
        numerics = replace(numerics, samples_per_superpixel=auto_samples_per_superpixel(
            system.superpixel_m, centre_m - span / 2))
    cache: dict[float, FaithfulPSF] = {}

    def mono(wl):
        wl = round(wl, 15)  # nested midpoints agree to rounding
        if wl not in cache:
            cache[wl] = incoherent_psf(transmission_fn(wl, tuple(field_angle_rad)), wl, system, numerics,
                                       field_angle_rad, object_distance_m)
        return cache[wl]

    def integrate(n):
        wls, ws = spectral_samples(centre_m, fwhm_m, n, shape)
        results = [mono(wl) for wl in wls]
        psf = sum(w * r.psf for w, r in zip(ws, results))
        ledger = {k: sum(w * r.ledger[k] for w, r in zip(ws, results)) for k in results[0].ledger}
        return psf, wls, ws, ledger, results[0]

    history = []
    if n_samples is not None:
        psf, wls, ws, ledger, first = integrate(n_samples)
        n = n_samples
    elif fwhm_m == 0:
        psf, wls, ws, ledger, first = integrate(1)
        n = 1
    else:
        n = 3
        psf, wls, ws, ledger, first = integrate(n)
        while True:
            n2 = 3 * n
            if n2 > max_samples:
                raise ValueError(f"band_psf did not converge to {tol} with {max_samples} spectral samples: {history}")
            psf2, wls2, ws2, ledger2, first2 = integrate(n2)
            change = float(((psf2 - psf).flatten(1).norm(dim=1) / psf2.flatten(1).norm(dim=1)).max())
            history.append((n, change))
            n, psf, wls, ws, ledger, first = n2, psf2, wls2, ws2, ledger2, first2
            if change < tol:
                break
    return psf, dict(wavelengths_m=wls, weights=ws, n_samples=n, history=history, ledger=ledger,
                     centre_px=first.centre_px, offset_m=first.offset_m)


def window_for_fraction(image: torch.Tensor, fraction: float = 0.99, total: torch.Tensor | float | None = None) -> int:
    """Smallest odd window (centred on the image centre) holding >= ``fraction`` of ``total`` for every element.

    Args:
        image: real (E, Q, Q) or (Q, Q) pixel energies (e.g. :attr:`FaithfulPSF.image`), Q odd.
        total: per-element reference (E,) (e.g. ``ledger["transmitted"]``); None = the image sum.
    Returns:
        odd window side in pixels; raises ValueError when even the whole image holds less.
    """
    img = image[None] if image.ndim == 2 else image
    q = img.shape[-1]
    if q % 2 == 0 or img.shape[-2] != q:
        raise ValueError(f"image must be square with an odd side, got {tuple(image.shape)}")
    ref = img.sum(dim=(-2, -1)) if total is None else torch.as_tensor(total, dtype=img.dtype).reshape(-1)
    c = (q - 1) // 2
    for hw in range(c + 1):
        inside = img[:, c - hw:c + hw + 1, c - hw:c + hw + 1].sum(dim=(-2, -1))
        if bool((inside >= fraction * ref).all()):
            return 2 * hw + 1
    raise ValueError(f"the whole {q} x {q} image holds less than {fraction} of the reference: raise pad_factor")


def library_transmission_fn(library, radius_m: torch.Tensor) -> TransmissionFn:
    """:data:`TransmissionFn` of pillar radii (E, N, N) metres through a meta-atom library (its dispersion).

    ``library.transmission(radius, wavelength)`` (:class:`dko.optics.metaatoms.MetaAtomLibrary`) is tabulated at
    normal incidence: the field angle is accepted and not used (``faithful.metaatom_model: normal_incidence``;
    :meth:`dko.optics.oblique_table.ObliqueTable.transmission_fn` is the oblique, polarisation-resolved table).
    The table is interpolated once per distinct radius (a GDSII design has a few thousand) and gathered.
    """
    radius = radius_m[None] if radius_m.ndim == 2 else radius_m
    distinct, inverse = torch.unique(radius, return_inverse=True)

    def fn(wavelength_m: float, field_angle_rad: tuple[float, float]) -> torch.Tensor:
        with torch.no_grad():
            return library.transmission(distinct, wavelength_m)[inverse]

    return fn


# ----------------------------------------------------------------------------- independent check
def rayleigh_sommerfeld_staircase(values: torch.Tensor, superpixel_m: float, wavelength_m: float, distance_m: float,
                                  points_m: torch.Tensor, quadrature: int = 8) -> torch.Tensor:
    """Direct first Rayleigh-Sommerfeld integral of a piecewise-constant superpixel field (independent check).

    ``U(P) = sum_j a_j int_{superpixel j} (z / r) (1 / (2 pi r) - i / lambda) exp(i k r) / r dA`` with
    Gauss-Legendre quadrature (``quadrature`` points per superpixel side), superpixel centres as in
    :func:`staircase_spectrum`.

    Args:
        values: complex (N, N) superpixel values (row = y). points_m: float64 (P, 2) sensor points (x, y), metres.
    Returns:
        complex128 (P,).
    """
    n = values.shape[-1]
    gx, gw = np.polynomial.legendre.leggauss(quadrature)
    centres = (np.arange(n) - (n - 1) / 2) * superpixel_m
    xs = (centres[:, None] + 0.5 * superpixel_m * gx[None, :]).reshape(-1)
    ws = np.tile(0.5 * superpixel_m * gw, n)
    xs_t = torch.tensor(xs, dtype=torch.float64)
    ws_t = torch.tensor(ws, dtype=torch.float64)
    a = values.to(torch.complex128).repeat_interleave(quadrature, 0).repeat_interleave(quadrature, 1)
    a = a * (ws_t[:, None] * ws_t[None, :])
    k = 2 * math.pi / wavelength_m
    z = distance_m
    out = []
    for px, py in points_m.tolist():
        r = torch.sqrt((xs_t[None, :] - px) ** 2 + (xs_t[:, None] - py) ** 2 + z * z)
        kern = (z / r) * torch.complex(1 / (2 * math.pi * r), -torch.full_like(r, 1 / wavelength_m)) / r
        kern = kern * torch.polar(torch.ones_like(r), k * r)
        out.append((a * kern).sum())
    return torch.stack(out)
