"""The faithful model's meta-atom table: t(r, lambda, incidence direction, polarisation) by RCWA (DESIGN.md section 3).

The cheap model's table (:mod:`dko.optics.metaatoms`) is one polarisation at normal incidence, Laurent-factorised,
at the channels' centre wavelengths. The faithful PSFs need the pillars' response to the light that actually reaches
them: a point source at field angles ``(theta_x, theta_y)`` lights the whole element with one plane wave of polar
angle ``gamma`` (``tan gamma = hypot(tan theta_x, tan theta_y)``) and azimuth ``phi = atan2(tan theta_y, tan theta_x)``,
unpolarised, at every wavelength of the colour filter's passband. This module tabulates, with the normal-vector
factorisation of :mod:`dko.optics.rcwa_oblique` (the faster-converging rule), the 2 x 2 zeroth-order Jones matrix
``T[out, in]`` in the s/p basis of that plane of incidence, solved in full at every passband sample wavelength
(``faithful.image_spectral_samples`` per channel) and every direction the faithful model uses (the field-grid nodes
and the fidelity positions). :func:`fold_direction` maps a direction to the square lattice's irreducible wedge
``0 <= phi <= 45 deg`` (the C4v symmetry of a circular pillar on a square lattice leaves the co-polarised coefficients
and the cross-polarised power unchanged; tested against the solver). No separable ``angle x dispersion``
approximation: the substrate's first diffraction order sets in a few degrees off axis at 460 nm (period 300 nm,
n 1.46), so the angle response depends on the wavelength. Radii in between are interpolated (Catmull-Rom, as the
cheap table); the fidelity's own passband samples between two table wavelengths of a channel are interpolated in
wavelength and held beyond its outermost ones (:meth:`ObliqueTable.jones_at`). The table's checks are in its report
(:func:`build_oblique_table`): order + 2 at a subset of radii, and the radius interpolant against direct solves at
grid midpoints.

**Phase reference**: as :mod:`dko.optics.rcwa_oblique`, each entry is referenced to the empty cell (air on the same
substrate) at the same wavelength, direction and polarisation (cross-polarised entries use the input polarisation's
reference: only their power and their variation over radii matter, an unpolarised source has no global phase).
**Amplitude**: power normalised (``|T[out, in]|^2`` = the power fraction of input ``in`` leaving as zeroth-order
``out``).

**Unpolarised light** (:meth:`ObliqueTable.components`): the PSF of an unpolarised point source is the incoherent
mean over the two input polarisations, and each input's two output polarisations add in intensity, so the faithful
PSF is ``sum_k w_k |ASM(A t_k)|^2`` over the components (ss, ps, sp, pp) with weights 1/2 (one component of weight 1
at normal incidence, where s = p and nothing crosses; two in a mirror plane of the lattice, where nothing crosses).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from dko.io import atomic_path
from dko.optics.metaatoms import catmull_rom

__all__ = ["fold_direction", "ObliqueTable", "oblique_settings", "build_oblique_table", "default_oblique_path",
           "settings_match", "prepare_oblique_table", "PAIRS"]

log = logging.getLogger(__name__)

#: Jones-matrix entries, (output, input) in torcwa's naming: "sp" = s out of a p input.
PAIRS = ("ss", "ps", "sp", "pp")
_UM = 1e6
_DIR_DECIMALS = 9
_WL_RTOL = 1e-9


def default_oblique_path() -> Path:
    """The shipped table for the default configuration (package data)."""
    return Path(__file__).with_name("data") / "metaatoms_oblique_default.npz"


def fold_direction(field_angle_rad: tuple[float, float]) -> tuple[float, float]:
    """(gamma, phi) radians of a plane wave from field angles (theta_x, theta_y), phi folded into [0, pi/4].

    gamma: polar angle in air, ``atan(hypot(tan theta_x, tan theta_y))``; phi: the plane of incidence's azimuth from
    the x lattice vector, mapped by the lattice's mirrors (x, y, the diagonal) into the wedge [0, 45 deg]. At
    normal incidence phi = 0.
    """
    tx, ty = abs(math.tan(field_angle_rad[0])), abs(math.tan(field_angle_rad[1]))
    gamma = math.atan(math.hypot(tx, ty))
    if gamma == 0.0:
        return 0.0, 0.0
    phi = math.atan2(ty, tx)
    if phi > math.pi / 4:
        phi = math.pi / 2 - phi
    return round(gamma, _DIR_DECIMALS), round(phi, _DIR_DECIMALS)


def _same_wavelength(a: float, b: float) -> bool:
    return abs(a - b) <= _WL_RTOL * max(abs(a), abs(b))


# ----------------------------------------------------------------------------- the table
class ObliqueTable:
    """t(r, lambda, direction, polarisation) of the faithful model (module docstring).

    Attributes:
        radii_m: float64 (R,) uniform radius grid, metres.
        centres_m: float64 (C,) channel centre wavelengths, metres (among ``wavelengths_m``).
        directions: float64 (D, 2) folded (gamma, phi), radians; row 0 is normal incidence (0, 0).
        wavelengths_m: float64 (L,) passband sample wavelengths, ascending.
        jones: complex128 (L, D, R, 2, 2) Jones matrices ``[out, in]`` (index 0 = s, 1 = p).
        settings: the generating settings (:func:`oblique_settings`); report: convergence / interpolation stats.
        held: wavelengths asked for beyond their channel's outermost table wavelength (held there).
    """

    def __init__(self, radii_m, centres_m, directions, jones, wavelengths_m, settings=None, report=None):
        self.radii_m = np.asarray(radii_m, dtype=np.float64).reshape(-1)
        self.centres_m = np.asarray(centres_m, dtype=np.float64).reshape(-1)
        self.directions = np.asarray(directions, dtype=np.float64).reshape(-1, 2)
        wls = np.asarray(wavelengths_m, dtype=np.float64).reshape(-1)
        order = np.argsort(wls)
        self.wavelengths_m = wls[order]
        self.jones = np.asarray(jones, dtype=np.complex128)
        self.settings = dict(settings or {})
        self.report = dict(report or {})
        self.held: set[float] = set()
        r, d, n_wl = self.radii_m.size, self.directions.shape[0], wls.size
        steps = np.diff(self.radii_m)
        if r < 4 or np.any(steps <= 0) or not np.allclose(steps, steps.mean(), rtol=1e-6):
            raise ValueError("oblique table radii_m must be a uniform increasing grid of >= 4 radii")
        if self.jones.shape != (n_wl, d, r, 2, 2):
            raise ValueError(f"oblique table 'jones' has shape {self.jones.shape}, expected {(n_wl, d, r, 2, 2)}")
        self.jones = self.jones[order]
        if d < 1 or np.any(self.directions[0] != 0.0):
            raise ValueError("oblique table directions must start with normal incidence (0, 0)")
        if not np.all(np.isfinite(self.jones)):
            raise ValueError("oblique table contains non-finite values")
        for wl in self.centres_m:
            if self._exact_index(float(wl)) is None:
                raise ValueError(f"oblique table: centre wavelength {wl} m is not among its wavelengths")
        self._cache: dict = {}

    def __repr__(self) -> str:
        return (f"ObliqueTable({self.radii_m.size} radii, centres {[round(float(w) * 1e9, 2) for w in self.centres_m]} "
                f"nm, {self.directions.shape[0]} directions, {self.wavelengths_m.size} wavelengths)")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write atomically as ``.npz`` (arrays, settings and report as JSON strings; no pickle)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, radii_m=self.radii_m, centres_m=self.centres_m, directions=self.directions,
                         jones=self.jones, wavelengths_m=self.wavelengths_m,
                         settings_json=np.array(json.dumps(self.settings, sort_keys=True)),
                         report_json=np.array(json.dumps(self.report, sort_keys=True)))

    @classmethod
    def load(cls, path: str | Path) -> "ObliqueTable":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"oblique meta-atom table '{path}' does not exist")
        keys = ("radii_m", "centres_m", "directions", "jones", "wavelengths_m", "settings_json", "report_json")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in keys if k not in data]
                if missing:
                    raise ValueError(f"oblique meta-atom table '{path}' lacks array(s) {missing}")
                return cls(data["radii_m"], data["centres_m"], data["directions"], data["jones"],
                           data["wavelengths_m"], json.loads(str(data["settings_json"])),
                           json.loads(str(data["report_json"])))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"oblique meta-atom table '{path}' cannot be read: {exc}") from exc

    # ------------------------------------------------------------------ lookup
    def _exact_index(self, wavelength_m: float) -> int | None:
        for i, w in enumerate(self.wavelengths_m):
            if _same_wavelength(float(w), wavelength_m):
                return i
        return None

    def channel_of(self, wavelength_m: float) -> int:
        """Index of the channel centre nearest ``wavelength_m``."""
        return int(np.argmin(np.abs(self.centres_m - float(wavelength_m))))

    def direction_index(self, field_angle_rad: tuple[float, float]) -> int:
        gamma, phi = fold_direction(field_angle_rad)
        hits = np.nonzero((np.abs(self.directions[:, 0] - gamma) < 1e-7)
                          & (np.abs(self.directions[:, 1] - phi) < 1e-7))[0]
        if hits.size == 0:
            raise ValueError(f"incidence direction (gamma, phi) = ({math.degrees(gamma):.4f}, {math.degrees(phi):.4f}) "
                             f"deg of field angles {field_angle_rad} is not in the oblique meta-atom table "
                             f"{np.degrees(self.directions).round(4).tolist()}; rebuild it for this configuration "
                             "(rule metaatom_oblique)")
        return int(hits[0])

    def jones_at(self, wavelength_m: float, field_angle_rad: tuple[float, float]) -> np.ndarray:
        """complex128 (R, 2, 2) Jones matrices ``[out, in]`` at a wavelength and a direction.

        A table wavelength is exact. Between two table wavelengths of the same channel: amplitude linear and phase
        along the shorter arc, linear in lambda (the fidelity's own passband samples); beyond the channel's
        outermost table wavelength: held there (recorded in :attr:`held`).
        """
        d = self.direction_index(field_angle_rad)
        wl = float(wavelength_m)
        i = self._exact_index(wl)
        if i is not None:
            return self.jones[i, d]
        c = self.channel_of(wl)
        own = [k for k, w in enumerate(self.wavelengths_m) if self.channel_of(float(w)) == c]
        lo = [k for k in own if self.wavelengths_m[k] < wl]
        hi = [k for k in own if self.wavelengths_m[k] > wl]
        if not lo or not hi:
            self.held.add(round(wl, 15))
            return self.jones[(hi[0] if hi else lo[-1]), d]
        a, b = lo[-1], hi[0]
        wb = (wl - self.wavelengths_m[a]) / (self.wavelengths_m[b] - self.wavelengths_m[a])
        ta, tb = self.jones[a, d], self.jones[b, d]
        amp = (1 - wb) * np.abs(ta) + wb * np.abs(tb)
        return amp * np.exp(1j * (np.angle(ta) + wb * np.angle(tb * np.conj(ta))))

    def cross_power_max(self) -> float:
        """Largest cross-polarised power fraction over the table."""
        return float(np.max(np.abs(self.jones[..., [0, 1], [1, 0]]) ** 2))

    def components(self, radius_m: torch.Tensor, wavelength_m: float, field_angle_rad: tuple[float, float], *,
                   polarisation: str = "unpolarised", cross_power_floor: float = 1e-6
                   ) -> list[tuple[float, torch.Tensor, str | None]]:
        """Incoherent components ``[(weight, complex t of radius_m's shape, input polarisation)]`` of the transmission.

        Radii interpolated by Catmull-Rom on the table's grid (as :class:`dko.optics.metaatoms.MetaAtomLibrary`).
        ``polarisation``: ``"unpolarised"`` (module docstring; one component at normal incidence), ``"s"``, ``"p"``
        (one input polarisation, its co- and cross-polarised outputs) or ``"normal"`` (this table's
        normal-incidence transmission whatever the direction: the oblique term switched off). Cross-polarised
        columns whose power never exceeds ``cross_power_floor`` (default 1e-6 of the input) are skipped: in a mirror
        plane of the lattice (azimuth 0 or 45 deg) they vanish by symmetry (the solver's ~1e-17), elsewhere they
        carry up to ~25 % (``report["cross_power_max"]``); skipped light is booked as lost by the metasurface.
        """
        if polarisation not in ("unpolarised", "s", "p", "normal"):
            raise ValueError(f"config key 'faithful.polarisation' must be unpolarised, s, p or normal, got "
                             f"{polarisation!r}")
        angle = (0.0, 0.0) if polarisation == "normal" else field_angle_rad
        jones = self.jones_at(wavelength_m, angle)
        if self.direction_index(angle) == 0 and polarisation in ("unpolarised", "normal"):
            return [(1.0, self._interp(jones[:, 1, 1], radius_m), None)]
        inputs = (0, 1) if polarisation == "unpolarised" else ((0,) if polarisation == "s" else (1,))
        weight = 1.0 / len(inputs)
        out = []
        for i in inputs:
            for o in (0, 1):
                column = jones[:, o, i]
                if o != i and float(np.max(np.abs(column) ** 2)) <= cross_power_floor:
                    continue
                out.append((weight, self._interp(column, radius_m), "sp"[i]))
        return out

    def transmission_fn(self, radius_m: torch.Tensor, polarisation: str = "unpolarised"):
        """:data:`dko.optics.faithful.TransmissionFn` of pillar radii (E, N, N) metres: the components above
        (interpolated once per distinct radius, a few thousand in a GDSII design, and gathered)."""
        radius = radius_m[None] if radius_m.ndim == 2 else radius_m
        distinct, inverse = torch.unique(radius, return_inverse=True)

        def fn(wavelength_m: float, field_angle_rad: tuple[float, float]):
            with torch.no_grad():
                return [(w, t[inverse], pol) for w, t, pol in
                        self.components(distinct, wavelength_m, field_angle_rad, polarisation=polarisation)]

        return fn

    def _interp(self, column: np.ndarray, radius_m: torch.Tensor) -> torch.Tensor:
        r = torch.as_tensor(radius_m)
        real = torch.float64 if r.dtype == torch.float64 else torch.float32
        r = r.to(real)
        lo, hi = float(self.radii_m[0]), float(self.radii_m[-1])
        span = hi - lo
        if r.numel() and (float(r.min()) < lo - 1e-6 * span or float(r.max()) > hi + 1e-6 * span):
            raise ValueError(f"radius_m spans [{float(r.min()):.4e}, {float(r.max()):.4e}] m, outside the oblique "
                             f"table's range [{lo:.4e}, {hi:.4e}] m")
        table = torch.as_tensor(np.stack([column.real, column.imag], axis=-1), dtype=real, device=r.device)
        return catmull_rom(table, r, lo, span)


# ----------------------------------------------------------------------------- settings
def oblique_settings(*, pillar_index: float, substrate_index: float, pillar_height_m: float, period_m: float,
                     radius_min_m: float, radius_max_m: float, n_radii: int, order: int, grid_points: int,
                     centres_m: Sequence[float], wavelengths_m: Sequence[float],
                     field_angles_rad: Sequence[tuple[float, float]], factorisation: str = "normal_vector") -> dict:
    """The settings that determine a table (JSON-able; directions folded, deduplicated, normal incidence first)."""
    dirs = {(0.0, 0.0)}
    dirs.update(fold_direction((float(a), float(b))) for a, b in field_angles_rad)
    directions = sorted(dirs)
    wls = sorted({round(float(w), 15) for w in list(wavelengths_m) + list(centres_m)})
    return {"pillar_index": float(pillar_index), "substrate_index": float(substrate_index),
            "pillar_height_m": float(pillar_height_m), "period_m": float(period_m),
            "radius_min_m": float(radius_min_m), "radius_max_m": float(radius_max_m), "n_radii": int(n_radii),
            "order": int(order), "grid_points": int(grid_points), "factorisation": factorisation,
            "centres_m": [float(c) for c in centres_m], "wavelengths_m": wls,
            "directions_rad": [[g, p] for g, p in directions]}


def settings_match(a: Mapping, b: Mapping) -> bool:
    """Same table: equal keys, numbers equal to 1e-9 relative."""
    if set(a) != set(b):
        return False
    for k in a:
        if isinstance(a[k], str) or isinstance(b[k], str):
            if a[k] != b[k]:
                return False
            continue
        va, vb = np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float)
        if va.shape != vb.shape or not np.allclose(va, vb, rtol=1e-9, atol=1e-15):
            return False
    return True


# ----------------------------------------------------------------------------- solving
def _radii(s: Mapping) -> np.ndarray:
    return np.linspace(s["radius_min_m"], s["radius_max_m"], s["n_radii"])


def _solve_block(args) -> tuple[tuple, np.ndarray]:
    """One (wavelength, direction) block over radii: complex (R, 2, 2) Jones matrices (worker process)."""
    key, s, wavelength_m, gamma, phi, radii, order = args
    torch.set_num_threads(1)
    from dko.optics.metaatoms import _pillar_permittivity
    from dko.optics.rcwa_oblique import _torcwa_sim, _wall_normals

    dtype, device = torch.complex128, torch.device("cpu")
    common = dict(period_um=s["period_m"] * _UM, height_um=s["pillar_height_m"] * _UM,
                  eps_substrate=s["substrate_index"] ** 2, order=order, azimuth_rad=phi, dtype=dtype, device=device)
    sin_air = math.sin(gamma)
    normals = _wall_normals(s["period_m"], s["grid_points"]) if s["factorisation"] == "normal_vector" else None
    with torch.no_grad():
        ref_sim = _torcwa_sim(1.0, wavelength_m * _UM, sin_air=sin_air, **common)
        ref = {}
        for pol in ("s", "p"):
            s0 = complex(ref_sim.S_parameters(orders=[0, 0], direction="forward", port="transmission",
                                              polarization=pol + pol, ref_order=[0, 0], power_norm=True)
                         .reshape(-1)[0].item())
            ref[pol] = np.conj(s0) / abs(s0)
        out = np.empty((len(radii), 2, 2), dtype=np.complex128)
        for i, r in enumerate(radii):
            eps = 1.0 if r == 0 else _pillar_permittivity(float(r), s["period_m"], s["grid_points"],
                                                          s["pillar_index"] ** 2, dtype, device)
            sim = _torcwa_sim(eps, wavelength_m * _UM, sin_air=sin_air, normals=normals, **common)
            for o, pol_out in enumerate("sp"):
                for n, pol_in in enumerate("sp"):
                    if gamma == 0.0 and o != n:
                        out[i, o, n] = 0.0  # normal incidence: a circular pillar does not rotate polarisation
                        continue
                    v = sim.S_parameters(orders=[0, 0], direction="forward", port="transmission",
                                         polarization=pol_out + pol_in, ref_order=[0, 0], power_norm=True)
                    out[i, o, n] = complex(v.reshape(-1)[0].item()) * ref[pol_in]
    return key, out


def _run_blocks(blocks: list, workers: int, progress: bool) -> dict:
    results = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(b[5]) for b in blocks), desc="oblique meta-atom table", unit="solve")
    if workers <= 1:
        for b in blocks:
            key, out = _solve_block(b)
            results[key] = out
            if bar:
                bar.update(len(b[5]))
    else:
        # fork: spawn would re-run the caller's __main__ (a Snakemake script is not importable); the parent has run
        # no torch computation before the pool starts (a forked OpenMP pool could hang), the children use 1 thread
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for (key, out), b in zip(pool.map(_solve_block, blocks), blocks):
                results[key] = out
                if bar:
                    bar.update(len(b[5]))
    if bar:
        bar.close()
    return results


def _stats(a: np.ndarray, b: np.ndarray) -> dict:
    dphi = np.abs(np.angle(a * np.conj(b)))
    damp = np.abs(np.abs(a) - np.abs(b))
    return {"median_dphase_rad": float(np.median(dphi)), "max_dphase_rad": float(np.max(dphi)),
            "median_damp": float(np.median(damp)), "max_damp": float(np.max(damp))}


def build_oblique_table(settings: Mapping, *, workers: int = 1, check_radii: int = 6, check: bool = True,
                        progress: bool = True) -> ObliqueTable:
    """Solve the table of ``settings`` (:func:`oblique_settings`) and its checks; ``workers`` processes.

    Every (passband wavelength, direction) pair is solved in full (no separable approximation: the substrate's
    first diffraction order, which sets in at a few degrees at 460 nm, makes the angle response depend on the
    wavelength). Checks (``report``): ``convergence``: order + 2 against the table at ``check_radii`` radii, every
    centre wavelength, normal incidence and the largest-gamma direction; ``interpolation``: the radius interpolant
    against full solves at grid midpoints (same wavelengths and directions, the table's order); ``cross_power_max``;
    seconds.
    """
    s = dict(settings)
    radii = _radii(s)
    wls = [float(w) for w in s["wavelengths_m"]]
    centres = [float(c) for c in s["centres_m"]]
    dirs = [tuple(d) for d in s["directions_rad"]]
    order = int(s["order"])
    t0 = time.perf_counter()
    blocks = [((w, d), s, wls[w], dirs[d][0], dirs[d][1], radii, order)
              for w in range(len(wls)) for d in range(len(dirs))]
    res = _run_blocks(blocks, workers, progress)
    jones = np.stack([np.stack([res[(w, d)] for d in range(len(dirs))]) for w in range(len(wls))])
    table_s = time.perf_counter() - t0
    table = ObliqueTable(radii, centres, np.asarray(dirs), jones, wls, s)
    report: dict = {"table_seconds": table_s, "solves": int(sum(len(b[5]) for b in blocks)),
                    "cross_power_max": table.cross_power_max()}
    if check:
        sub_idx = np.linspace(0, radii.size - 1, min(check_radii, radii.size)).round().astype(int)
        mid_idx = np.linspace(0, radii.size - 2, min(check_radii, radii.size - 1)).round().astype(int)
        mids = 0.5 * (radii[mid_idx] + radii[mid_idx + 1])
        steep = max(range(len(dirs)), key=lambda d: dirs[d][0])
        cases = [(w, d) for w in range(len(wls)) if any(_same_wavelength(wls[w], c) for c in centres)
                 for d in sorted({0, steep})]
        t1 = time.perf_counter()
        check_blocks = [(("c",) + case, s, wls[case[0]], dirs[case[1]][0], dirs[case[1]][1], radii[sub_idx], order + 2)
                        for case in cases]
        check_blocks += [(("m",) + case, s, wls[case[0]], dirs[case[1]][0], dirs[case[1]][1], mids, order)
                         for case in cases]
        res2 = _run_blocks(check_blocks, workers, progress)
        conv, interp = {}, {}
        for w, d in cases:
            name = f"{wls[w]:.4e}_gamma{math.degrees(dirs[d][0]):.1f}"
            conv[name] = _stats(jones[w, d][sub_idx][:, [0, 1], [0, 1]], res2[("c", w, d)][:, [0, 1], [0, 1]])
            got = np.stack([table._interp(jones[w, d][:, o, i], torch.as_tensor(mids)).numpy()
                            for o, i in ((0, 0), (1, 1))], axis=-1)
            interp[name] = _stats(got, res2[("m", w, d)][:, [0, 1], [0, 1]])
        report.update(convergence={"orders": [order, order + 2], "radii_m": radii[sub_idx].tolist(),
                                   "per_case": conv, "overall": _overall(conv)},
                      interpolation={"radii_m": mids.tolist(), "per_case": interp, "overall": _overall(interp)},
                      check_seconds=time.perf_counter() - t1)
    table.report = report
    log.info("oblique meta-atom table: %d solves in %.0f s; %s", report["solves"], table_s,
             {k: report[k]["overall"] for k in ("convergence", "interpolation") if k in report})
    return table


def _overall(per_case: Mapping[str, Mapping[str, float]]) -> dict:
    if not per_case:
        return {}
    return {"median_dphase_rad": float(np.median([v["median_dphase_rad"] for v in per_case.values()])),
            "max_dphase_rad": float(max(v["max_dphase_rad"] for v in per_case.values())),
            "median_damp": float(np.median([v["median_damp"] for v in per_case.values()])),
            "max_damp": float(max(v["max_damp"] for v in per_case.values()))}


def prepare_oblique_table(settings: Mapping, table_path: str | Path, report_path: str | Path, *, workers: int = 1,
                          progress: bool = True) -> dict:
    """The table of ``settings`` at ``table_path`` (+ its report as JSON): the shipped one when the settings are its
    own (no solve), else solved by :func:`build_oblique_table` with ``workers`` processes. Returns a summary."""
    from dko.io import write_json

    t0 = time.perf_counter()
    shipped = default_oblique_path()
    reused = False
    if shipped.is_file():
        candidate = ObliqueTable.load(shipped)
        reused = settings_match(candidate.settings, settings)
    if reused:
        table = candidate
        log.info("oblique meta-atom table: the shipped table matches the settings (%s); reused", shipped)
    else:
        n = len(settings["wavelengths_m"]) * len(settings["directions_rad"]) * int(settings["n_radii"])
        log.info("oblique meta-atom table: solving %d (radius, wavelength, direction) cases at order %d with %d "
                 "worker(s) (about %.0f core-minutes at order 7 on one CPU core)", n, settings["order"], workers,
                 n * 2.5 / 60)
        table = build_oblique_table(settings, workers=workers, progress=progress)
    table.save(table_path)
    summary = {"reused_shipped_table": reused, "seconds": time.perf_counter() - t0,
               "n_radii": int(table.radii_m.size), "n_wavelengths": int(table.wavelengths_m.size),
               "n_directions": int(table.directions.shape[0]), "cross_power_max": table.cross_power_max()}
    for key in ("convergence", "interpolation"):
        for stat, value in table.report.get(key, {}).get("overall", {}).items():
            summary[f"{key}_{stat}"] = value
    write_json(report_path, {"summary": summary, "settings": table.settings, "report": table.report,
                             "directions_deg": np.degrees(table.directions).tolist()})
    return summary
