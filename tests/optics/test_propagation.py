"""Angular-spectrum and Fresnel propagation against analytic results and each other."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dko.optics.propagation import (asm_propagate, asm_transfer_function, center_crop, center_pad,
                                    fresnel_propagate, padded_size)

torch.set_num_threads(2)

WL = 5.5e-7


def grid(n, pitch):
    """Coordinates with the axis at index n // 2 (the Fresnel convention)."""
    x = (torch.arange(n, dtype=torch.float64) - n // 2) * pitch
    return x[None, :], x[:, None]


def gaussian_beam(n, pitch, w0, z, wl=WL):
    """Paraxial Gaussian beam (waist w0 at z = 0), including exp(ikz), complex128 (n, n)."""
    x, y = grid(n, pitch)
    r2 = x**2 + y**2
    k = 2 * math.pi / wl
    zr = math.pi * w0**2 / wl
    if z == 0:
        return torch.exp(-r2 / w0**2).to(torch.complex128)
    w = w0 * math.sqrt(1 + (z / zr) ** 2)
    inv_r = z / (z**2 + zr**2)
    gouy = math.atan(z / zr)
    amp = w0 / w * torch.exp(-r2 / w**2)
    return torch.polar(amp, k * z + k * r2 * inv_r / 2 - gouy)


def rel_l2(a, b):
    return float((a - b).abs().norm() / b.abs().norm())


def test_asm_matches_gaussian_beam_and_conserves_energy():
    n, pitch, w0, z = 256, 2e-6, 30e-6, 4e-3
    u0 = gaussian_beam(n, pitch, w0, 0.0)
    u1 = asm_propagate(u0, pitch, WL, z, pad_factor=2)
    expected = gaussian_beam(n, pitch, w0, z)
    assert rel_l2(u1, expected) < 1e-3
    energy_ratio = float(u1.abs().square().sum() / u0.abs().square().sum())
    assert abs(energy_ratio - 1) < 1e-3
    # complex64 (the default dtype) keeps the accuracy: the phase is built in float64
    u1_32 = asm_propagate(u0.to(torch.complex64), pitch, WL, z)
    assert u1_32.dtype == torch.complex64
    assert rel_l2(u1_32.to(torch.complex128), expected) < 2e-3


def test_asm_agrees_with_fresnel_in_paraxial_regime():
    # an off-centre, asymmetric hard-edged aperture (a rectangle and a disk), small angles
    n, pitch = 512, 2e-6
    z = n * pitch**2 / WL  # Fresnel output pitch = input pitch: both fields on the same grid
    x, y = grid(n, pitch)
    field = (((x - 30e-6).abs() < 60e-6) & ((y + 20e-6).abs() < 25e-6)) | ((x + 50e-6) ** 2 + (y - 40e-6) ** 2 < (30e-6) ** 2)
    # soften the edges (Gaussian, sigma 4 um): keeps the spectrum paraxial (sin(theta) < ~0.05); hard
    # edges put energy at the grid's Nyquist angle where single-FFT Fresnel aliases (measured 12% off)
    fx = torch.fft.fftfreq(n, d=pitch, dtype=torch.float64)
    soft = torch.exp(-2 * math.pi**2 * (4e-6) ** 2 * (fx[None] ** 2 + fx[:, None] ** 2))
    field = torch.fft.ifft2(torch.fft.fft2(field.to(torch.complex128)) * soft)
    fresnel, pitch2 = fresnel_propagate(field, pitch, WL, z)
    assert float(pitch2) == pytest.approx(pitch, rel=1e-12)
    asm = asm_propagate(field, pitch, WL, z, pad_factor=2)
    err = rel_l2(asm, fresnel)
    assert err < 2e-3, err  # measured 4.8e-4
    # the comparison is sensitive: a 10% error in distance or a mirrored field is far off
    intensity = fresnel.abs().square()
    assert rel_l2(asm_propagate(field, pitch, WL, 1.1 * z).abs().square(), intensity) > 0.05
    assert rel_l2(torch.flip(asm, dims=(-1,)), fresnel) > 0.5


def test_fresnel_matches_gaussian_beam():
    n, pitch, w0 = 256, 2e-6, 40e-6
    z = n * pitch**2 / WL
    out, pitch2 = fresnel_propagate(gaussian_beam(n, pitch, w0, 0.0), pitch, WL, z)
    assert rel_l2(out, gaussian_beam(n, float(pitch2), w0, z)) < 1e-3


def test_per_element_wavelengths_match_single_calls():
    torch.manual_seed(0)
    field = torch.randn(3, 32, 32, dtype=torch.complex64)
    wls = [6.4e-7, 5.5e-7, 6.4e-7]
    batched = asm_propagate(field, 1e-6, wls, 2e-5, pad_factor=1.5)
    for e, wl in enumerate(wls):
        single = asm_propagate(field[e], 1e-6, wl, 2e-5, pad_factor=1.5)
        torch.testing.assert_close(batched[e], single)
    fres, pitches = fresnel_propagate(field.to(torch.complex128), 1e-6, wls, 1e-3)
    assert pitches.shape == (3,)
    torch.testing.assert_close(fres[1], fresnel_propagate(field[1].to(torch.complex128), 1e-6, wls[1], 1e-3)[0])


def test_forward_then_backward_propagation_recovers_band_limited_field():
    n, pitch = 128, 1e-6
    u0 = gaussian_beam(n, pitch, 8e-6, 0.0)
    there = asm_propagate(u0, pitch, WL, 5e-5, pad_factor=2, crop=False)
    back = asm_propagate(there, pitch, WL, -5e-5, pad_factor=1, crop=False)
    assert rel_l2(center_crop(back, (n, n)), u0) < 1e-6


@settings(max_examples=25, deadline=None)
@given(wl=st.floats(3e-7, 1.5e-6), pitch=st.floats(1e-7, 5e-6), z=st.floats(1e-6, 1e-2), n=st.integers(8, 64))
def test_transfer_function_properties(wl, pitch, z, n):
    h = asm_transfer_function((n, n + 2), pitch, wl, z, dtype=torch.complex128)
    fy = torch.fft.fftfreq(n, d=pitch, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(n + 2, d=pitch, dtype=torch.float64)[None, :]
    mag = h.abs()
    # unit modulus where kept, zero elsewhere; evanescent and beyond-band-limit components removed
    assert torch.all(((mag - 1).abs() < 1e-9) | (mag == 0))
    assert torch.all(mag[fx**2 + fy**2 >= 1 / wl**2] == 0)
    limit = 1 / (wl * math.sqrt((2 * z / ((n + 2) * pitch)) ** 2 + 1))
    assert torch.all(mag[(fx.abs() > limit * (1 + 1e-12)).expand_as(mag)] == 0)
    # exact kz where kept
    kept = mag > 0
    kz = 2 * math.pi * z * torch.sqrt(torch.clamp(1 / wl**2 - fx**2 - fy**2, min=0))
    diff = torch.angle(h * torch.polar(torch.ones_like(kz), -kz))
    assert torch.all(diff[kept].abs() < 1e-6)


def test_transfer_function_cache_and_errors():
    a = asm_transfer_function((16, 16), 1e-6, WL, 1e-4)
    b = asm_transfer_function((16, 16), 1e-6, WL, 1e-4)
    assert a.data_ptr() == b.data_ptr()  # cached
    assert asm_transfer_function((16, 16), 1e-6, [WL, 6e-7], 1e-4).shape == (2, 16, 16)
    with pytest.raises(TypeError):
        asm_propagate(torch.ones(8, 8), 1e-6, WL, 1e-4)
    with pytest.raises(ValueError, match="wavelength"):
        asm_propagate(torch.ones(2, 8, 8, dtype=torch.complex64), 1e-6, [WL, WL, WL], 1e-4)
    with pytest.raises(ValueError, match="pitch_m"):
        asm_transfer_function((8, 8), -1.0, WL, 1e-4)
    assert padded_size(128, 2) == 256 and padded_size(127, 1.5) % 2 == 1
    x = torch.arange(12.0).reshape(3, 4).to(torch.complex64)
    torch.testing.assert_close(center_crop(center_pad(x, (7, 8)), (3, 4)), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_asm_on_cuda_matches_cpu():
    u0 = gaussian_beam(64, 1e-6, 8e-6, 0.0).to(torch.complex64)
    cpu = asm_propagate(u0, 1e-6, WL, 1e-4)
    gpu = asm_propagate(u0.cuda(), 1e-6, WL, 1e-4).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-4)
