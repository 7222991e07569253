"""Meta-atom transmission at oblique incidence for both polarisations, its convergence, and resonance flags.

Extends :mod:`dko.optics.metaatoms` (normal incidence, x polarisation) to the DESIGN.md section 3
contract ``t(r, lambda, incidence angle, polarisation)`` without changing it.

Geometry and conventions are those of :func:`dko.optics.metaatoms.solve_transmission`: a square lattice
(``period_m``) of cylindrical pillars (``pillar_index``, ``pillar_height_m``, radius r) in air on a
semi-infinite substrate (``substrate_index``), lit from the substrate; the zeroth transmitted order
leaves into air. Time dependence ``exp(-i omega t)``; the **phase is referenced to an empty cell** (an
air layer of the same height on the same substrate) at the *same* wavelength, angle and polarisation;
the **amplitude is absolute and power normalised**: ``|t|^2`` is the fraction of the incident power
(z flux) carried by the zeroth transmitted order of that polarisation.

**Incidence angle.** ``angles_rad`` is by default the polar angle *in air* (``angle_medium="air"``):
the tangential wave number is ``k_x = (2 pi / lambda) sin(theta)``, conserved through the stack, so
``theta`` is both the field angle of a distant point source seen through the substrate's flat back
face (air -> substrate -> pillars) and the direction of the transmitted zeroth order. With
``angle_medium="substrate"`` the angle is the one inside the substrate
(``sin theta_air = n_substrate sin theta_substrate``). The plane of incidence contains the lattice
vector x rotated by ``azimuth_rad`` (default 0: the x-z plane).

**Polarisations.** ``"s"`` (= ``"TE"``): E perpendicular to the plane of incidence; ``"p"`` (=
``"TM"``): E in the plane of incidence. At normal incidence and azimuth 0, p is x polarised (the
table of :mod:`dko.optics.metaatoms`) and s is y polarised; for a circular pillar on a square
lattice they coincide there. The plane of incidence at azimuth 0 (or 45 deg) is a mirror plane of
the cell, so s and p do not mix in the zeroth order; the returned ``t`` is the co-polarised
coefficient (torcwa ``S_parameters(polarization="ss" / "pp", power_norm=True)``).

**Unpolarised light** (what DESIGN.md asks for) is an incoherent mixture of two orthogonal
polarisations: the PSF of an unpolarised point source is the **average of the two polarisations'
PSFs (intensities)**, ``PSF = (|ASM(A t_s)|^2 + |ASM(A t_p)|^2) / 2``, *not* the PSF of the averaged
complex transmission ``(t_s + t_p) / 2`` (that is the field of one coherent 45-degree polarised wave
and gets the interference between superpixels of different s/p phase wrong). A table therefore
keeps both complex coefficients (last axis of :func:`solve_transmission_oblique`) and the PSF code
averages intensities. :func:`unpolarised_power` gives the unpolarised zeroth-order power
``(|t_s|^2 + |t_p|^2) / 2`` (exact for the transmitted energy); :func:`polarisation_splitting`
measures how far s and p differ, i.e. how large the error of a cheap one-field model would be.

**Diffraction.** Above an angle a non-zero order can propagate in the substrate (reflection side)
or in air (:func:`diffraction_onset_angles_rad`); that light is lost from the zeroth order (``|t|^2``
drops) but the definition of ``t`` is unchanged.

Also here: :func:`convergence_report` (successive Fourier orders), :func:`flag_resonances` (radii to
keep out of designs) and :func:`solve_transmission_meent`, the same problem solved by the independent
RCWA code **meent** (numpy backend; a test/dev dependency, imported only when that function is called)
for the cross-check. With ``factorisation="laurent"`` meent's solver gets torcwa's rule (``[[eps]]``
in-plane, the inverse of the permittivity's Toeplitz matrix for E_z): that checks the implementation and
the conventions (agreement to ~1e-8). Its own rule (``"li"``, Li's inverse rule across the raster's grid
lines) is a third factorisation with the same converged limit, an independent check of the
normal-vector rule's convergence (tests/optics/test_rcwa_crosscheck.py, benchmarks/metaatom_convergence.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Mapping, Sequence

import numpy as np
import torch

from dko.optics.metaatoms import GRID_POINTS, _pillar_permittivity

__all__ = [
    "POLARISATIONS",
    "FACTORISATIONS",
    "solve_transmission_oblique",
    "solve_transmission_meent",
    "solve_jones_meent",
    "MEENT_FACTORISATIONS",
    "MEENT_FOURIER_TYPES",
    "unpolarised_power",
    "polarisation_splitting",
    "difference_stats",
    "convergence_report",
    "flag_resonances",
    "diffraction_onset_angles_rad",
]

#: Default polarisation order of the last axis of the returned tables.
POLARISATIONS = ("s", "p")
_POL_ALIASES = {"s": "s", "te": "s", "p": "p", "tm": "p"}
_UM = 1e6  # both solvers are scale free; lengths in micrometres keep the numbers O(1)


# ----------------------------------------------------------------------------- input checks
def _check_physics(pillar_index, substrate_index, pillar_height_m, period_m, order, grid_points) -> None:
    for name, value in (("pillar_index", pillar_index), ("substrate_index", substrate_index),
                        ("pillar_height_m", pillar_height_m), ("period_m", period_m)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"rcwa_oblique: {name} must be a positive finite number, got {value!r}")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"rcwa_oblique: order must be an integer >= 1, got {order!r}")
    if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 4 * order + 1:
        raise ValueError(f"rcwa_oblique: grid_points must be an integer >= 4 * order + 1 = {4 * order + 1} "
                         f"(the permittivity's Fourier matrix needs harmonics up to 2 * order), got {grid_points!r}")


def _check_axes(radii_m, wavelengths_m, angles_rad, period_m: float):
    radii = np.asarray(radii_m, dtype=np.float64).reshape(-1)
    wls = np.asarray(wavelengths_m, dtype=np.float64).reshape(-1)
    angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
    if radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(radii < 0) or np.any(radii > period_m / 2):
        raise ValueError(f"rcwa_oblique: radii_m must lie in [0, period_m / 2 = {period_m / 2:.4e}] m, got "
                         f"{radii.tolist()}")
    if wls.size == 0 or not np.all(np.isfinite(wls)) or np.any(wls <= 0) or np.any(wls > 1e-4):
        raise ValueError(f"rcwa_oblique: wavelengths_m must be positive wavelengths in metres, got {wls.tolist()}")
    if angles.size == 0 or not np.all(np.isfinite(angles)) or np.any(angles < 0) or np.any(angles >= math.pi / 2):
        raise ValueError(f"rcwa_oblique: angles_rad must lie in [0, pi/2) rad, got {angles.tolist()}")
    return radii, wls, angles


def _check_polarisations(polarisations: Sequence[str]) -> tuple[str, ...]:
    if isinstance(polarisations, str) or len(polarisations) == 0:
        raise ValueError(f"rcwa_oblique: polarisations must be a non-empty sequence of 's'/'p' ('TE'/'TM'), got "
                         f"{polarisations!r}")
    out = []
    for pol in polarisations:
        key = str(pol).lower()
        if key not in _POL_ALIASES:
            raise ValueError(f"rcwa_oblique: unknown polarisation {pol!r}; use 's'/'TE' or 'p'/'TM'")
        out.append(_POL_ALIASES[key])
    return tuple(out)


def _air_sines(angles: np.ndarray, substrate_index: float, angle_medium: str) -> np.ndarray:
    """sin(theta_air) = k_x / k0 for each angle; ValueError where the transmitted order cannot propagate."""
    if angle_medium == "air":
        sines = np.sin(angles)
    elif angle_medium == "substrate":
        sines = substrate_index * np.sin(angles)
    else:
        raise ValueError(f"rcwa_oblique: angle_medium must be 'air' or 'substrate', got {angle_medium!r}")
    if np.any(sines >= 1.0):
        raise ValueError(f"rcwa_oblique: angles_rad {angles.tolist()} in the substrate exceed the critical angle "
                         f"asin(1 / {substrate_index}) (no transmitted zeroth order)")
    return sines


# ----------------------------------------------------------------------------- torcwa
FACTORISATIONS = ("laurent", "normal_vector")
_NV_CLASS = None


def _normal_vector_rcwa_class():
    """torcwa.rcwa subclass whose next patterned layer uses a normal-vector permittivity tensor (built lazily)."""
    global _NV_CLASS
    if _NV_CLASS is not None:
        return _NV_CLASS
    import torcwa

    class NormalVectorRCWA(torcwa.rcwa):
        """In-plane permittivity by the normal-vector method (Schuster et al., JOSA A 24, 2880 (2007)).

        With the unit normal field N = (N_x, N_y) of the pillar's side wall, ``D_t = [[eps]] E_t``
        (Laurent's rule, exact only for the field component tangential to the wall) is replaced by
        ``D_i = sum_j ([[eps]] delta_ij - Delta [[N_i N_j]]) E_j`` with ``Delta = [[eps]] - [[1/eps]]^-1``:
        the normal component (discontinuous E, continuous D) is then treated by the inverse rule. E_z
        keeps ``[[eps]]^-1`` as in torcwa. ``nv_tensor`` = (eps_xx, eps_xy, eps_yx, eps_yy) convolution
        matrices for the next patterned layer (consumed by it).
        """

        nv_tensor = None

        def _eigen_decomposition(self):
            if self.nv_tensor is None:
                return super()._eigen_decomposition()
            exx, exy, eyx, eyy = self.nv_tensor
            self.nv_tensor = None
            n = self.order_N
            eye = torch.eye(n, dtype=self._dtype, device=self._device)
            zero = torch.zeros_like(eye)
            k_col = torch.vstack((self.Kx_norm, self.Ky_norm))  # (2n, n)
            eps_z_inv = torch.linalg.inv(self.eps_conv[-1])
            # d/dz (E_x, E_y) ~ P (H_x, H_y), d/dz (H_x, H_y) ~ Q (E_x, E_y) (torcwa's block layout, mu = 1)
            p_mat = torch.vstack((torch.hstack((zero, eye)), torch.hstack((-eye, zero)))) + \
                k_col @ eps_z_inv @ torch.hstack((self.Ky_norm, -self.Kx_norm))
            q_mat = torch.vstack((torch.hstack((-eyx, -eyy)), torch.hstack((exx, exy)))) + \
                k_col @ torch.hstack((-self.Ky_norm, self.Kx_norm))
            self.P.append(p_mat)
            self.Q.append(q_mat)
            kz2, vecs = torch.linalg.eig(p_mat @ q_mat)
            kz = torch.sqrt(kz2)
            self.kz_norm.append(torch.where(torch.imag(kz) < 0, -kz, kz))  # forward modes: Im kz >= 0
            self.E_eigvec.append(vecs)

    _NV_CLASS = NormalVectorRCWA
    return _NV_CLASS


def _wall_normals(period_m: float, grid_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Radial unit field (N_x, N_y), float64 (grid_points, grid_points), on the grid of metaatoms' pillar raster."""
    dx = period_m / grid_points
    x = (torch.arange(grid_points, dtype=torch.float64) + 0.5) * dx - period_m / 2  # never 0: no singular cell
    rho = torch.sqrt(x[:, None] ** 2 + x[None, :] ** 2)
    return x[:, None] / rho, x[None, :] / rho


def _torcwa_sim(eps_layer, wavelength_um: float, period_um: float, height_um: float, eps_substrate: float,
                order: int, sin_air: float, azimuth_rad: float, dtype: torch.dtype, device: torch.device,
                normals: tuple[torch.Tensor, torch.Tensor] | None = None):
    """One torcwa solve; ``normals`` (N_x, N_y grids) switches the pillar layer to the normal-vector method."""
    import torcwa

    cls = torcwa.rcwa if normals is None or not torch.is_tensor(eps_layer) else _normal_vector_rcwa_class()
    sim = cls(freq=1.0 / wavelength_um, order=[order, order], L=[period_um, period_um], dtype=dtype, device=device)
    sim.add_input_layer(eps=eps_substrate)
    # the angle is given in the output medium (air, eps 1): k_x / k0 = sin(theta_air)
    sim.set_incident_angle(inc_ang=math.asin(sin_air), azi_ang=azimuth_rad, angle_layer="output")
    if cls is not torcwa.rcwa:
        nx, ny = (g.to(dtype).to(device) for g in normals)
        eps_c = sim._material_conv(eps_layer)
        delta = eps_c - torch.linalg.inv(sim._material_conv(1.0 / eps_layer))
        nxy = sim._material_conv(nx * ny)
        sim.nv_tensor = (eps_c - delta @ sim._material_conv(nx * nx), -delta @ nxy, -delta @ nxy,
                         eps_c - delta @ sim._material_conv(ny * ny))
    sim.add_layer(thickness=height_um, eps=eps_layer)
    sim.solve_global_smatrix()
    return sim


def _torcwa_t00(sim, pol: str) -> complex:
    s = sim.S_parameters(orders=[0, 0], direction="forward", port="transmission", polarization=pol + pol,
                         ref_order=[0, 0], power_norm=True)
    return complex(s.reshape(-1)[0].item())


def solve_transmission_oblique(radii_m: Sequence[float] | np.ndarray, wavelengths_m: Sequence[float] | np.ndarray,
                               angles_rad: Sequence[float] | np.ndarray, *, pillar_index: float,
                               substrate_index: float, pillar_height_m: float, period_m: float, order: int,
                               polarisations: Sequence[str] = POLARISATIONS, azimuth_rad: float = 0.0,
                               angle_medium: str = "air", grid_points: int = GRID_POINTS,
                               factorisation: str = "laurent", dtype: torch.dtype = torch.complex128,
                               device: torch.device | str | None = None, progress: bool = False) -> np.ndarray:
    """Zeroth-order complex transmission t(r, lambda, theta, polarisation) by torcwa.

    One RCWA solve per (r, lambda, theta) gives every polarisation; one empty-cell solve per
    (lambda, theta) gives the phase reference. Conventions: module docstring (at ``theta = 0`` the
    ``"p"`` entry equals :func:`dko.optics.metaatoms.solve_transmission` to round-off).

    Args:
        radii_m: (R,) pillar radii, metres, in [0, period_m / 2] (0 = no pillar).
        wavelengths_m: (L,) free-space wavelengths, metres.
        angles_rad: (A,) polar angles of incidence, radians, in [0, pi/2) (medium: ``angle_medium``).
        pillar_index, substrate_index: real refractive indices (lossless).
        pillar_height_m, period_m: metres.
        order: Fourier order per axis (harmonics -order..order in x and y).
        polarisations: names for the last axis, each ``"s"``/``"TE"`` or ``"p"``/``"TM"``.
        azimuth_rad: azimuth of the plane of incidence from the x lattice vector, radians.
        angle_medium: ``"air"`` (default) or ``"substrate"``: where ``angles_rad`` are measured.
        grid_points: rasterisation of the unit cell per side (anti-aliased disk, as in metaatoms).
        factorisation: in-plane permittivity rule of the pillar layer: ``"laurent"`` (torcwa's, the
            shipped table's: ``[[eps]]``) or ``"normal_vector"`` (radial normal field, see
            ``NormalVectorRCWA``): a different factorisation, same converged limit.
        dtype: solver dtype, torch.complex128 (default) or torch.complex64.
        device: torch device (default CPU).
        progress: show a tqdm bar.
    Returns:
        complex128 array (R, L, A, P), P = len(polarisations).
    Raises:
        ValueError: on non-physical inputs, naming the argument.
    """
    _check_physics(pillar_index, substrate_index, pillar_height_m, period_m, order, grid_points)
    radii, wls, angles = _check_axes(radii_m, wavelengths_m, angles_rad, period_m)
    pols = _check_polarisations(polarisations)
    sines = _air_sines(angles, float(substrate_index), angle_medium)
    if factorisation not in FACTORISATIONS:
        raise ValueError(f"rcwa_oblique: factorisation must be one of {FACTORISATIONS}, got {factorisation!r}")
    normals = _wall_normals(period_m, grid_points) if factorisation == "normal_vector" else None
    if not math.isfinite(float(azimuth_rad)):
        raise ValueError(f"rcwa_oblique: azimuth_rad must be finite, got {azimuth_rad!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    eps_p, eps_s = float(pillar_index) ** 2, float(substrate_index) ** 2
    common = dict(period_um=period_m * _UM, height_um=pillar_height_m * _UM, eps_substrate=eps_s, order=order,
                  azimuth_rad=float(azimuth_rad), dtype=dtype, device=device)
    out = np.empty((radii.size, wls.size, angles.size, len(pols)), dtype=np.complex128)
    jobs = [(i, j, k) for j in range(wls.size) for k in range(angles.size) for i in range(radii.size)]
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc=f"torcwa order {order} oblique", unit="solve")
    with torch.no_grad():
        ref = {}
        for j in range(wls.size):
            for k in range(angles.size):
                sim = _torcwa_sim(1.0, wls[j] * _UM, sin_air=float(sines[k]), **common)
                for q, pol in enumerate(pols):
                    s0 = _torcwa_t00(sim, pol)
                    if abs(s0) < 1e-6:  # pragma: no cover - a homogeneous layer transmits below the critical angle
                        raise ValueError(f"empty-cell reference vanished at wavelength {wls[j]} m, "
                                         f"angle {angles[k]} rad")
                    ref[j, k, q] = np.conj(s0) / abs(s0)
        eps_cache = {}
        for i, j, k in iterator:
            r = radii[i]
            if r not in eps_cache:
                eps_cache[r] = 1.0 if r == 0 else _pillar_permittivity(r, period_m, grid_points, eps_p, dtype, device)
            sim = _torcwa_sim(eps_cache[r], wls[j] * _UM, sin_air=float(sines[k]), normals=normals, **common)
            for q, pol in enumerate(pols):
                out[i, j, k, q] = _torcwa_t00(sim, pol) * ref[j, k, q]
    return out


# ----------------------------------------------------------------------------- meent (independent solver)
MEENT_FACTORISATIONS = ("li", "laurent")
MEENT_FOURIER_TYPES = ("discrete", "continuous")


def _meent_conv(n_grid: np.ndarray, order: int, factorisation: str, fourier_type: str):
    """meent's convolution matrices (eps_x, eps_y, [[eps]]^-1), each complex128 (1, (2 order + 1)^2, same)."""
    from meent.on_numpy.emsolver.convolution_matrix import (to_conv_mat_raster_continuous,
                                                            to_conv_mat_raster_discrete)

    ucell = n_grid[None].astype(np.float64)
    if fourier_type == "discrete":
        epx, epy, epz_inv = to_conv_mat_raster_discrete(ucell, order, order, type_complex=np.complex128,
                                                        enhanced_dfs=False)
    else:
        epx, epy, epz_inv = to_conv_mat_raster_continuous(ucell, order, order, type_complex=np.complex128)
    if factorisation == "laurent":  # meent's E_z matrix is the inverse of the Laurent [[eps]]: use [[eps]] in-plane
        laurent = np.linalg.inv(epz_inv)
        epx, epy = laurent, laurent.copy()
    return epx, epy, epz_inv


def _meent_t00(n_grid: np.ndarray, conv, wavelength_um: float, period_um: float, height_um: float,
               n_substrate: float, order: int, sin_air: float, azimuth_rad: float) -> dict:
    """{pol: (zeroth-order co-polarised amplitude (meent's normalisation), transmitted power fraction)}."""
    import meent

    mee = meent.call_mee(backend=0, pol=0.0, n_top=n_substrate, n_bot=1.0, theta=math.asin(sin_air / n_substrate),
                         phi=azimuth_rad, fto=[order, order], period=[period_um, period_um],
                         wavelength=wavelength_um, thickness=[height_um], ucell=n_grid[None].astype(np.float64),
                         type_complex=np.complex128)
    res = mee.solve_for_conv(wavelength_um, *conv)
    te, tm = res.res_te_inc, res.res_tm_inc  # s-polarised incidence, p-polarised incidence
    return {"s": (complex(te.T_s[order, order]), float(te.de_ti_s[order, order])),
            "p": (complex(tm.T_p[order, order]), float(tm.de_ti_p[order, order]))}


def _blas_limit(blas_threads: int | None):
    """Context limiting numpy's BLAS threads (threadpoolctl when installed; None = leave as is)."""
    if blas_threads is not None:
        try:
            from threadpoolctl import threadpool_limits

            return threadpool_limits(limits=int(blas_threads), user_api="blas")
        except ImportError:  # pragma: no cover - threadpoolctl is optional
            pass
    return contextlib.nullcontext()


def solve_transmission_meent(radii_m: Sequence[float] | np.ndarray, wavelengths_m: Sequence[float] | np.ndarray,
                             angles_rad: Sequence[float] | np.ndarray, *, pillar_index: float, substrate_index: float,
                             pillar_height_m: float, period_m: float, order: int,
                             polarisations: Sequence[str] = POLARISATIONS, azimuth_rad: float = 0.0,
                             angle_medium: str = "air", grid_points: int = GRID_POINTS, factorisation: str = "li",
                             fourier_type: str = "discrete", blas_threads: int | None = 1) -> np.ndarray:
    """The same t(r, lambda, theta, polarisation) as :func:`solve_transmission_oblique`, solved by meent.

    meent (KC ML2, numpy backend ``call_mee(backend=0)``; its own Fourier series, eigen solver and
    enhanced transmittance matrix (TMM) layer connection) is an independent implementation; it is
    imported here, not at module import (a test/dev dependency). The cell is the same rasterised
    pillar (:func:`dko.optics.metaatoms._pillar_permittivity`, passed to meent as the index grid
    ``sqrt(eps)``, the raster is symmetric under x <-> y so meent's (y, x) layout is immaterial),
    truncated to the same rectangular ``(2 order + 1)^2`` harmonics (meent ``fto=[order, order]``).
    Light enters from meent's top medium (``n_top`` = substrate, polar angle
    ``asin(sin theta_air / n_substrate)``, azimuth ``phi``) and leaves into the bottom one (air).

    Conventions mapped onto this module's: meent's fields follow ``exp(+i omega t)`` (its layer
    propagator is ``exp(-i k0 k_z d)``), so ``arg t = -arg(T / T_empty)`` with ``T`` the co-polarised
    zeroth transmitted order (``res_te_inc.T_s`` for s, ``res_tm_inc.T_p`` for p; both exit into air,
    so the ratio to the empty cell is the E-field ratio) and ``T_empty`` the same for an air layer of
    the same height; ``|t| = sqrt(de_ti)``, meent's zeroth-order transmitted power fraction
    (``de_ti_s`` / ``de_ti_p``; for the empty cell it equals the Fresnel power transmission).

    Args:
        radii_m, wavelengths_m, angles_rad, pillar_index, substrate_index, pillar_height_m, period_m, order,
        polarisations, azimuth_rad, angle_medium, grid_points: as :func:`solve_transmission_oblique`.
        factorisation: in-plane permittivity rule: ``"li"`` (meent's own raster rule, Li's inverse rule
            across the grid lines: E_x sees ``[[ [[eps]]_y^-1 ]]_x^-1``, E_y the x <-> y mirror; meent's
            ``conv_solve``) or ``"laurent"`` (``[[eps]]`` for E_x and E_y, torcwa's rule: the
            implementation check at matched factorisation). E_z uses ``[[eps]]^-1`` in both.
        fourier_type: ``"discrete"`` (DFS of the raster samples, meent ``fourier_type=0`` with
            ``enhanced_dfs=False``: the same coefficients as torcwa's FFT) or ``"continuous"`` (exact
            Fourier series of the raster's square pixels, meent ``fourier_type=1``).
        blas_threads: numpy BLAS threads during the solve (threadpoolctl when installed; None = leave
            as is); small matrices run faster on one thread on a busy machine.
    Returns:
        complex128 array (R, L, A, P), P = len(polarisations).
    Raises:
        ValueError: on non-physical inputs or an unknown factorisation / fourier_type, naming the argument.
    """
    _check_physics(pillar_index, substrate_index, pillar_height_m, period_m, order, grid_points)
    radii, wls, angles = _check_axes(radii_m, wavelengths_m, angles_rad, period_m)
    pols = _check_polarisations(polarisations)
    sines = _air_sines(angles, float(substrate_index), angle_medium)
    if factorisation not in MEENT_FACTORISATIONS:
        raise ValueError(f"rcwa_oblique: meent factorisation must be one of {MEENT_FACTORISATIONS}, "
                         f"got {factorisation!r}")
    if fourier_type not in MEENT_FOURIER_TYPES:
        raise ValueError(f"rcwa_oblique: fourier_type must be one of {MEENT_FOURIER_TYPES}, got {fourier_type!r}")
    if not math.isfinite(float(azimuth_rad)):
        raise ValueError(f"rcwa_oblique: azimuth_rad must be finite, got {azimuth_rad!r}")
    limit = _blas_limit(blas_threads)
    eps_p = float(pillar_index) ** 2
    common = dict(period_um=period_m * _UM, height_um=pillar_height_m * _UM, n_substrate=float(substrate_index),
                  order=order, azimuth_rad=float(azimuth_rad))
    out = np.empty((radii.size, wls.size, angles.size, len(pols)), dtype=np.complex128)
    with limit:
        grids = {r: np.ones((grid_points, grid_points)) if r == 0 else
                 np.sqrt(_pillar_permittivity(r, period_m, grid_points, eps_p, torch.complex128,
                                              torch.device("cpu")).real.numpy())
                 for r in np.unique(np.concatenate([[0.0], radii]))}
        convs = {r: _meent_conv(g, order, factorisation, fourier_type) for r, g in grids.items()}
        for j in range(wls.size):
            for k in range(angles.size):
                ref = _meent_t00(grids[0.0], convs[0.0], wls[j] * _UM, sin_air=float(sines[k]), **common)
                for i, r in enumerate(radii):
                    sol = _meent_t00(grids[r], convs[r], wls[j] * _UM, sin_air=float(sines[k]), **common)
                    for q, pol in enumerate(pols):
                        amp, power = sol[pol]
                        phase = -np.angle(amp * np.conj(ref[pol][0]))  # meent: exp(+i omega t)
                        out[i, j, k, q] = math.sqrt(max(power, 0.0)) * np.exp(1j * phase)
    return out


def solve_jones_meent(radii_m: Sequence[float] | np.ndarray, wavelength_m: float, polar_rad: float, azimuth_rad: float,
                      *, pillar_index: float, substrate_index: float, pillar_height_m: float, period_m: float,
                      order: int, grid_points: int = GRID_POINTS, factorisation: str = "li",
                      fourier_type: str = "discrete", blas_threads: int | None = 1) -> np.ndarray:
    """Zeroth-order Jones matrices ``J[out, in]`` (s, p) of pillars by meent, in the conventions of
    :mod:`dko.optics.oblique_table` (the cross-check of its oblique, cross-polarised entries).

    One direction: polar angle ``polar_rad`` in air, azimuth ``azimuth_rad`` from the x lattice vector.
    ``|J[o, i]| = sqrt(de_ti)`` (meent's zeroth-order power fraction into output polarisation o for input i), phase
    ``-arg(T[o, i] conj(T_empty[i, i]))`` (exp(+i omega t), referenced to the empty cell's co-polarised order as the
    table is). meent's p basis vector differs from torcwa's by a constant phase: measured ``J_torcwa[s, p] =
    i J_meent[s, p]`` and ``J_torcwa[p, s] = -i J_meent[p, s]`` at every radius, wavelength, polar angle and
    azimuth tried (a diagonal unitary change of basis: powers, ``J[s, p] J[p, s]`` and unpolarised PSFs are
    unchanged); it is applied here, so both solvers' matrices compare entry by entry.

    Returns:
        complex128 (R, 2, 2).
    """
    import meent

    _check_physics(pillar_index, substrate_index, pillar_height_m, period_m, order, grid_points)
    radii, _, _ = _check_axes(radii_m, [wavelength_m], [polar_rad], period_m)
    if factorisation not in MEENT_FACTORISATIONS or fourier_type not in MEENT_FOURIER_TYPES:
        raise ValueError(f"rcwa_oblique: meent factorisation / fourier_type must be in {MEENT_FACTORISATIONS} / "
                         f"{MEENT_FOURIER_TYPES}, got {factorisation!r} / {fourier_type!r}")
    limit = _blas_limit(blas_threads)
    wl_um, n_sub = float(wavelength_m) * _UM, float(substrate_index)
    theta = math.asin(math.sin(float(polar_rad)) / n_sub)

    def solve(n_grid):
        mee = meent.call_mee(backend=0, pol=0.0, n_top=n_sub, n_bot=1.0, theta=theta, phi=float(azimuth_rad),
                             fto=[order, order], period=[period_m * _UM] * 2, wavelength=wl_um,
                             thickness=[pillar_height_m * _UM], ucell=n_grid[None].astype(np.float64),
                             type_complex=np.complex128)
        res = mee.solve_for_conv(wl_um, *_meent_conv(n_grid, order, factorisation, fourier_type))
        te, tm = res.res_te_inc, res.res_tm_inc  # s input, p input
        amp = np.array([[te.T_s[order, order], tm.T_s[order, order]], [te.T_p[order, order], tm.T_p[order, order]]])
        power = np.array([[te.de_ti_s[order, order], tm.de_ti_s[order, order]],
                          [te.de_ti_p[order, order], tm.de_ti_p[order, order]]], dtype=np.float64)
        return amp, power

    basis = np.array([[1.0, 1j], [-1j, 1.0]])  # meent's p basis -> torcwa's (see above)
    out = np.empty((radii.size, 2, 2), dtype=np.complex128)
    with limit:
        ref, _ = solve(np.ones((grid_points, grid_points)))
        for i, r in enumerate(radii):
            grid = np.ones((grid_points, grid_points)) if r == 0 else np.sqrt(_pillar_permittivity(
                r, period_m, grid_points, float(pillar_index) ** 2, torch.complex128, torch.device("cpu")).real.numpy())
            amp, power = solve(grid)
            phase = -np.angle(amp * np.conj(np.diag(ref))[None, :])
            out[i] = basis * np.sqrt(np.clip(power, 0.0, None)) * np.exp(1j * phase)
    return out


# ----------------------------------------------------------------------------- polarisation
def unpolarised_power(t: np.ndarray, axis: int = -1) -> np.ndarray:
    """Zeroth-order transmitted power of unpolarised light: the mean of ``|t|^2`` over the polarisation axis.

    Args:
        t: complex array with the two polarisations along ``axis`` (e.g. (R, L, A, 2)).
    Returns:
        float64 array, ``t`` without ``axis``.
    """
    t = np.asarray(t)
    if t.shape[axis] != 2:
        raise ValueError(f"unpolarised_power: axis {axis} of t must hold the 2 polarisations, got shape {t.shape}")
    return np.mean(np.abs(t) ** 2, axis=axis)


def polarisation_splitting(t: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """How far the two polarisations differ: (|arg(t_1 / t_0)| radians, ||t_1| - |t_0||), ``axis`` removed."""
    t = np.asarray(t)
    if t.shape[axis] != 2:
        raise ValueError(f"polarisation_splitting: axis {axis} of t must hold the 2 polarisations, got shape {t.shape}")
    t0, t1 = np.take(t, 0, axis=axis), np.take(t, 1, axis=axis)
    return np.abs(np.angle(t1 * np.conj(t0))), np.abs(np.abs(t1) - np.abs(t0))


# ----------------------------------------------------------------------------- convergence
def difference_stats(t_a: np.ndarray, t_b: np.ndarray) -> dict:
    """Median / max of the wrapped phase difference |arg(t_b / t_a)| (rad) and of ||t_b| - |t_a|| over all entries."""
    a, b = np.asarray(t_a), np.asarray(t_b)
    if a.shape != b.shape:
        raise ValueError(f"difference_stats: shapes differ, {a.shape} vs {b.shape}")
    dphase = np.abs(np.angle(b * np.conj(a)))
    damp = np.abs(np.abs(b) - np.abs(a))
    return {"median_dphase_rad": float(np.median(dphase)), "max_dphase_rad": float(np.max(dphase)),
            "median_damp": float(np.median(damp)), "max_damp": float(np.max(damp))}


def convergence_report(radii_m: Sequence[float] | np.ndarray, wavelengths_m: Sequence[float] | np.ndarray, *,
                       orders: Sequence[int] = (5, 7, 9), angles_rad: Sequence[float] = (0.0,),
                       polarisations: Sequence[str] = POLARISATIONS, phase_tol_rad: tuple[float, float] = (0.02, 0.1),
                       amplitude_tol: float = 0.01, **physics) -> dict:
    """Change of t between successive Fourier orders (torcwa), per wavelength.

    Solves :func:`solve_transmission_oblique` at each order in ``orders`` (ascending) and compares each
    order with the next one over all radii, angles and polarisations.

    Args:
        radii_m, wavelengths_m: (R,), (L,) metres.
        orders: at least two ascending Fourier orders.
        angles_rad, polarisations: as :func:`solve_transmission_oblique`.
        phase_tol_rad: (median, max) phase tolerance in radians, amplitude_tol: max ||t|| tolerance; a
            pair is ``converged`` when every wavelength meets all three (DESIGN.md: 0.02 / 0.1 rad, 0.01).
        **physics: keyword arguments of :func:`solve_transmission_oblique` (pillar_index, substrate_index,
            pillar_height_m, period_m, grid_points, factorisation, azimuth_rad, angle_medium, dtype, device).
    Returns:
        dict: ``orders``; ``seconds`` (per order); ``transmission`` complex128 (O, R, L, A, P);
        ``pairs``: one dict per successive pair with ``orders`` [lo, hi], the overall
        :func:`difference_stats`, ``per_wavelength`` {"<wavelength_m>": stats} and ``converged`` (bool).
    """
    orders = [int(o) for o in orders]
    if len(orders) < 2 or any(b <= a for a, b in zip(orders, orders[1:])):
        raise ValueError(f"convergence_report: orders must be >= 2 ascending integers, got {orders}")
    wls = np.asarray(wavelengths_m, dtype=np.float64).reshape(-1)
    tables, seconds = [], []
    for order in orders:
        t0 = time.perf_counter()
        tables.append(solve_transmission_oblique(radii_m, wls, angles_rad, order=order, polarisations=polarisations,
                                                 **physics))
        seconds.append(time.perf_counter() - t0)
    pairs = []
    for n in range(len(orders) - 1):
        lo, hi = tables[n], tables[n + 1]
        per_wl = {f"{wl:.4e}": difference_stats(lo[:, j], hi[:, j]) for j, wl in enumerate(wls)}
        ok = all(s["median_dphase_rad"] <= phase_tol_rad[0] and s["max_dphase_rad"] <= phase_tol_rad[1]
                 and s["max_damp"] <= amplitude_tol for s in per_wl.values())
        pairs.append({"orders": [orders[n], orders[n + 1]], **difference_stats(lo, hi), "per_wavelength": per_wl,
                      "converged": bool(ok)})
    return {"orders": orders, "seconds": seconds, "transmission": np.stack(tables), "pairs": pairs}


def flag_resonances(t: np.ndarray, radii_m: Sequence[float] | np.ndarray, *, t_check: np.ndarray | None = None,
                    phase_tol_rad: float = 0.1, amplitude_tol: float = 0.01, gradient_factor: float = 4.0,
                    min_amplitude: float = 0.0, margin: int = 1,
                    return_details: bool = False) -> np.ndarray | tuple[np.ndarray, Mapping[str, np.ndarray]]:
    """Radii to keep out of designs: not converged, too steep in r (resonances), or too dark.

    A radius is flagged when, in any column (wavelength, angle, polarisation, ... : every axis after the
    first), one of these holds:

    * ``unconverged``: ``t_check`` (the same table at a higher order or another solver) differs from
      ``t`` by more than ``phase_tol_rad`` in phase or ``amplitude_tol`` in |t|;
    * ``steep``: ``|dt/dr|`` exceeds ``gradient_factor`` times that column's median ``|dt/dr|`` (a
      resonance: t changes fast, and the interpolant's error and any fabrication error in r are
      amplified there). ``|dt/dr|`` at a radius is the larger of its two adjacent interval slopes
      ``|t_{k+1} - t_k| / (r_{k+1} - r_k)``, so both ends of a steep interval are flagged (a central
      difference would miss the centre of a dip sampled symmetrically);
    * ``dark``: ``|t| < min_amplitude``.

    The union is widened by ``margin`` grid radii on each side (a resonance's flank between samples).

    Args:
        t: complex (R, ...) table, radius on axis 0 (e.g. (R, L, A, P) of :func:`solve_transmission_oblique`).
        radii_m: (R,) ascending radii, metres.
        t_check: optional complex array of the same shape.
    Returns:
        bool (R,), True = flagged (exclude); with ``return_details`` also a dict of the per-criterion
        masks (``unconverged``, ``steep``, ``dark``, each bool (R,)) and ``gradient_per_m`` (float (R, ...),
        the |dt/dr| above, 1/m).
    """
    t = np.asarray(t, dtype=np.complex128)
    radii = np.asarray(radii_m, dtype=np.float64).reshape(-1)
    if t.ndim < 1 or t.shape[0] != radii.size or radii.size < 3:
        raise ValueError(f"flag_resonances: t must have the radius (>= 3 values) on axis 0, got shape {t.shape} "
                         f"for {radii.size} radii")
    if np.any(np.diff(radii) <= 0):
        raise ValueError("flag_resonances: radii_m must be strictly increasing")
    if gradient_factor <= 1 or phase_tol_rad <= 0 or amplitude_tol <= 0 or margin < 0:
        raise ValueError(f"flag_resonances: need gradient_factor > 1, positive tolerances and margin >= 0, got "
                         f"{gradient_factor}, {phase_tol_rad}, {amplitude_tol}, {margin}")
    flat = t.reshape(radii.size, -1)
    slopes = np.abs(np.diff(flat, axis=0)) / np.diff(radii)[:, None]  # (R - 1, columns)
    grad = np.maximum(np.vstack([slopes[:1], slopes]), np.vstack([slopes, slopes[-1:]]))
    steep = np.any(grad > gradient_factor * np.median(slopes, axis=0, keepdims=True), axis=1)
    dark = np.any(np.abs(flat) < min_amplitude, axis=1)
    unconverged = np.zeros(radii.size, dtype=bool)
    if t_check is not None:
        check = np.asarray(t_check, dtype=np.complex128)
        if check.shape != t.shape:
            raise ValueError(f"flag_resonances: t_check has shape {check.shape}, expected {t.shape}")
        check = check.reshape(radii.size, -1)
        unconverged = np.any((np.abs(np.angle(check * np.conj(flat))) > phase_tol_rad)
                             | (np.abs(np.abs(check) - np.abs(flat)) > amplitude_tol), axis=1)
    raw = steep | dark | unconverged
    mask = raw.copy()
    for shift in range(1, margin + 1):
        mask[shift:] |= raw[:-shift]
        mask[:-shift] |= raw[shift:]
    if return_details:
        return mask, {"unconverged": unconverged, "steep": steep, "dark": dark,
                      "gradient_per_m": grad.reshape(t.shape)}
    return mask


def diffraction_onset_angles_rad(wavelength_m: float, *, period_m: float, substrate_index: float) -> dict:
    """Smallest air angle (azimuth 0) at which a first order propagates, in the substrate and in air.

    The order -1 has ``k_x / k0 = sin(theta) - lambda / period``; it propagates in a medium of index n
    when ``|sin(theta) - lambda / period| < n``. Returns {"substrate": angle or None, "air": angle or
    None} (None: no onset below 90 degrees; 0.0: open already at normal incidence).
    """
    ratio = wavelength_m / period_m
    out = {}
    for name, n in (("substrate", substrate_index), ("air", 1.0)):
        s = ratio - n  # need sin(theta) > lambda/period - n
        out[name] = 0.0 if s < 0 else (math.asin(s) if s < 1 else None)
    return out
