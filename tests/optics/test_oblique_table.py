"""dko.optics.oblique_table and the faithful PSF of unpolarised light (dko.optics.faithful.incoherent_psf).

Tables here are tiny (Fourier order 2-3, 64x64 raster): the checks are exact relations (symmetry, energy, the
solver's own answer, the incoherent sum's definition), not converged numbers; the shipped table's convergence is
recorded in its report (checked here to be present and within what the README states).
"""

import math

import numpy as np
import pytest
import torch

from dko.optics.faithful import (FaithfulNumerics, faithful_psf, fresnel_transmittance, incoherent_psf)
from dko.optics.oblique_table import (ObliqueTable, build_oblique_table, default_oblique_path, fold_direction,
                                      oblique_settings, prepare_oblique_table, settings_match)
from dko.optics.psf import OpticalSystem
from dko.optics.rcwa_oblique import solve_transmission_oblique

torch.set_num_threads(1)
PHYS = dict(pillar_index=2.4, substrate_index=1.46, pillar_height_m=6e-7, period_m=3e-7)
ANGLES = [(math.radians(30), 0.0), (math.radians(20), math.radians(12))]


def _settings(order=3, n_radii=5, angles=ANGLES, wavelengths=(5.4e-7, 5.5e-7, 5.6e-7), centres=(5.5e-7,)):
    return oblique_settings(**PHYS, radius_min_m=3e-8, radius_max_m=1.35e-7, n_radii=n_radii, order=order,
                            grid_points=64, centres_m=list(centres), wavelengths_m=list(wavelengths),
                            field_angles_rad=angles)


@pytest.fixture(scope="module")
def table():
    return build_oblique_table(_settings(), workers=1, check_radii=3, progress=False)


def test_fold_direction_maps_the_lattice_symmetries_onto_one_wedge():
    base = fold_direction((math.radians(20), math.radians(12)))
    for tx, ty in ((20, 12), (-20, 12), (20, -12), (-20, -12)):
        assert fold_direction((math.radians(tx), math.radians(ty))) == pytest.approx(base, abs=1e-12)
    # the diagonal mirror: (theta_x, theta_y) -> (theta_y, theta_x)
    assert fold_direction((math.radians(12), math.radians(20))) == pytest.approx(base, abs=1e-12)
    gamma, phi = base
    assert math.tan(gamma) == pytest.approx(math.hypot(math.tan(math.radians(20)), math.tan(math.radians(12))))
    assert 0 < phi <= math.pi / 4 and fold_direction((0.0, 0.0)) == (0.0, 0.0)
    assert fold_direction((0.0, math.radians(30)))[1] == 0.0  # a plane of incidence along y is one along x


