"""Oblique-incidence meta-atom transmission (torcwa): conventions, symmetries, energy, convergence and resonance flags.

Every solve is tiny (Fourier order 2-3, 64x64 grid: ~0.03 s each); the physics is checked with exact
relations (angle 0 = metaatoms.solve_transmission, s = p at normal incidence, C4 symmetry, the empty
cell's Fresnel transmittance at oblique incidence), not with converged numbers.
"""

import math

import numpy as np
import pytest
import torch

from dko.optics.metaatoms import solve_transmission
from dko.optics.rcwa_oblique import (
    convergence_report,
    diffraction_onset_angles_rad,
    difference_stats,
    flag_resonances,
    polarisation_splitting,
    solve_transmission_oblique,
    unpolarised_power,
)

torch.set_num_threads(1)
N_SUB = 1.46
PHYS = dict(pillar_index=2.4, substrate_index=N_SUB, pillar_height_m=6e-7, period_m=3e-7)
FAST = dict(PHYS, order=3, grid_points=64)
RADII = [0.0, 6e-8, 1.2e-7]
WLS = [4.6e-7, 6.4e-7]


def test_angle_zero_p_reproduces_metaatoms_and_s_equals_p():
    t = solve_transmission_oblique(RADII, WLS, [0.0], **FAST)
    assert t.shape == (3, 2, 1, 2) and t.dtype == np.complex128
    ref = solve_transmission(RADII, WLS, **FAST)  # (L, R), x polarised
    np.testing.assert_allclose(t[:, :, 0, 1], ref.T, rtol=0, atol=1e-9)
    # a circular pillar on a square lattice: s (y) and p (x) coincide at normal incidence
    np.testing.assert_allclose(t[:, :, 0, 0], t[:, :, 0, 1], rtol=0, atol=1e-9)
    # the empty cell is the phase reference
    np.testing.assert_allclose(np.angle(t[0]), 0.0, atol=1e-12)


def test_oblique_splits_s_and_p_and_aliases_and_angle_medium_agree():
    theta_air = math.radians(20)
    t = solve_transmission_oblique(RADII[1:], WLS, [theta_air], **FAST)
    dphase, damp = polarisation_splitting(t)
    assert dphase.shape == (2, 2, 1)
    assert dphase.max() > 0.05  # s and p differ at 20 degrees (0.1-1.4 rad here)
    te_tm = solve_transmission_oblique(RADII[1:], WLS, [theta_air], polarisations=("TM", "TE"), **FAST)
    np.testing.assert_allclose(te_tm[..., ::-1], t, rtol=0, atol=1e-12)
    # the same k_x given as the angle inside the substrate
    theta_sub = math.asin(math.sin(theta_air) / N_SUB)
    t_sub = solve_transmission_oblique(RADII[1:], WLS, [theta_sub], angle_medium="substrate", **FAST)
    np.testing.assert_allclose(t_sub, t, rtol=0, atol=1e-9)


def test_empty_cell_is_the_oblique_fresnel_interface():
    """No pillar: |t|^2 = 1 - |r|^2, Fresnel r of SiO2 -> air for s and p (checks angles, labels, power norm)."""
    angles = np.radians([0.0, 15.0, 30.0, 40.0])
    t = solve_transmission_oblique([0.0], [5.5e-7], angles, **dict(FAST, order=2))
    th_a = angles
    th_s = np.arcsin(np.sin(th_a) / N_SUB)
    cs, ca = np.cos(th_s), np.cos(th_a)
    r_s = (N_SUB * cs - ca) / (N_SUB * cs + ca)
    r_p = (cs - N_SUB * ca) / (cs + N_SUB * ca)  # (n2 cos t1 - n1 cos t2) / (n2 cos t1 + n1 cos t2), n1 = N_SUB, n2 = 1
    np.testing.assert_allclose(np.abs(t[0, 0, :, 0]) ** 2, 1 - r_s ** 2, rtol=1e-9)
    np.testing.assert_allclose(np.abs(t[0, 0, :, 1]) ** 2, 1 - r_p ** 2, rtol=1e-9)
    assert abs(t[0, 0, -1, 1]) > abs(t[0, 0, -1, 0])  # p transmits more (towards Brewster's angle)


