"""PSF simulator against analytic optics: Airy pattern, encircled energy, energy, defocus, gradients."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import j0, j1

from dko.config import config_from_dict
from dko.optics.psf import (OpticalSystem, _overlap_matrix, airy_first_zero_m, geometric_defocus_diameter_m,
                            ideal_lens_phase, ideal_lens_radii, ideal_lens_transmission, psf_bank,
                            psf_from_phase, psf_from_radii, psf_from_transmission)

torch.set_num_threads(2)
WL = 5.5e-7


def radii_grid(system):
    p = system.psf_size_px
    c = (torch.arange(p, dtype=torch.float64) - (p - 1) / 2) * system.pixel_pitch_m
    return torch.sqrt(c[None] ** 2 + c[:, None] ** 2)


@pytest.fixture(scope="module")
def airy():
    """Ideal lens, circular D = 153.6 um, z_s = 2.75 mm: first zero 12.0 um = 20 pixels of 0.6 um."""
    system = OpticalSystem(superpixel_m=0.6e-6, n_superpixels=256, sensor_distance_m=2.75e-3, pixel_pitch_m=0.6e-6,
                           psf_size_px=101, dtype=torch.complex128)
    psf, eff = psf_from_transmission(ideal_lens_transmission(system, WL), WL, system, None, return_efficiency=True)
    return system, psf, eff


def test_airy_first_zero(airy):
    system, psf, _ = airy
    r0 = airy_first_zero_m(WL, system.sensor_distance_m, system.aperture_m)
    assert r0 == pytest.approx(1.22 * WL * system.sensor_distance_m / system.aperture_m, rel=2e-3)
    r = radii_grid(system)
    step = 0.25e-6
    edges = torch.arange(0, 1.6 * r0, step, dtype=torch.float64)
    mids, prof = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (r >= a) & (r < b)
        if sel.any():
            mids.append(float(a + b) / 2)
            prof.append(float(psf[sel].mean()))
    mids, prof = np.array(mids), np.array(prof)
    window = np.nonzero((mids > 0.6 * r0) & (mids < 1.4 * r0))[0]
    i = window[np.argmin(prof[window])]
    y0, y1, y2 = prof[i - 1:i + 2]
    x_step = (mids[i + 1] - mids[i - 1]) / 2
    zero = mids[i] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * x_step
    assert abs(zero / r0 - 1) < 0.03, zero / r0  # measured +0.3%
    assert prof[i] < 0.01 * prof[0]  # a real zero, not just a dip


def test_encircled_energy_follows_airy(airy):
    system, psf, eff = airy
    r0 = airy_first_zero_m(WL, system.sensor_distance_m, system.aperture_m)
    r = radii_grid(system)
    # the PSF is normalised by the incident energy, so EE(r) = sum of PSF within r (tails beyond the simulated plane
    # are cut by the band limit: eff < 1 by the Airy energy outside it)
    for f in (0.5, 1.0, 1.5, 2.0, 2.4):
        radius = f * r0
        v = math.pi * system.aperture_m * radius / (WL * system.sensor_distance_m)
        expected = 1 - j0(v) ** 2 - j1(v) ** 2
        assert float(psf[r <= radius].sum()) == pytest.approx(expected, abs=5e-3)  # measured within 1e-3
    assert 0.98 < float(eff) <= 1.0


def test_energy_conservation_and_psf_sum():
    # well sampled, lossless phase mask; sensor window covers the whole simulated plane (non-integer pixel ratio)
    extent = 320 * 0.6e-6  # 64 superpixels x 2 samples x pad 2.5 at 0.6 um
    system = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=64, sensor_distance_m=2e-4, pixel_pitch_m=extent / 71,
                           psf_size_px=71, pad_factor=2.5, oversample=2, aperture="square", dtype=torch.complex128)
    assert system.grid_extent_m == pytest.approx(extent)  # pixel / sample ratio 4.507
    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 64 + 15, 64 + 15, generator=gen), 16, stride=1)[0, 0]
    phase = 6 * (smooth - smooth.mean()) / smooth.std() * 0.3 + ideal_lens_phase(system, WL)
    psf, eff = psf_from_phase(phase[None], [WL], system, 10.0, return_efficiency=True)
    assert abs(float(eff) - 1) < 1e-3
    assert float(psf.sum()) == pytest.approx(float(eff), abs=1e-9)  # area resampling conserves energy
    # an amplitude mask of |t| = 0.5 transmits a quarter
    psf2, eff2 = psf_from_transmission(0.5 * torch.polar(torch.ones_like(phase), phase), WL, system, 10.0,
                                       return_efficiency=True)
    assert float(eff2) == pytest.approx(0.25 * float(eff), rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(pixel=st.floats(0.3, 5.0), cell=st.floats(0.3, 5.0), cells=st.integers(2, 40))
def test_area_resampling_matrix(pixel, cell, cells):
    n_px = 2 * int(math.ceil(cells * cell / pixel / 2)) + 1  # pixels cover every cell
    a = _overlap_matrix(n_px, pixel, cells, cell)
    torch.testing.assert_close(a.sum(dim=0), torch.ones(cells, dtype=torch.float64))
    assert torch.all(a >= 0)
    assert torch.all(a.sum(dim=1) <= pixel / cell + 1e-9)


@pytest.fixture(scope="module")
def defocus_system():
    return OpticalSystem(superpixel_m=2e-6, n_superpixels=256, sensor_distance_m=5e-3, pixel_pitch_m=2e-6,
                         psf_size_px=201, pad_factor=2)


def r50(psf, system):
    r = radii_grid(system).flatten()
    v = psf.double().flatten()
    order = torch.argsort(r)
    cum = torch.cumsum(v[order], 0) / v.sum()
    return float(r[order][torch.searchsorted(cum, torch.tensor(0.5, dtype=torch.float64))])


def test_defocus_blur_follows_geometric_estimate(defocus_system):
    """Lens focused at infinity (f = z_s), point at z_o: image at z_i = f z_o / (z_o - f); the cone of diameter D
    converging to z_i crosses the sensor with diameter B = D (z_i - z_s) / z_i = D z_s / z_o. A uniform disk of
    radius B/2 holds half its energy within B / (2 sqrt 2)."""
    s = defocus_system
    lens = ideal_lens_transmission(s, WL)
    distances = [0.0167, 0.01]
    bank = psf_bank(lens[None], [WL], s, distances)
    assert bank.shape == (2, 1, 201, 201)
    measured = []
    for zo, psf in zip(distances, bank[:, 0]):
        b = geometric_defocus_diameter_m(s.aperture_m, s.sensor_distance_m, s.sensor_distance_m, zo)
        assert b == pytest.approx(s.aperture_m * s.sensor_distance_m / zo)
        diameter = 2 * math.sqrt(2) * r50(psf, s)
        assert diameter == pytest.approx(b, rel=0.06)  # measured -3.8% and -0.3% (diffraction at low defocus)
        measured.append(diameter)
    assert measured[1] / measured[0] == pytest.approx(1.67, rel=0.06)
    sharp = psf_from_transmission(lens, WL, s, None)
    assert r50(sharp, s) < 0.15 * measured[0]


def test_lens_focused_at_finite_distance_is_sharp(defocus_system):
    """Checks the sign of the spherical source wave: a wrong sign would defocus by twice the blur."""
    s = defocus_system
    zo = 0.01
    focused = psf_from_transmission(ideal_lens_transmission(s, WL, zo), WL, s, zo)
    at_infinity = psf_from_transmission(ideal_lens_transmission(s, WL), WL, s, None)
    assert float(focused.max()) == pytest.approx(float(at_infinity.max()), rel=0.02)
    assert r50(focused, s) == pytest.approx(r50(at_infinity, s), abs=s.pixel_pitch_m)


def test_default_config_gives_diffraction_limited_pixel_sized_psf():
    cfg = config_from_dict({})
    system = OpticalSystem.from_config(cfg.optics)
    wls = list(cfg.optics.wavelengths_m)
    psf, eff = psf_from_transmission(ideal_lens_transmission(system, wls), wls, system, cfg.optics.object_distances_m[0],
                                     return_efficiency=True)
    c = system.psf_size_px // 2
    assert psf.shape == (3, system.psf_size_px, system.psf_size_px)
    assert torch.all(eff > 0.99) and torch.all(psf.sum(dim=(-2, -1)) > 0.95)
    centre = psf[:, c, c] / psf.sum(dim=(-2, -1))
    assert torch.all(centre > 0.4) and torch.all(centre < 0.95)  # about one pixel, well resolved by 7x7 kernels
    assert torch.all(psf[:, c - 3:c + 4, c - 3:c + 4].sum(dim=(-2, -1)) / psf.sum(dim=(-2, -1)) > 0.9)
    # symmetric about the axis
    torch.testing.assert_close(psf, torch.flip(psf, dims=(-1,)), atol=1e-6, rtol=1e-4)
    # red blurs more than blue
    assert centre[0] < centre[2]


def test_orientation_follows_the_mask():
    """A linear phase ramp along +x (columns) shifts the PSF towards larger column indices."""
    s = OpticalSystem(superpixel_m=1e-6, n_superpixels=64, sensor_distance_m=5e-4, pixel_pitch_m=2e-6, psf_size_px=41)
    x = (torch.arange(64, dtype=torch.float64) - 31.5) * 1e-6
    tilt = 2 * math.pi * 0.02 / WL * x[None, :].expand(64, 64)  # sin(theta) = 0.02 -> 10 um = 5 pixels
    psf = psf_from_phase(ideal_lens_phase(s, WL) + tilt, WL, s)
    row, col = divmod(int(torch.argmax(psf)), 41)
    assert row == 20 and col == 25


class MockLibrary:
    """Smooth, differentiable stand-in for the meta-atom table: radius 30..135 nm, phase ~ 2.2 pi over the range."""

    r_min, r_max = 30e-9, 135e-9

    def radius_from_design(self, p):
        return self.r_min + (self.r_max - self.r_min) * torch.sigmoid(p)

    def transmission(self, radius_m, wavelength_m):
        u = (radius_m - self.r_min) / (self.r_max - self.r_min)
        amp = 0.85 + 0.1 * torch.cos(3 * u)
        phase = 2.2 * math.pi * u * (5.5e-7 / wavelength_m) + 0.3 * u**2
        return torch.polar(amp, phase)

    def design_for_phase(self, phase, wavelength_m):
        """Reverse lookup on a fine table of the (monotonic, unwrapped) mock phase, as a design variable p."""
        u = torch.linspace(1e-4, 1 - 1e-4, 4001, dtype=torch.float64)
        table = 2.2 * math.pi * u * (5.5e-7 / wavelength_m) + 0.3 * u**2
        target = torch.remainder(phase - float(table[0]), 2 * math.pi) + float(table[0])
        best = u[torch.clamp(torch.searchsorted(table, target.contiguous()), max=u.numel() - 1)]
        return torch.log(best / (1 - best))


def test_ideal_lens_by_reverse_lookup():
    s = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=128, sensor_distance_m=6.3e-4, pixel_pitch_m=2.74e-6)
    lib = MockLibrary()
    radii = ideal_lens_radii(s, [WL, WL], lib)
    assert radii.shape == (2, 128, 128)
    assert float(radii.min()) >= lib.r_min and float(radii.max()) <= lib.r_max
    realised = torch.angle(lib.transmission(radii[0], WL))
    target = torch.angle(ideal_lens_transmission(s, WL)).to(torch.float64)
    err = torch.remainder(realised - target + math.pi, 2 * math.pi) - math.pi
    assert float(err.abs().max()) < 0.01
    psf = psf_from_radii(radii[:1], [WL], s, lib)
    ideal = psf_from_transmission(ideal_lens_transmission(s, [WL]), [WL], s)
    c = s.psf_size_px // 2
    # same shape (normalised), lower efficiency (|t| < 1 of the mock atoms)
    torch.testing.assert_close(psf[0] / psf[0].sum(), ideal[0] / ideal[0].sum(), atol=3e-3, rtol=0)
    assert 0.6 < float(psf.sum() / ideal.sum()) < 0.95
    assert float(psf[0, c, c] / psf[0].sum()) > 0.6


def test_gradient_matches_finite_differences():
    s = OpticalSystem(superpixel_m=1.5e-6, n_superpixels=8, sensor_distance_m=1e-4, pixel_pitch_m=2.74e-6,
                      psf_size_px=5, pad_factor=2, dtype=torch.complex128)
    lib = MockLibrary()
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(2, 8, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.rand(2, 5, 5, dtype=torch.float64, generator=gen)
    target = target / target.sum(dim=(-2, -1), keepdim=True)

    def loss(design):
        psf = psf_from_radii(lib.radius_from_design(design), [6.4e-7, 4.6e-7], s, lib, 10.0)
        return ((psf / psf.sum(dim=(-2, -1), keepdim=True) - target) ** 2).sum()

    assert torch.autograd.gradcheck(loss, (p,), eps=1e-6, atol=1e-7, rtol=1e-4, fast_mode=True)
    # and a few coordinates exactly (central differences)
    grad = torch.autograd.grad(loss(p), p)[0]
    with torch.no_grad():
        for idx in [(0, 3, 4), (1, 0, 7), (1, 5, 2)]:
            step = torch.zeros_like(p)
            step[idx] = 1e-6
            fd = (loss(p + step) - loss(p - step)) / 2e-6
            assert float(fd) == pytest.approx(float(grad[idx]), rel=1e-5, abs=1e-9)
    grad = torch.autograd.grad(loss(p), p)[0]
    assert float(grad.abs().max()) > 0


def test_real_library_gradient_and_reverse_lookup():
    from dko.optics.metaatoms import MetaAtomLibrary  # the project's own module: an import error must fail

    lib = MetaAtomLibrary.default()
    s = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=8, sensor_distance_m=1e-4, pixel_pitch_m=2.74e-6,
                      psf_size_px=5, dtype=torch.complex128)
    p = torch.zeros(1, 8, 8, dtype=torch.float64).uniform_(-1, 1).requires_grad_(True)

    def loss(design):
        psf = psf_from_radii(lib.radius_from_design(design).to(torch.float64), [WL], s, lib, None)
        return psf[..., 2, 2].sum()

    assert torch.autograd.gradcheck(loss, (p,), eps=1e-6, atol=1e-6, rtol=1e-3, fast_mode=True)
    big = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=128, sensor_distance_m=6.3e-4, pixel_pitch_m=2.74e-6)
    radii = ideal_lens_radii(big, [WL], lib)
    realised = psf_from_radii(radii, [WL], big, lib)
    ideal = psf_from_transmission(ideal_lens_transmission(big, [WL]), [WL], big)
    c = big.psf_size_px // 2
    assert float(realised[0, c, c] / realised[0].sum()) > 0.8 * float(ideal[0, c, c] / ideal[0].sum())


def test_bad_inputs_are_rejected():
    s = OpticalSystem(superpixel_m=1e-6, n_superpixels=16, sensor_distance_m=1e-4, pixel_pitch_m=2e-6, psf_size_px=5)
    with pytest.raises(ValueError, match="n_superpixels"):
        psf_from_transmission(torch.ones(2, 8, 8, dtype=torch.complex64), WL, s)
    with pytest.raises(ValueError, match="wavelengths"):
        psf_from_transmission(torch.ones(2, 16, 16, dtype=torch.complex64), [WL] * 3, s)
    with pytest.raises(ValueError, match="metres"):
        psf_from_transmission(torch.ones(16, 16, dtype=torch.complex64), 550.0, s)
    with pytest.raises(ValueError, match="psf_size_px"):
        OpticalSystem(superpixel_m=1e-6, n_superpixels=16, sensor_distance_m=1e-4, pixel_pitch_m=2e-6, psf_size_px=33)
    with pytest.raises(ValueError, match="psf_size_px"):
        config_from_dict({"optics": {"psf_size_px": 20}})
    with pytest.raises(ValueError, match="aperture"):
        OpticalSystem(superpixel_m=1e-6, n_superpixels=16, sensor_distance_m=1e-4, pixel_pitch_m=2e-6, aperture="hex")
    assert psf_from_transmission(torch.ones(16, 16, dtype=torch.complex64), WL, s).shape == (5, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_psf_on_cuda_matches_cpu():
    s = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=64, sensor_distance_m=3e-4, pixel_pitch_m=2.74e-6,
                      psf_size_px=11)
    wls = [6.4e-7, 5.5e-7, 4.6e-7]
    t = ideal_lens_transmission(s, wls)
    cpu = psf_from_transmission(t, wls, s, 10.0)
    gpu = psf_from_transmission(t.cuda(), wls, s, 10.0).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-3)


def test_cli_psf_ideal(tmp_path):
    import yaml

    from dko.cli import main

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"optics": {"n_superpixels": 32, "sensor_distance_m": 1.6e-4, "psf_size_px": 9}}))
    out = tmp_path / "psf.png"
    main(["psf", "--ideal", "--config", str(cfg), "--out", str(out)])
    assert out.is_file() and out.stat().st_size > 1000
    data = np.load(out.with_suffix(".npz"))
    assert data["psf"].shape == (1, 3, 9, 9)
    assert np.all(data["psf"].sum(axis=(-2, -1)) > 0.5)
