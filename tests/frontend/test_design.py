"""Design variables -> PSFs, gains and geometry (dko.frontend.design): initialisation, the PSF model of DKO and
E2E, gain calibration, array layout, the distances and pitch read from the config."""

import numpy as np
import pytest
import torch

from dko.config import config_from_dict
from dko.dko import center_window, fidelity_metrics, optimize_designs
from dko.frontend import (OptoConv1, array_layout, build_kernel_bank, calibrate_gains, design_radius, element_pitch_m,
                          element_psfs, evaluation_distances, ideal_psfs, initial_designs, optimization_distances,
                          psf_fft_flops, radius_psfs)
from dko.optics.psf import (OpticalSystem, geometric_defocus_diameter_m, ideal_lens_phase, psf_from_radii,
                            wrap_phase)

torch.set_num_threads(2)
WLS = [6.4e-7, 5.5e-7, 4.6e-7]


def _cfg(tmp_path, **dko):
    return config_from_dict({
        "results_dir": str(tmp_path), "seed": 1,
        "optics": {"n_superpixels": 24, "superpixel_m": 1.2e-6, "sensor_distance_m": 2.0e-4, "psf_size_px": 15,
                   "object_distances_m": [10.0, 2.0]},
        "dko": {"fidelity_distances_m": [1.0, None, 10.0], **dko},
    })


def test_initial_designs_focus_and_noise(bank, system, library):
    p = initial_designs(bank, system, library, noise_std=0.0, seed=0)
    assert p.shape == (bank.n_elements, 24, 24) and p.dtype == torch.float32
    psf, eff = element_psfs(p, bank, system, library, [None])
    # a focusing lens: most transmitted light in the central 3 x 3 pixels (an Airy core of ~1 pixel radius)
    centre = center_window(psf[0], 3).sum(dim=(-2, -1)) / eff[0]
    assert float(centre.min()) > 0.6
    noisy = initial_designs(bank, system, library, noise_std=0.1, seed=3)
    again = initial_designs(bank, system, library, noise_std=0.1, seed=3)
    other = initial_designs(bank, system, library, noise_std=0.1, seed=4)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    assert float((noisy - p).std()) == pytest.approx(0.1, rel=0.05)
    # the same wavelength gets the same lens; element order follows the bank
    same = (bank.wavelength_m[:, None] == bank.wavelength_m[None, :])
    i, j = [int(v) for v in torch.nonzero(same & ~torch.eye(bank.n_elements, dtype=torch.bool))[0]]
    assert torch.equal(p[i], p[j])
    with pytest.raises(ValueError, match="init_noise_std"):
        initial_designs(bank, system, library, noise_std=-1.0, seed=0)


@pytest.mark.parametrize("parametrization", ["phase", "radius"])
def test_element_psfs_are_the_realised_radii_psfs_and_differentiable(bank, system, library, parametrization):
    """The PSFs the optimiser sees are those of the pillar radii that are written out (same physics)."""
    sub = bank.subset([0, 5])
    p = initial_designs(sub, system, library, noise_std=0.3, seed=1,
                        parametrization=parametrization).double().requires_grad_(True)
    psfs, eff = element_psfs(p, sub, system, library, [10.0, 0.002], parametrization)
    assert psfs.shape == (2, 2, 15, 15) and eff.shape == (2, 2)
    radius = design_radius(p.detach(), sub, library, parametrization)
    if parametrization == "radius":
        assert torch.equal(radius, library.radius_from_design(p.detach()))
    ref = psf_from_radii(radius, sub.wavelength_m, system, library, 0.002)
    assert torch.allclose(psfs[1].detach(), ref, rtol=1e-4, atol=1e-7)
    again, _ = radius_psfs(radius, sub, system, library, [0.002])
    assert torch.allclose(again[0], ref)
    # the window holds part of the transmitted light; light is never created
    assert torch.all(psfs.detach().sum(dim=(-2, -1)) <= eff.detach() * (1 + 1e-5))
    assert torch.all(eff <= 1.0 + 1e-6)
    (psfs[:, :, 7, 7].sum()).backward()
    assert torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0


