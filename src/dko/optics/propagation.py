"""Scalar free-space propagation: band-limited angular spectrum (production) and Fresnel (checks).

Conventions
-----------
- A field is a complex tensor ``(..., ny, nx)`` sampled on a square grid of pitch ``pitch_m``; row
  index = y, column index = x. Leading dimensions are batch dimensions (elements, wavelengths, ...).
- ``wavelength_m`` is either one float (shared by the whole batch) or a 1-D sequence / tensor of
  length ``field.shape[-3]``: one wavelength per entry of the last batch dimension (one element each).
- Time dependence ``exp(-i w t)``: a wave travelling towards +z is ``exp(+i k z)``.

Angular spectrum (:func:`asm_propagate`): the field is zero-padded (centred) to ``pad_factor`` times
its size, transformed with the FFT, multiplied by the transfer function

    H(fx, fy) = exp(i 2 pi z sqrt(1/lambda^2 - fx^2 - fy^2))

on the exact FFT frequencies (``torch.fft.fftfreq``), with evanescent components
(fx^2 + fy^2 >= 1/lambda^2) removed and Matsushima & Shimobaba's band limit
(Opt. Express 17, 19662 (2009)) |fx| <= 1 / (lambda sqrt((2 z / L_x)^2 + 1)) (same for y, L = padded
extent) that suppresses the aliasing of the sampled transfer function. The phase is computed in
float64 and cast to the requested complex dtype. Transfer functions are cached by
(shape, pitch, wavelengths, distance, device, dtype).

Fresnel (:func:`fresnel_propagate`): the single-FFT Fresnel integral, an independent discretisation
used to check the angular spectrum in the paraxial regime. Its output pitch is
``lambda z / (n pitch)``.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

__all__ = [
    "asm_transfer_function",
    "asm_propagate",
    "fresnel_propagate",
    "padded_size",
    "center_pad",
    "center_crop",
    "clear_transfer_cache",
]

WavelengthArg = float | Sequence[float] | torch.Tensor


def _wavelength_tuple(wavelength_m: WavelengthArg) -> tuple[float, ...] | float:
    if isinstance(wavelength_m, torch.Tensor):
        if wavelength_m.ndim == 0:
            return float(wavelength_m)
        if wavelength_m.ndim != 1:
            raise ValueError(f"wavelength_m must be a float or a 1-D sequence, got shape {tuple(wavelength_m.shape)}")
        return tuple(float(w) for w in wavelength_m.detach().cpu().tolist())
    if isinstance(wavelength_m, (int, float)):
        return float(wavelength_m)
    return tuple(float(w) for w in wavelength_m)


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def padded_size(n: int, pad_factor: float) -> int:
    """Size of one axis after zero padding by ``pad_factor`` (>= 1), rounded up to an even number."""
    if pad_factor < 1:
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
    m = int(math.ceil(n * pad_factor))
    return m + (m - n) % 2  # keep (m - n) even so the padding is centred exactly


def center_pad(field: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad the last two axes to ``shape``, centred (equal padding both sides; sizes must differ by even numbers)."""
    ny, nx = field.shape[-2:]
    my, mx = shape
    if (my - ny) % 2 or (mx - nx) % 2 or my < ny or mx < nx:
        raise ValueError(f"cannot centre-pad {(ny, nx)} to {shape}: need larger sizes differing by even numbers")
    py, px = (my - ny) // 2, (mx - nx) // 2
    if py == 0 and px == 0:
        return field
    return torch.nn.functional.pad(field, (px, px, py, py))