def test_energy_bound_and_c4_symmetry_of_the_azimuth():
    angles = np.radians([10.0, 30.0])
    t0 = solve_transmission_oblique(RADII[1:], WLS, angles, **FAST)
    assert np.all(np.abs(t0) <= 1 + 1e-9) and np.all(np.abs(t0) > 0)
    np.testing.assert_allclose(unpolarised_power(t0), 0.5 * (np.abs(t0[..., 0]) ** 2 + np.abs(t0[..., 1]) ** 2))
    # a circle on a square lattice is invariant under a 90 degree rotation: same t for the plane of incidence y-z
    t90 = solve_transmission_oblique(RADII[1:], WLS, angles, azimuth_rad=math.pi / 2, **FAST)
    np.testing.assert_allclose(t90, t0, rtol=0, atol=1e-8)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="polarisation"):
        solve_transmission_oblique(RADII, WLS, [0.0], polarisations=("x",), **FAST)
    with pytest.raises(ValueError, match="critical angle"):
        solve_transmission_oblique(RADII, WLS, [math.radians(50)], angle_medium="substrate", **FAST)
    with pytest.raises(ValueError, match="angles_rad"):
        solve_transmission_oblique(RADII, WLS, [-0.1], **FAST)
    with pytest.raises(ValueError, match="grid_points"):
        solve_transmission_oblique(RADII, WLS, [0.0], **dict(FAST, grid_points=8))
    with pytest.raises(ValueError, match="radii_m"):
        solve_transmission_oblique([2e-7], WLS, [0.0], **FAST)


def test_convergence_report_compares_successive_orders():
    rep = convergence_report([6e-8, 1.2e-7], [4.6e-7], orders=(1, 2, 3), angles_rad=(0.0, 0.3),
                             **dict(PHYS, grid_points=64))
    assert rep["orders"] == [1, 2, 3] and rep["transmission"].shape == (3, 2, 1, 2, 2)
    assert [p["orders"] for p in rep["pairs"]] == [[1, 2], [2, 3]]
    for n, pair in enumerate(rep["pairs"]):
        stats = difference_stats(rep["transmission"][n], rep["transmission"][n + 1])
        assert {k: pair[k] for k in stats} == stats
        assert set(pair["per_wavelength"]) == {"4.6000e-07"}
    # orders 1 -> 2 are far from converged in the blue
    assert rep["pairs"][0]["max_dphase_rad"] > 0.1 and rep["pairs"][0]["converged"] is False
    loose = convergence_report([6e-8], [6.4e-7], orders=(1, 2), phase_tol_rad=(10.0, 10.0), amplitude_tol=10.0,
                               **dict(PHYS, grid_points=64))
    assert loose["pairs"][0]["converged"] is True
    with pytest.raises(ValueError, match="orders"):
        convergence_report([6e-8], [6.4e-7], orders=(3, 3), **dict(PHYS, grid_points=64))


def _synthetic_table():
    """Smooth phase ramp (2 pi over the range) with a narrow Lorentzian resonance at r0 = 90 nm, shape (R, 2, 1, 2)."""
    radii = np.linspace(30e-9, 135e-9, 64)
    ramp = 0.97 * np.exp(1j * 2 * np.pi * (radii - radii[0]) / (radii[-1] - radii[0]))
    r0, gamma = 90e-9, 1.0e-9
    resonance = 1 - 0.9 * (1j * gamma) / (radii - r0 + 1j * gamma)  # dip to |t| ~ 0.1 within ~ +-2 nm
    t = np.stack([ramp * resonance, ramp], axis=1)  # wavelength 0 resonant, wavelength 1 smooth
    return radii, np.repeat(t[:, :, None, None], 2, axis=3), r0