def test_phase_initialisation_is_the_wrapped_lens_and_realises_it(bank, system, library):
    sub = bank.subset([2])  # 550 nm
    p = initial_designs(sub, system, library, noise_std=0.0, seed=0, parametrization="phase")
    lens = wrap_phase(ideal_lens_phase(system, float(sub.wavelength_m[0]), None)).float()
    assert torch.allclose(p[0], lens)
    t = library.transmission(design_radius(p, sub, library, "phase")[0], float(sub.wavelength_m[0]))
    # the realised phase follows the lens (the library reaches every phase at 550 nm)
    err = torch.angle(t * torch.exp(-1j * lens.double()))
    assert float(err.abs().median()) < 0.1
    with pytest.raises(ValueError, match="parametrization"):
        initial_designs(sub, system, library, noise_std=0.0, seed=0, parametrization="height")


def test_near_object_is_defocused(bank, system, library):
    """A lens focused at infinity blurs a point at z_o into a disk of diameter D z_s / z_o."""
    sub = bank.subset([2])  # 550 nm
    p = initial_designs(sub, system, library, noise_std=0.0, seed=0)
    z_near = 3.0e-4
    blur = geometric_defocus_diameter_m(system.aperture_m, system.sensor_distance_m, system.sensor_distance_m, z_near)
    assert blur / system.pixel_pitch_m > 6  # ~19 um: several pixels
    psfs, _ = element_psfs(p, sub, system, library, [None, z_near])
    centre = center_window(psfs, 3).sum(dim=(-2, -1))[:, 0] / psfs.sum(dim=(-2, -1))[:, 0]
    assert float(centre[1]) < 0.5 * float(centre[0])
    # radius holding 84% of the light ~ the geometric blur radius (a uniform disk holds 84% within 0.92 R)
    psf = psfs[1, 0].double()
    x = (torch.arange(15, dtype=torch.float64) - 7) * system.pixel_pitch_m
    r = torch.sqrt(x[:, None] ** 2 + x[None, :] ** 2).flatten()
    order = torch.argsort(r)
    cum = torch.cumsum(psf.flatten()[order], 0) / psf.sum()
    r84 = float(r[order][int(torch.searchsorted(cum, torch.tensor(0.84, dtype=torch.float64)))])
    assert 0.5 * blur / 2 < r84 < 1.5 * blur / 2