def center_crop(field: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`center_pad`."""
    my, mx = field.shape[-2:]
    ny, nx = shape
    py, px = (my - ny) // 2, (mx - nx) // 2
    return field[..., py:py + ny, px:px + nx]


@functools.lru_cache(maxsize=64)
def _cached_transfer(ny: int, nx: int, pitch_m: float, wavelengths: tuple[float, ...], distance_m: float,
                     device: str, dtype: torch.dtype, band_limit: bool) -> torch.Tensor:
    fy = torch.fft.fftfreq(ny, d=pitch_m, dtype=torch.float64)
    fx = torch.fft.fftfreq(nx, d=pitch_m, dtype=torch.float64)
    fy2 = (fy * fy)[:, None]
    fx2 = (fx * fx)[None, :]
    out = []
    for wl in wavelengths:
        arg = 1.0 / wl**2 - fx2 - fy2
        propagating = arg > 0
        kz = torch.sqrt(torch.clamp(arg, min=0.0))
        keep = propagating
        if band_limit:
            ly, lx = ny * pitch_m, nx * pitch_m
            fx_lim = 1.0 / (wl * math.sqrt((2.0 * distance_m / lx) ** 2 + 1.0))
            fy_lim = 1.0 / (wl * math.sqrt((2.0 * distance_m / ly) ** 2 + 1.0))
            keep = keep & (fx2 <= fx_lim**2) & (fy2 <= fy_lim**2)
        phase = 2.0 * math.pi * distance_m * kz
        h = torch.polar(keep.to(torch.float64), phase)
        out.append(h)
    return torch.stack(out).to(dtype=dtype, device=device)


def clear_transfer_cache() -> None:
    """Drop every cached transfer function (frees device memory)."""
    _cached_transfer.cache_clear()


def asm_transfer_function(shape: tuple[int, int], pitch_m: float, wavelength_m: WavelengthArg, distance_m: float, *,
                          device: torch.device | str = "cpu", dtype: torch.dtype = torch.complex64,
                          band_limit: bool = True) -> torch.Tensor:
    """Band-limited angular-spectrum transfer function on the unshifted FFT frequency grid.

    Args:
        shape: (ny, nx) of the (already padded) grid.
        pitch_m: sample pitch, metres.
        wavelength_m: one wavelength (-> ``(ny, nx)``) or a sequence of W (-> ``(W, ny, nx)``), metres.
        distance_m: propagation distance (may be negative: back-propagation), metres.
        device, dtype: of the result (complex64 or complex128).
        band_limit: apply Matsushima's band limit (evanescent components are always removed).
    Returns:
        Complex tensor, cached: do not modify it in place.
    """
    _check_positive("pitch_m", pitch_m)
    if not math.isfinite(distance_m):
        raise ValueError(f"distance_m must be finite, got {distance_m}")
    if dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
    wl = _wavelength_tuple(wavelength_m)
    single = isinstance(wl, float)
    wls = (wl,) if single else wl
    for w in wls:
        _check_positive("wavelength_m", w)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    h = _cached_transfer(int(shape[0]), int(shape[1]), float(pitch_m), tuple(wls), float(distance_m), str(dev), dtype,
                         bool(band_limit))
    return h[0] if single else h


def _per_element_transfer(field: torch.Tensor, pitch_m: float, wavelength_m: WavelengthArg, distance_m: float,
                          band_limit: bool) -> torch.Tensor:
    """Transfer function broadcastable against ``field`` (..., E, ny, nx) with per-element wavelengths."""
    shape = tuple(field.shape[-2:])
    wl = _wavelength_tuple(wavelength_m)
    if isinstance(wl, float):
        return asm_transfer_function(shape, pitch_m, wl, distance_m, device=field.device, dtype=field.dtype,
                                     band_limit=band_limit)
    if field.ndim < 3 or field.shape[-3] != len(wl):
        raise ValueError(f"{len(wl)} wavelengths given for a field of shape {tuple(field.shape)}: need one per "
                         "entry of dimension -3")
    unique = tuple(sorted(set(wl)))
    h = asm_transfer_function(shape, pitch_m, unique, distance_m, device=field.device, dtype=field.dtype,
                              band_limit=band_limit)
    if len(unique) == 1:
        return h[0]
    index = torch.tensor([unique.index(w) for w in wl], device=field.device)
    return h.index_select(0, index)


def asm_propagate(field: torch.Tensor, pitch_m: float, wavelength_m: WavelengthArg, distance_m: float, *,
                  pad_factor: float = 2.0, crop: bool = True, band_limit: bool = True) -> torch.Tensor:
    """Propagate a sampled field by ``distance_m`` with the band-limited angular spectrum method.

    Args:
        field: complex (..., ny, nx) (complex64 or complex128) at pitch ``pitch_m``.
        pitch_m: sample pitch, metres.
        wavelength_m: float, or one wavelength per entry of dimension -3 (see the module docstring).
        distance_m: metres.
        pad_factor: zero padding (>= 1) of each axis before the FFT (2 = linear convolution for fields that
            stay within the input window).
        crop: return the central ``(ny, nx)`` window (True) or the whole padded grid (False, same pitch,
            optical axis at the same relative position).
        band_limit: Matsushima band limit (keep True except to study aliasing).
    Returns:
        Complex tensor of ``field``'s dtype: (..., ny, nx) or the padded (..., my, mx).
    """
    if not field.is_complex():
        raise TypeError(f"field must be a complex tensor, got {field.dtype}")
    ny, nx = field.shape[-2:]
    shape = (padded_size(ny, pad_factor), padded_size(nx, pad_factor))
    padded = center_pad(field, shape)
    h = _per_element_transfer(padded, pitch_m, wavelength_m, distance_m, band_limit)
    out = torch.fft.ifft2(torch.fft.fft2(padded) * h)
    return center_crop(out, (ny, nx)) if crop else out


def fresnel_propagate(field: torch.Tensor, pitch_m: float, wavelength_m: WavelengthArg,
                      distance_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-FFT Fresnel diffraction integral (for checks; paraxial, no padding).

    U2(x2) = exp(ikz)/(i lambda z) exp(i pi |x2|^2/(lambda z)) * sum U1(x1) exp(i pi |x1|^2/(lambda z))
             exp(-i 2 pi x1.x2/(lambda z)) pitch^2

    Args:
        field: complex (..., n, n) square grid, optical axis at index ``n // 2`` on both axes,
            coordinates ``x = (index - n // 2) * pitch_m``.
        pitch_m, wavelength_m, distance_m: as :func:`asm_propagate` (distance > 0).
    Returns:
        (field2, pitch2_m): complex (..., n, n) on the output grid (axis at ``n // 2``) and its pitch
        ``lambda z / (n pitch)``: a float64 tensor, 0-d for one wavelength else (E,).
    """
    if not field.is_complex():
        raise TypeError(f"field must be a complex tensor, got {field.dtype}")
    n = field.shape[-1]
    if field.shape[-2] != n:
        raise ValueError(f"fresnel_propagate needs a square grid, got {tuple(field.shape[-2:])}")
    _check_positive("distance_m", distance_m)
    wl = _wavelength_tuple(wavelength_m)
    real = torch.float64
    wls = torch.tensor([wl] if isinstance(wl, float) else list(wl), dtype=real, device=field.device)
    if not isinstance(wl, float) and (field.ndim < 3 or field.shape[-3] != len(wl)):
        raise ValueError(f"{len(wl)} wavelengths given for a field of shape {tuple(field.shape)}")
    coords = (torch.arange(n, dtype=real, device=field.device) - n // 2) * pitch_m
    r2_in = coords[:, None] ** 2 + coords[None, :] ** 2
    lz = (wls * distance_m)[:, None, None]  # (W,1,1)
    pitch2 = wls * distance_m / (n * pitch_m)
    coords2 = (torch.arange(n, dtype=real, device=field.device) - n // 2)[None, :] * pitch2[:, None]  # (W, n)
    r2_out = coords2[:, :, None] ** 2 + coords2[:, None, :] ** 2
    chirp_in = torch.polar(torch.ones_like(r2_in), math.pi * r2_in / lz)
    k = 2.0 * math.pi / wls
    prefactor = torch.polar(1.0 / lz, math.pi * r2_out / lz + (k * distance_m)[:, None, None] - math.pi / 2)
    if isinstance(wl, float):
        chirp_in, prefactor = chirp_in[0], prefactor[0]
    cdtype = field.dtype
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(field * chirp_in.to(cdtype), dim=(-2, -1))),
                                  dim=(-2, -1))
    out = prefactor.to(cdtype) * spectrum * pitch_m**2
    return out, (pitch2[0] if isinstance(wl, float) else pitch2)