def test_table_entries_are_the_solvers_answer_and_obey_symmetry_and_energy(table):
    settings = table.settings
    radii = table.radii_m
    d = table.direction_index(ANGLES[0])  # azimuth 0: a mirror plane, s and p do not mix
    direct = solve_transmission_oblique(radii, [5.5e-7], [fold_direction(ANGLES[0])[0]], order=3, grid_points=64,
                                        factorisation=settings["factorisation"], **PHYS)
    w = table._exact_index(5.5e-7)
    np.testing.assert_allclose(table.jones[w, d, :, 0, 0], direct[:, 0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(table.jones[w, d, :, 1, 1], direct[:, 0, 0, 1], atol=1e-9)
    assert np.abs(table.jones[:, d, :, [0, 1], [1, 0]]).max() < 1e-8
    # oblique azimuth: the polarisations mix; normal incidence: s = p, nothing crosses
    d2 = table.direction_index(ANGLES[1])
    assert np.abs(table.jones[:, d2, :, [0, 1], [1, 0]]).max() > 1e-3
    np.testing.assert_allclose(table.jones[:, 0, :, 0, 0], table.jones[:, 0, :, 1, 1], atol=1e-9)
    assert np.abs(table.jones[:, 0, :, 0, 1]).max() == 0.0
    # energy: each input's zeroth-order outputs carry at most its power
    assert (np.abs(table.jones) ** 2).sum(axis=-2).max() <= 1 + 1e-9


def test_c4v_symmetry_behind_the_folding_holds_in_the_solver():
    """The co-polarised coefficients at azimuth phi and 90 deg - phi agree (what fold_direction relies on)."""
    kw = dict(order=3, grid_points=64, factorisation="normal_vector", **PHYS)
    a = solve_transmission_oblique([6e-8, 1.05e-7], [5.5e-7], [0.5], azimuth_rad=math.radians(25), **kw)
    b = solve_transmission_oblique([6e-8, 1.05e-7], [5.5e-7], [0.5], azimuth_rad=math.radians(65), **kw)
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_lookup_exact_interpolated_held_and_components(table):
    r = torch.as_tensor(table.radii_m)
    for wl in (5.4e-7, 5.5e-7, 5.6e-7):
        np.testing.assert_allclose(table.jones_at(wl, ANGLES[1]),
                                   table.jones[table._exact_index(wl), table.direction_index(ANGLES[1])])
    mid = table.jones_at(5.45e-7, ANGLES[1])
    lo, hi = table.jones_at(5.4e-7, ANGLES[1]), table.jones_at(5.5e-7, ANGLES[1])
    assert np.all(np.abs(mid) <= np.maximum(np.abs(lo), np.abs(hi)) + 1e-12) and not table.held
    np.testing.assert_allclose(table.jones_at(5.7e-7, ANGLES[1]), hi * 0 + table.jones_at(5.6e-7, ANGLES[1]))
    assert table.held == {5.7e-7}
    with pytest.raises(ValueError, match="not in the oblique meta-atom table"):
        table.jones_at(5.5e-7, (math.radians(7), 0.0))
    # unpolarised: one component on axis, s and p inputs (weight 1/2) with their co- and cross-polarised outputs
    on_axis = table.components(r, 5.5e-7, (0.0, 0.0))
    assert len(on_axis) == 1 and on_axis[0][0] == 1.0 and on_axis[0][2] is None
    comps = table.components(r, 5.5e-7, ANGLES[1])
    assert [(w, pol) for w, _, pol in comps] == [(0.5, "s"), (0.5, "s"), (0.5, "p"), (0.5, "p")]
    np.testing.assert_allclose(comps[0][1].numpy(), table.jones_at(5.5e-7, ANGLES[1])[:, 0, 0], atol=1e-12)
    np.testing.assert_allclose(comps[1][1].numpy(), table.jones_at(5.5e-7, ANGLES[1])[:, 1, 0], atol=1e-12)
    # azimuth 0 is a mirror plane: the cross-polarised columns are round-off (kept only with no floor at all)
    assert len(table.components(r, 5.5e-7, ANGLES[0])) == 2
    assert len(table.components(r, 5.5e-7, ANGLES[0], cross_power_floor=0.0)) == 4
    only_s = table.components(r, 5.5e-7, ANGLES[1], polarisation="s")
    assert [(w, pol) for w, _, pol in only_s] == [(1.0, "s"), (1.0, "s")]
    normal = table.components(r, 5.5e-7, ANGLES[1], polarisation="normal")
    np.testing.assert_allclose(normal[0][1].numpy(), table.jones_at(5.5e-7, (0.0, 0.0))[:, 1, 1], atol=1e-12)
    with pytest.raises(ValueError, match="faithful.polarisation"):
        table.components(r, 5.5e-7, ANGLES[1], polarisation="circular")
    # the TransmissionFn interpolates each distinct radius once: the same components, gathered
    lo_r, hi_r = float(table.radii_m[0]), float(table.radii_m[-1])
    gen = torch.Generator().manual_seed(4)
    radius = torch.round(lo_r + (hi_r - lo_r) * torch.rand(2, 6, 6, generator=gen, dtype=torch.float64), decimals=8)
    gathered = table.transmission_fn(radius)(5.45e-7, ANGLES[1])
    direct = table.components(radius, 5.45e-7, ANGLES[1])
    assert [(w, pol) for w, _, pol in gathered] == [(w, pol) for w, _, pol in direct]
    for (_, a, _), (_, b, _) in zip(gathered, direct):
        assert a.shape == b.shape == (2, 6, 6) and torch.allclose(a, b, rtol=1e-13, atol=1e-15)


def test_radius_interpolation_and_convergence_are_reported(table):
    rep = table.report
    assert rep["convergence"]["orders"] == [3, 5] and rep["solves"] == 3 * 3 * 5
    for key in ("convergence", "interpolation"):
        overall = rep[key]["overall"]
        assert set(overall) == {"median_dphase_rad", "max_dphase_rad", "median_damp", "max_damp"}
        assert overall["max_dphase_rad"] > 0  # a real comparison, not a table against itself
    # the interpolant passes through the table
    r = torch.as_tensor(table.radii_m)
    col = table.jones[0, 1, :, 0, 0]
    np.testing.assert_allclose(table._interp(col, r).numpy(), col, atol=1e-12)


def test_round_trip_and_prepare_reuses_only_matching_settings(table, tmp_path):
    table.save(tmp_path / "t.npz")
    back = ObliqueTable.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.jones, table.jones)
    assert settings_match(back.settings, table.settings) and back.report == table.report
    changed = dict(table.settings, pillar_height_m=5e-7)
    assert not settings_match(changed, table.settings)
    assert not settings_match(_settings(angles=[ANGLES[0]]), table.settings)  # fewer directions
    assert not settings_match(dict(table.settings, factorisation="laurent"), table.settings)
    small = _settings(order=2, n_radii=4, angles=[ANGLES[0]], wavelengths=(5.5e-7,))
    summary = prepare_oblique_table(small, tmp_path / "o.npz", tmp_path / "o.json", progress=False)
    assert summary["reused_shipped_table"] is False and summary["n_directions"] == 2
    with pytest.raises(ValueError, match="lacks"):
        np.savez(tmp_path / "bad.npz", radii_m=table.radii_m)
        ObliqueTable.load(tmp_path / "bad.npz")


def test_the_shipped_table_is_the_default_configurations_and_meets_its_report():
    from dko.config import load_config
    from dko.frontend.faithful import oblique_table_settings

    shipped = ObliqueTable.load(default_oblique_path())
    assert settings_match(shipped.settings, oblique_table_settings(load_config("config/config.yaml")))
    rep = shipped.report
    assert rep["convergence"]["orders"] == [7, 9] and rep["solves"] == shipped.jones[..., 0, 0].size
    assert (np.abs(shipped.jones) ** 2).sum(axis=-2).max() <= 1 + 1e-6


def test_fresnel_per_polarisation():
    n = 1.46
    brewster = math.atan(n)
    assert fresnel_transmittance(brewster, 1.0, n, "p") == pytest.approx(1.0, abs=1e-12)
    assert fresnel_transmittance(0.0, 1.0, n, "s") == pytest.approx(fresnel_transmittance(0.0, 1.0, n, "p"))
    for a in (0.2, 0.7, 1.2):
        ts, tp = fresnel_transmittance(a, 1.0, n, "s"), fresnel_transmittance(a, 1.0, n, "p")
        assert ts < tp and fresnel_transmittance(a, 1.0, n) == pytest.approx((ts + tp) / 2)
    with pytest.raises(ValueError, match="polarisation"):
        fresnel_transmittance(0.1, 1.0, n, "x")


def _system():
    return OpticalSystem(superpixel_m=1.2e-6, n_superpixels=16, sensor_distance_m=1.5e-4, pixel_pitch_m=2.74e-6,
                         psf_size_px=9)


def test_incoherent_psf_is_the_weighted_sum_and_its_ledger_balances():
    system = _system()
    numerics = FaithfulNumerics(window_px=9, samples_per_superpixel=2, dtype=torch.complex128)
    gen = torch.Generator().manual_seed(0)
    ts = torch.polar(0.6 + 0.3 * torch.rand(2, 16, 16, generator=gen, dtype=torch.float64),
                     6.28 * torch.rand(2, 16, 16, generator=gen, dtype=torch.float64))
    tx = 0.2 * torch.polar(torch.ones(2, 16, 16, dtype=torch.float64),
                           6.28 * torch.rand(2, 16, 16, generator=gen, dtype=torch.float64))
    tp = torch.polar(0.5 + 0.4 * torch.rand(2, 16, 16, generator=gen, dtype=torch.float64),
                     6.28 * torch.rand(2, 16, 16, generator=gen, dtype=torch.float64))
    angle = (math.radians(25), math.radians(10))
    comps = [(0.5, ts, "s"), (0.5, tx, "s"), (0.5, tp, "p")]
    got = incoherent_psf(comps, 5.5e-7, system, numerics, angle)
    parts = [faithful_psf(t, 5.5e-7, system, numerics, angle, polarisation=pol) for _, t, pol in comps]
    torch.testing.assert_close(got.psf, 0.5 * (parts[0].psf + parts[1].psf + parts[2].psf))
    gamma = got.incidence_angle_rad
    fs, fp = (fresnel_transmittance(gamma, 1.0, 1.46, pol) for pol in "sp")
    torch.testing.assert_close(got.ledger["fresnel_loss"], torch.full((2,), 1 - 0.5 * (fs + fp), dtype=torch.float64))
    lg = got.ledger
    torch.testing.assert_close(lg["fresnel_loss"] + lg["metasurface_loss"] + lg["transmitted"], lg["incident"])
    onward = lg["beyond_band"] + lg["evanescent"] + lg["band_limited_out"] + lg["on_plane"]
    torch.testing.assert_close(onward, lg["transmitted"])
    # the s input's light that leaves cross-polarised is transmitted, not lost
    no_cross = incoherent_psf([(0.5, ts, "s"), (0.5, tp, "p")], 5.5e-7, system, numerics, angle)
    assert bool((lg["transmitted"] > no_cross.ledger["transmitted"]).all())
    # s = p and nothing crossing: exactly the one-field PSF with the unpolarised Fresnel loss
    same = incoherent_psf([(0.5, ts, "s"), (0.5, ts, "p")], 5.5e-7, system, numerics, angle)
    torch.testing.assert_close(same.psf, faithful_psf(ts, 5.5e-7, system, numerics, angle).psf)
    with pytest.raises(ValueError, match="sum to 1"):
        incoherent_psf([(0.5, ts, "s")], 5.5e-7, system, numerics, angle)
    with pytest.raises(ValueError, match="different weights"):
        incoherent_psf([(0.5, ts, "s"), (0.25, tx, "s"), (0.5, tp, "p")], 5.5e-7, system, numerics, angle)