def test_calibrated_gains_reproduce_the_dc_response(bank):
    """gain_calibration='total': a uniform scene gives exactly the electronic conv1's response."""
    torch.manual_seed(2)
    blur = torch.rand(bank.n_elements, 9, 9) * 0.02
    psf = ideal_psfs(bank, 9) * 0.7 + blur  # 70 % efficiency plus a halo
    gains = calibrate_gains(psf, bank.gains, bank.kernel_size, "total")
    layer = OptoConv1(bank.replace(gains=gains), psf)
    ref = OptoConv1(bank, ideal_psfs(bank, 9))
    x = torch.full((1, 3, 21, 21), 0.3)
    # away from the border (the layer pads with the normalisation mean, and the halo reaches further)
    assert torch.allclose(layer(x)[..., 3:-3, 3:-3], ref(x)[..., 3:-3, 3:-3], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(layer(x)[..., :1, :], ref(x)[..., :1, :], rtol=1e-5, atol=1e-4)
    g_win = calibrate_gains(psf, bank.gains, bank.kernel_size, "window")
    assert torch.allclose(g_win * center_window(psf, bank.kernel_size).sum(dim=(-2, -1)), bank.gains, rtol=1e-5)
    assert torch.equal(calibrate_gains(psf, bank.gains, bank.kernel_size, "none"), bank.gains)
    with pytest.raises(ValueError, match="gain_calibration"):
        calibrate_gains(psf, bank.gains, bank.kernel_size, "bogus")


def test_array_layout_grid(bank):
    c = array_layout(bank, 1e-4)
    assert c.shape == (bank.n_elements, 2)
    assert len({tuple(v) for v in np.round(c, 12)}) == bank.n_elements
    assert np.allclose(c.mean(axis=0), 0.0, atol=1e-4)  # centred (all slots filled for a dense kernel)
    steps = np.unique(np.round(np.diff(np.unique(c[:, 0])), 12))
    assert np.allclose(steps, 1e-4)
    with pytest.raises(ValueError, match="element_pitch_m"):
        array_layout(bank, 0.0)


def test_distances_and_pitch_from_the_config(tmp_path):
    cfg = _cfg(tmp_path)
    assert optimization_distances(cfg) == [10.0]
    assert evaluation_distances(cfg) == [10.0, 1.0, None]  # design first, then ascending, infinity last
    multi = _cfg(tmp_path, distance_mode="multi")
    assert optimization_distances(multi) == [10.0, 2.0]
    assert evaluation_distances(multi) == [10.0, 2.0, 1.0, None]
    # null pitch: the larger of the aperture (28.8 um) and one element's image (320 px x 2.74 um)
    assert element_pitch_m(cfg) == pytest.approx(320 * 2.74e-6)
    assert element_pitch_m(_cfg(tmp_path, element_pitch_m=1e-3)) == 1e-3


def test_psf_fft_flops_scale_with_elements_distances_and_backward(system):
    one = psf_fft_flops(system, 1, 1)
    assert one > 0
    assert psf_fft_flops(system, 6, 2) == pytest.approx(12 * one, rel=1e-9, abs=12)
    assert psf_fft_flops(system, 1, 1, backward=False) == pytest.approx(one / 2, abs=1)


def test_phase_parametrisation_realises_smooth_kernels_with_the_light_in_the_window(library):
    """DKO at NA 0.36 (0.6 um superpixels): smooth 5 x 5 kernels of all three colours are realised to a few
    percent with >75 % of the transmitted light inside the kernel window by the phase parametrisation; the
    radius (logit) parametrisation, which cannot wrap a superpixel through 2 pi, keeps far less light there."""
    system = OpticalSystem(superpixel_m=0.6e-6, n_superpixels=48, sensor_distance_m=3.7e-5, pixel_pitch_m=2.74e-6,
                           psf_size_px=11)
    torch.manual_seed(0)
    g = torch.exp(-torch.arange(-2, 3.0) ** 2 / 2)
    smooth = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.randn(3, 1, 5, 5), (2, 2, 2, 2)),
                                        (g[:, None] * g[None])[None, None]).reshape(1, 3, 5, 5)
    bank = build_kernel_bank(smooth, 0.45, 0.225, WLS, stride=2)
    result = {}
    for parametrization, lr in (("phase", 0.5), ("radius", 0.05)):
        p0 = initial_designs(bank, system, library, noise_std=0.05, seed=0, parametrization=parametrization)

        def psf_fn(p):
            return element_psfs(p, bank, system, library, [10.0], parametrization)

        p, _ = optimize_designs(p0, bank.targets, psf_fn, steps=300, lr=lr, efficiency_weight=0.03,
                                plateau_patience=0)
        radius = design_radius(p, bank, library, parametrization)
        psf, eff = radius_psfs(radius, bank, system, library, [10.0])  # the fabricated pillars
        result[parametrization] = fidelity_metrics(psf[0], bank.targets, total_power=eff[0])
    phase, radius = result["phase"], result["radius"]
    assert float(phase["rel_l2"].median()) < 0.04 and float(phase["rel_l2"].max()) < 0.06
    assert float(phase["energy_in_window"].min()) > 0.75
    assert float(radius["energy_in_window"].median()) < float(phase["energy_in_window"].median()) - 0.2