def test_flag_resonances_on_a_synthetic_table():
    radii, t, r0 = _synthetic_table()
    mask, details = flag_resonances(t, radii, margin=0, return_details=True)
    assert mask.shape == (64,) and mask.dtype == bool
    flagged = radii[mask]
    assert flagged.size >= 2 and np.all(np.abs(flagged - r0) < 4e-9)  # only the resonance ...
    assert np.any(np.abs(flagged - r0) < 1e-9)  # ... and its centre
    assert not details["unconverged"].any() and not details["dark"].any()
    # the smooth column alone flags nothing
    assert not flag_resonances(t[:, 1:], radii).any()
    # margin widens by one grid radius each side
    wide = flag_resonances(t, radii, margin=1)
    idx = np.flatnonzero(mask)
    assert wide[idx.min() - 1] and wide[idx.max() + 1] and wide.sum() == mask.sum() + 2
    # a not-converged entry (0.2 rad off in one column) is flagged; a 0.05 rad one is not
    check = t.copy()
    check[5, 1, 0, 0] *= np.exp(0.2j)
    check[40, 1, 0, 1] *= np.exp(0.05j)
    m2, d2 = flag_resonances(t, radii, t_check=check, margin=0, return_details=True)
    assert np.flatnonzero(d2["unconverged"]).tolist() == [5] and m2[5] and not m2[40]
    # an amplitude change of 0.02 > 0.01 is flagged too
    check2 = t.copy()
    check2[10] *= 1.03
    assert np.flatnonzero(flag_resonances(t[:, 1:], radii, t_check=check2[:, 1:], margin=0)).tolist() == [10]
    # dark radii
    dark = flag_resonances(t, radii, min_amplitude=0.5, margin=0, return_details=True)[1]["dark"]
    assert np.all(np.abs(radii[dark] - r0) < 2e-9) and dark.any()
    with pytest.raises(ValueError, match="t_check"):
        flag_resonances(t, radii, t_check=t[:, :1])
    with pytest.raises(ValueError, match="radius"):
        flag_resonances(t[:, 0], radii[:10])


def test_polarisation_helpers_and_diffraction_onsets():
    t = np.array([[1.0, 0.5 * np.exp(0.3j)]])
    dphase, damp = polarisation_splitting(t)
    np.testing.assert_allclose(dphase, [0.3])
    np.testing.assert_allclose(damp, [0.5])
    np.testing.assert_allclose(unpolarised_power(t), [0.625])
    with pytest.raises(ValueError, match="2 polarisations"):
        unpolarised_power(np.ones((2, 3)))
    blue = diffraction_onset_angles_rad(4.6e-7, period_m=3e-7, substrate_index=N_SUB)
    assert blue["substrate"] == pytest.approx(math.asin(4.6 / 3 - N_SUB)) and math.degrees(blue["substrate"]) < 5
    assert math.degrees(blue["air"]) == pytest.approx(math.degrees(math.asin(4.6 / 3 - 1)))
    red = diffraction_onset_angles_rad(6.4e-7, period_m=3e-7, substrate_index=N_SUB)
    assert red["air"] is None and 40 < math.degrees(red["substrate"]) < 45
    assert diffraction_onset_angles_rad(5e-7, period_m=4e-7, substrate_index=N_SUB)["substrate"] == 0.0


def test_normal_vector_factorisation_limits_and_symmetry():
    """NV = Laurent + Delta [[N N]] with Delta = [[eps]] - [[1/eps]]^-1 = O(contrast^2): equal for a weak pillar."""
    kw = dict(FAST, order=2)
    gaps = []
    for n_weak in (1.01, 1.001):  # eps - 1 = 0.0201, 0.002001: the NV - Laurent gap must shrink ~100x
        weak = dict(kw, pillar_index=n_weak)
        t_l = solve_transmission_oblique([9e-8], WLS, [0.0, 0.3], **weak)
        t_nv = solve_transmission_oblique([9e-8], WLS, [0.0, 0.3], factorisation="normal_vector", **weak)
        gaps.append(np.abs(t_nv - t_l).max())
    assert gaps[0] < 1e-4 and 60 < gaps[0] / gaps[1] < 160, gaps  # measured 2.7e-5, ratio ~100
    # TiO2: a different factorisation gives a different truncated answer ...
    t_l = solve_transmission_oblique([9e-8, 1.2e-7], WLS, [0.0, 0.3], **kw)
    t_nv = solve_transmission_oblique([9e-8, 1.2e-7], WLS, [0.0, 0.3], factorisation="normal_vector", **kw)
    assert np.abs(t_nv - t_l).max() > 1e-2
    # ... with the same symmetries and bounds; the empty cell (reference) is unchanged
    np.testing.assert_allclose(t_nv[:, :, 0, 0], t_nv[:, :, 0, 1], rtol=0, atol=1e-9)
    assert np.all(np.abs(t_nv) <= 1 + 1e-9)
    np.testing.assert_allclose(solve_transmission_oblique([0.0], WLS, [0.3], factorisation="normal_vector", **kw),
                               solve_transmission_oblique([0.0], WLS, [0.3], **kw), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="factorisation"):
        solve_transmission_oblique([9e-8], WLS, [0.0], factorisation="li", **kw)
