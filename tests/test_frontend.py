"""The shared optical front end: initialisation, PSF model, frontend.npz, gains, layout, opto-electronic predictor."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from dko.config import config_from_dict
from dko.depth.checkpoint import save_depthnet
from dko.depth.evaluate import PredictorContext
from dko.depth.model import DepthNet
from dko.dko import center_window
from dko.frontend import (FrontEnd, array_layout, build_opto_predictor, calibrate_gains, design_radius, element_psfs,
                          initial_designs, load_frontend, radius_psfs, save_frontend, subset_bank)
from dko.opto_layer import OptoConv1, build_kernel_bank, ideal_psfs
from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.psf import (OpticalSystem, geometric_defocus_diameter_m, ideal_lens_phase, psf_from_radii,
                            wrap_phase)

torch.set_num_threads(2)
WLS = [6.4e-7, 5.5e-7, 4.6e-7]


@pytest.fixture(scope="module")
def library():
    return MetaAtomLibrary.default()


@pytest.fixture(scope="module")
def system():
    # 24 superpixels (28.8 um) at 1.2 um, sensor at 0.2 mm: Airy radius ~1 pixel at 550 nm
    return OpticalSystem(superpixel_m=1.2e-6, n_superpixels=24, sensor_distance_m=2.0e-4, pixel_pitch_m=2.74e-6,
                         psf_size_px=15)


@pytest.fixture(scope="module")
def bank():
    torch.manual_seed(0)
    w = torch.randn(2, 3, 5, 5)
    return build_kernel_bank(w, 0.45, 0.225, WLS, stride=2)


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
    sub = subset_bank(bank, [0, 5])
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
    sub = subset_bank(bank, [2])  # 550 nm
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
    sub = subset_bank(bank, [2])  # 550 nm
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
    layer = OptoConv1(bank.__class__(**{**bank.state_dict(), "gains": gains}), psf)
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


def _frontend(tmp_path, bank, system, psfs, distances):
    e = bank.n_elements
    eff = psfs.sum(dim=(-2, -1))
    return save_frontend(tmp_path / "frontend.npz", radius_m=torch.full((e, 24, 24), 8e-8), psfs=psfs,
                         object_distances_m=distances, efficiency=eff, gains=bank.gains, kernel_gains=bank.gains,
                         bank=bank, element_centers_m=array_layout(bank, 1e-4), system=system, info={"method": "test"})


def test_frontend_file_roundtrip_and_errors(tmp_path, bank, system):
    psfs = torch.stack([ideal_psfs(bank, 15), ideal_psfs(bank, 15) * 0.5])
    fe = _frontend(tmp_path, bank, system, psfs, [10.0, None])
    back = load_frontend(tmp_path / "frontend.npz")
    assert isinstance(back, FrontEnd) and back.distances == [10.0, None]
    for name in ("radius_m", "psfs", "gains", "targets", "sign", "out_channel", "in_channel", "wavelength_m", "bias",
                 "element_centers_m"):
        assert np.array_equal(getattr(back, name), getattr(fe, name)), name
    assert (back.stride, back.padding, back.n_out, back.n_in, back.n_superpixels) == (2, 2, 2, 3, 24)
    assert back.info == {"method": "test"}
    rebuilt = back.bank()
    assert torch.allclose(rebuilt.folded_weight(), bank.folded_weight(), atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        load_frontend(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a dko.frontend"):
        load_frontend(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="psfs"):
        _frontend(tmp_path, bank, system, psfs[..., 6:9, 6:9], [10.0, None])  # window smaller than k


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    torch.manual_seed(5)
    tmp = tmp_path_factory.mktemp("net")
    net = DepthNet(blocks_per_stage=(1, 1, 1, 1), base_width=4, conv1_kernel=5, min_depth_m=1.0, max_depth_m=80.0,
                   decoder_channels=(4, 4, 8, 8, 8)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = save_depthnet(net, tmp / "model.pt")
    return net, path


def _ctx(tmp_path, inputs):
    cfg = config_from_dict({"results_dir": str(tmp_path)})
    return PredictorContext(cfg=cfg, data_dir=tmp_path, meta={}, inputs=inputs, device="cpu")


def test_opto_predictor_with_perfect_psfs_equals_the_electronic_network(tmp_path, net_files, system):
    net, model_path = net_files
    conv = net.conv1
    bank = build_kernel_bank(conv.weight.detach(), net.norm_mean, net.norm_std, WLS, stride=2)
    # two distances with the same perfect PSFs; a halo-free element equals its target
    psfs = torch.stack([ideal_psfs(bank, 15), ideal_psfs(bank, 15)])
    _frontend(tmp_path, bank, system, psfs, [10.0, 2.0])
    inputs = {"model": str(model_path), "frontend": str(tmp_path / "frontend.npz"), "teacher": str(model_path)}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 48, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 80.0, size=(2, 32, 48)).astype(np.float32)
    ref = net.predict_depth(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0)[:, 0].numpy()
    pred = build_opto_predictor(_ctx(tmp_path, inputs), noise=False, layered=False)
    out = pred(images)
    assert np.allclose(out, ref, rtol=1e-4)
    extra = pred.extra_metrics()
    assert extra["conv1_feature_rel_l2"] < 1e-5 and extra["teacher_abs_rel"] < 1e-4 and extra["teacher_delta1"] == 1.0
    layered = build_opto_predictor(_ctx(tmp_path, inputs), noise=False, layered=True)
    assert layered.needs_depth
    assert np.allclose(layered(images, depth), ref, rtol=1e-4)
    with pytest.raises(ValueError, match="ground-truth depth"):
        layered(images)
    noisy = build_opto_predictor(_ctx(tmp_path, inputs), noise=True, layered=False)
    a = noisy(images)
    assert not np.allclose(a, ref) and np.abs(a - ref).mean() / ref.mean() < 0.2
    assert noisy.extra_metrics()["conv1_feature_rel_l2"] > 1e-4


def test_layered_predictor_uses_the_psf_of_each_depth(tmp_path, net_files, system):
    """Far layer: perfect PSFs; near layer: a blurred PSF. All-far depth = perfect; all-near = blurred."""
    net, model_path = net_files
    bank = build_kernel_bank(net.conv1.weight.detach(), net.norm_mean, net.norm_std, WLS, stride=2)
    sharp = ideal_psfs(bank, 15)
    blurred = torch.nn.functional.avg_pool2d(sharp[:, None], 5, stride=1, padding=2)[:, 0]
    _frontend(tmp_path, bank, system, torch.stack([sharp, blurred]), [10.0, 1.0])
    inputs = {"model": str(model_path), "frontend": str(tmp_path / "frontend.npz")}
    images = np.random.default_rng(1).integers(0, 256, size=(1, 32, 48, 3), dtype=np.uint8)
    pred = build_opto_predictor(_ctx(tmp_path, inputs), noise=False, layered=True)
    ref = net.predict_depth(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0)[:, 0].numpy()
    far = pred(images, np.full((1, 32, 48), 50.0, np.float32))
    near = pred(images, np.full((1, 32, 48), 1.0, np.float32))
    assert np.allclose(far, ref, rtol=1e-4)
    assert not np.allclose(near, ref, rtol=1e-3)
    # the fused (one dense conv per layer) path equals the layer's per-element image formation
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    depth = torch.where(torch.rand(1, 32, 48, generator=torch.Generator().manual_seed(0)) < 0.5, 1.0, 50.0)
    pred.front.depth_m = depth
    assert torch.allclose(pred.front(x), pred.front.layer(x, depth), rtol=1e-4, atol=1e-4)
    assert pred.extra_metrics() == {}  # no teacher given


def test_predictor_rejects_a_mismatched_front_end(tmp_path, net_files, system, bank):
    _, model_path = net_files
    _frontend(tmp_path, bank, system, ideal_psfs(bank, 15)[None], [10.0])  # a 2-output front end
    with pytest.raises(ValueError, match="does not fit conv1"):
        build_opto_predictor(_ctx(tmp_path, {"model": str(model_path), "frontend": str(tmp_path / "frontend.npz")}),
                             noise=False, layered=False)


def test_evaluate_registers_the_dko_predictors_on_first_use():
    code = ("import dko.depth.evaluate as ev\n"
            "assert 'dko' not in ev.PREDICTORS\n"
            "try:\n    ev.build_predictor('dko', None)\nexcept Exception:\n    pass\n"
            "assert {'dko', 'dko_noisy', 'dko_layered'} <= set(ev.PREDICTORS), sorted(ev.PREDICTORS)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_phase_parametrisation_realises_smooth_kernels_with_the_light_in_the_window(library):
    """DKO at NA 0.36 (0.6 um superpixels): smooth 5 x 5 kernels of all three colours are realised to a few
    percent with >75 % of the transmitted light inside the kernel window by the phase parametrisation; the
    radius (logit) parametrisation, which cannot wrap a superpixel through 2 pi, keeps far less light there."""
    from dko.dko import fidelity_metrics, optimize_designs

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
