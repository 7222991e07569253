"""Meta-atom library: RCWA table, differentiable lookup, reverse lookup, rebuild decision, config checks."""

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dko.config import config_from_dict
from dko.optics.metaatoms import (
    MetaAtomLibrary,
    default_library_path,
    library_settings,
    needs_rebuild,
    prepare_library,
    solve_transmission,
)

GREEN = 5.5e-7


@functools.lru_cache(maxsize=1)
def _default():
    return MetaAtomLibrary.default()


@pytest.fixture(scope="module")
def lib():
    return _default()


def test_shipped_table_reproduces_fresh_torcwa_solve(lib):
    """Three table radii at 550 nm solved again at the table's settings agree to 1e-6 (complex)."""
    s = lib.settings
    assert not needs_rebuild(library_settings(config_from_dict({}, check_paths=False).metaatoms,
                                              config_from_dict({}, check_paths=False).optics.wavelengths_m))
    assert s["rcwa_order"] >= 5
    idx = [3, lib.radii_m.size // 2, lib.radii_m.size - 2]
    iw = int(np.argmin(np.abs(lib.wavelengths_m - GREEN)))
    fresh = solve_transmission(lib.radii_m[idx], [lib.wavelengths_m[iw]], pillar_index=s["pillar_index"],
                               substrate_index=s["substrate_index"], pillar_height_m=s["pillar_height_m"],
                               period_m=s["period_m"], order=s["rcwa_order"], grid_points=s["grid_points"])
    np.testing.assert_allclose(fresh[0], lib.table[iw, idx], rtol=0, atol=1e-6)


def test_empty_cell_is_the_fresnel_interface_and_phase_grows_with_radius(lib):
    # no pillar: phase 0 by convention, |t|^2 = 1 - ((n - 1) / (n + 1))^2 (substrate -> air, normal incidence)
    n = 1.46
    t = solve_transmission([0.0], [4.6e-7, 6.4e-7], pillar_index=2.4, substrate_index=n, pillar_height_m=6e-7,
                           period_m=3e-7, order=2)
    np.testing.assert_allclose(np.abs(t) ** 2, 1 - ((n - 1) / (n + 1)) ** 2, rtol=1e-9)
    np.testing.assert_allclose(np.angle(t), 0.0, atol=1e-12)
    # exp(-i omega t): more high-index material -> more optical path -> larger phase (red: no resonances)
    red = int(np.argmax(lib.wavelengths_m))
    phase = np.unwrap(np.angle(lib.table[red]))
    assert phase[-1] - phase[0] > 1.5 * math.pi
    assert np.all(np.abs(lib.table) <= 1 + 1e-9)  # zeroth-order power fraction


@settings(max_examples=60, deadline=None)
@given(st.floats(-30, 30))
def test_radius_mapping_is_bounded_and_invertible(p):
    lib = _default()
    r = lib.radius_from_design(torch.tensor(p, dtype=torch.float64))
    assert lib.radius_min_m <= float(r) <= lib.radius_max_m
    if abs(p) < 12:
        assert float(lib.design_from_radius(r)) == pytest.approx(p, abs=1e-5)


def test_interpolation_passes_through_table_and_is_differentiable(lib):
    for w, wl in enumerate(lib.wavelengths_m):
        t = lib.transmission(torch.as_tensor(lib.radii_m), float(wl))
        assert t.dtype == torch.complex128
        np.testing.assert_allclose(t.numpy(), lib.table[w], rtol=0, atol=1e-12)
    # gradients (through the design variable) match finite differences, incl. near knots and the ends
    p = torch.tensor([-8.0, -1.3, 0.0, 0.77, 2.5, 9.0], dtype=torch.float64, requires_grad=True)

    def f(q):
        t = lib.transmission(lib.radius_from_design(q), GREEN)
        return torch.stack([t.real, t.imag])

    assert torch.autograd.gradcheck(f, (p,), eps=1e-6, atol=1e-7, rtol=1e-4)
    # C1 across a knot: the derivative just left and right of a table radius agree
    knot = lib.radii_m[20]
    dr = 1e-15
    r = torch.tensor([knot - dr, knot + dr], dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(lib.transmission(r, GREEN).real.sum(), r)[0]
    assert float(abs(g[0] - g[1])) <= 1e-6 * float(abs(g).max())
    # float32 radii give complex64; any shape is kept
    t32 = lib.transmission(torch.full((2, 3, 4), 8e-8), GREEN)
    assert t32.shape == (2, 3, 4) and t32.dtype == torch.complex64


def test_wavelengths_between_and_outside_the_table(lib):
    lo, hi = lib.wavelengths_m[0], lib.wavelengths_m[1]
    r = torch.as_tensor(lib.radii_m)
    mid = lib.transmission(r, float(0.5 * (lo + hi))).numpy()
    a, b = lib.table[0], lib.table[1]
    # amplitude halfway, phase halfway along the shorter arc
    np.testing.assert_allclose(np.abs(mid), 0.5 * (np.abs(a) + np.abs(b)), atol=1e-9)
    np.testing.assert_allclose(np.angle(mid * np.conj(a)), 0.5 * np.angle(b * np.conj(a)), atol=1e-9)
    with pytest.raises(ValueError, match="outside the meta-atom table"):
        lib.transmission(r, float(lib.wavelengths_m[-1] * 1.05))
    with pytest.raises(ValueError, match="radius_m"):
        lib.transmission(torch.tensor([lib.radius_max_m * 1.1], dtype=torch.float64), GREEN)


def test_reverse_lookup_phase_error_small_where_amplitude_high(lib):
    radii = np.linspace(lib.radius_min_m, lib.radius_max_m, 777)
    for wl in lib.wavelengths_m:
        t = lib.transmission(torch.as_tensor(radii), float(wl)).numpy()
        keep = np.abs(t) >= 0.8
        target = torch.as_tensor(np.angle(t[keep]) + 2 * math.pi * (np.arange(keep.sum()) % 3 - 1))  # any 2pi offset
        got = lib.transmission(lib.radius_from_design(lib.design_for_phase(target, float(wl))), float(wl)).numpy()
        err = np.abs(np.angle(got * np.exp(-1j * target.numpy())))
        # |t_got - e^{i phi}| <= |1 - |t_exact|| bounds the phase error by asin(|1 - |t_exact||) (+ phase binning;
        # the interpolant overshoots |t| = 1 by about 1% next to the sharpest blue resonance)
        bound = np.arcsin(np.abs(1 - np.abs(t[keep]))) + math.pi / 4096 + 1e-3
        assert np.all(err <= bound), (wl, float(err.max()))
    # at 550 nm the library covers a full 2 pi: every phase is realised with a small error
    assert lib.phase_coverage(GREEN) > 1.0
    phase = torch.linspace(-math.pi, math.pi, 181, dtype=torch.float64).reshape(1, 181)
    design = lib.design_for_phase(phase, GREEN)
    assert design.shape == phase.shape
    got = lib.transmission(lib.radius_from_design(design), GREEN)
    err = (torch.angle(got) - phase + math.pi) % (2 * math.pi) - math.pi
    assert float(err.abs().median()) < 0.1


@pytest.mark.parametrize("wl", [4.6e-7, 5.5e-7, 6.4e-7])
def test_phase_design_variable_is_the_realised_lookup_with_ideal_gradient(lib, wl):
    """transmission_for_phase: forward = the pillar of radius_for_phase (periodic in 2 pi), backward = the
    derivative of |t| exp(i phase) (straight-through), never zero inside the library's phase gaps."""
    phase = torch.linspace(-7.0, 7.0, 301, dtype=torch.float64, requires_grad=True)
    t = lib.transmission_for_phase(phase, wl)
    radius = lib.radius_for_phase(phase.detach(), wl)
    assert torch.allclose(t.detach(), lib.transmission(radius, wl))
    assert torch.equal(lib.radius_for_phase(phase.detach() + 2 * math.pi, wl), radius)
    # the realised phase is the target where the table reaches it with high amplitude
    err = torch.angle(t.detach() * torch.exp(-1j * phase.detach()))
    good = t.detach().abs() > 0.8
    assert float(err[good].abs().median()) < 0.05
    # d/dphase Re(conj(c) t) = Re(conj(c) i |t| e^{i phase}) for a random complex c
    c = torch.tensor(0.3 - 0.7j, dtype=torch.complex128)
    (torch.conj(c) * t).real.sum().backward()
    expected = (torch.conj(c) * 1j * t.detach().abs() * torch.exp(1j * phase.detach())).real
    assert torch.allclose(phase.grad, expected, atol=1e-12)
    assert lib.transmission_for_phase(phase.detach().float(), wl).dtype == torch.complex64


def test_settings_mismatch_triggers_rebuild_and_fresh_solve(tmp_path, lib):
    base = config_from_dict({}, check_paths=False)
    default = library_settings(base.metaatoms, base.optics.wavelengths_m)
    assert not needs_rebuild(default)
    for change in ({"rcwa_order": 9}, {"pillar_height_m": 6.5e-7}, {"wavelengths_m": [6.3e-7, 5.5e-7, 4.6e-7]}):
        assert needs_rebuild({**default, **change}), change
    # default settings: the shipped table is copied without solving
    summary = prepare_library(base, tmp_path / "shipped")
    assert summary["reused_shipped_table"] == 1.0
    written = MetaAtomLibrary.load(tmp_path / "shipped" / "library.npz")
    np.testing.assert_array_equal(written.table, MetaAtomLibrary.load(default_library_path()).table)
    np.testing.assert_array_equal(written.excluded, lib.with_resonances_excluded(4.0).excluded)  # the default factor
    assert written.settings["resonance_factor"] == 4.0 and not needs_rebuild(written.settings)
    assert (tmp_path / "shipped" / "library.png").stat().st_size > 0
    # different settings (tiny and fast): a fresh table is solved, saved and reported
    small = config_from_dict({"metaatoms": {"n_radii": 5, "rcwa_order": 1, "convergence_order_step": 1,
                                            "convergence_radii": 2}}, check_paths=False)
    # one wavelength keeps the solve fast (a pipeline config needs one per RGB channel)
    small = dataclasses.replace(small, optics=dataclasses.replace(small.optics, wavelengths_m=(6e-7,)))
    summary = prepare_library(small, tmp_path / "fresh")
    assert summary["reused_shipped_table"] == 0.0
    fresh = MetaAtomLibrary.load(tmp_path / "fresh" / "library.npz")
    assert fresh.table.shape == (1, 5) and fresh.settings["rcwa_order"] == 1
    for key in ("phase_coverage_600nm", "mean_abs_t_600nm", "convergence_max_dphase_rad", "seconds"):
        assert math.isfinite(summary[key])
    assert (tmp_path / "fresh" / "convergence.json").is_file()


def test_save_load_roundtrip(tmp_path, lib):
    lib.save(tmp_path / "t.npz")
    back = MetaAtomLibrary.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.table, lib.table)
    np.testing.assert_array_equal(back.radii_m, lib.radii_m)
    assert back.settings == lib.settings
    with pytest.raises(ValueError, match="does not exist"):
        MetaAtomLibrary.load(tmp_path / "missing.npz")


def test_config_rejects_bad_period_and_radius():
    with pytest.raises(ValueError, match=r"metaatoms\.period_m"):
        # 320 nm > 460 nm / 1.46 = 315 nm: substrate diffraction orders in the blue
        config_from_dict({"metaatoms": {"period_m": 3.2e-7}, "optics": {"superpixel_m": 3.2e-6}}, check_paths=False)
    config_from_dict({"metaatoms": {"period_m": 3.2e-7}, "optics": {"superpixel_m": 3.2e-6,
                                                                    "wavelengths_m": [6.4e-7, 5.5e-7, 5.0e-7]}},
                     check_paths=False)  # 500 nm / 1.46 = 342 nm > 320 nm
    with pytest.raises(ValueError, match=r"metaatoms\.radius_max_m"):
        config_from_dict({"metaatoms": {"radius_max_m": 1.5e-7}}, check_paths=False)
    with pytest.raises(ValueError, match=r"metaatoms\.radius_min_m"):
        config_from_dict({"metaatoms": {"radius_min_m": 1.2e-7, "radius_max_m": 1.0e-7}}, check_paths=False)


def test_radii_near_resonances_are_kept_out_of_designs(tmp_path):
    """metaatoms.resonance_factor: per wavelength the radii flag_resonances calls steep (and their neighbours) are
    never picked by the reverse lookup, so the phase parametrisation (DKO and E2E) cannot use them."""
    import math

    from dko.optics.rcwa_oblique import flag_resonances

    lib = MetaAtomLibrary.default()
    ex = lib.with_resonances_excluded(4.0)
    assert ex.excluded.any() and not lib.excluded.any()
    for j, wl in enumerate(lib.wavelengths_m):
        np.testing.assert_array_equal(ex.excluded[j], flag_resonances(lib.table[j][:, None], lib.radii_m,
                                                                      gradient_factor=4.0))
        phases = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)
        radii = ex.radius_for_phase(phases, float(wl)).numpy()
        step = lib.radii_m[1] - lib.radii_m[0]
        nearest = np.rint((radii - lib.radii_m[0]) / step).astype(int)
        assert not ex.excluded[j][nearest].any()
        if ex.excluded[j].any():  # the unrestricted lookup does use them
            free = np.rint((lib.radius_for_phase(phases, float(wl)).numpy() - lib.radii_m[0]) / step).astype(int)
            assert ex.excluded[j][free].any()
    assert not ex.with_resonances_excluded(None).excluded.any()
    ex.save(tmp_path / "lib.npz")
    np.testing.assert_array_equal(MetaAtomLibrary.load(tmp_path / "lib.npz").excluded, ex.excluded)
    with pytest.raises(ValueError, match="leaves no radius"):
        MetaAtomLibrary(lib.radii_m, lib.wavelengths_m, lib.table, excluded=np.ones(lib.table.shape, bool))
