"""Meta-atom library: zeroth-order complex transmission of TiO2 nanopillars by RCWA (DESIGN.md section 3).

Physics (:func:`solve_transmission`): a square lattice (period ``period_m``) of cylindrical pillars
(refractive index ``pillar_index``, height ``pillar_height_m``, radius r) surrounded by air, standing
on a semi-infinite substrate (``substrate_index``), illuminated at normal incidence from the substrate
by an x-polarised plane wave (a circular pillar is polarisation independent at normal incidence); the
transmitted wave leaves into air (where the PSF propagation continues). Solved with **torcwa**
(rigorous coupled-wave analysis) at Fourier orders ``[-order, order]`` in x and y.

Conventions of the returned transmission ``t(r, lambda)``:

* time dependence ``exp(-i omega t)`` (torcwa's), so a propagating wave is ``exp(+i k z)`` and a
  larger optical path (a wider pillar) gives a *larger* phase; this is the convention of
  :mod:`dko.optics.propagation` / :mod:`dko.optics.psf` (a converging lens has phase
  ``-k (sqrt(r^2 + f^2) - f)``).
* **phase reference**: an empty unit cell (no pillar: an air layer of the same height on the same
  substrate) has phase 0 at every wavelength, i.e. ``arg t(r) = arg S_00(r) - arg S_00(empty)``.
* **amplitude**: absolute and power normalised, ``|t|^2`` = fraction of the incident power carried
  by the transmitted zeroth order (torcwa ``power_norm=True``). The empty cell therefore has
  ``|t| = sqrt(1 - R_Fresnel) ~ 0.983`` (SiO2 -> air), and ``|t| <= 1`` always.

The pillar cross-section is rasterised on a ``grid_points x grid_points`` grid with anti-aliased
edges (each grid cell holds the linearly ramped fill fraction of the circle's boundary), so the
permittivity, and hence ``t``, varies continuously with the radius instead of in grid-sized steps.

The library (:class:`MetaAtomLibrary`) is a table ``t`` (L wavelengths x R radii on a uniform radius
grid) with a differentiable lookup: cubic Hermite (Catmull-Rom) interpolation of the real and the
imaginary part along the radius, exact at the table points, C1 in the radius. A design variable ``p``
(unbounded, real) maps to the radius through a sigmoid, so gradient descent on ``p`` never leaves the
table's range.

A converged table at the default settings ships as package data (``data/metaatoms_default.npz`` and its
settings / convergence report ``data/metaatoms_default.json``); :func:`prepare_library` reuses it when
the configured settings equal it and solves a fresh table otherwise.
"""

from __future__ import annotations

import logging
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dko.io import atomic_path, read_json, write_json

__all__ = [
    "MetaAtomLibrary",
    "solve_transmission",
    "build_library",
    "prepare_library",
    "library_settings",
    "settings_match",
    "default_library_path",
    "default_report_path",
    "plot_library",
    "interpolation_check",
    "needs_rebuild",
    "GRID_POINTS",
]

log = logging.getLogger(__name__)

#: Rasterisation of the unit cell for the Fourier series of the permittivity (points per side).
GRID_POINTS = 256
#: Settings keys that must agree (numbers to a relative 1e-9) for a table to be reused.
_SETTING_KEYS = ("pillar_index", "substrate_index", "pillar_height_m", "period_m", "radius_min_m", "radius_max_m",
                 "n_radii", "rcwa_order", "convergence_order_step", "convergence_radii", "grid_points",
                 "wavelengths_m")
_WL_RTOL = 1e-9
_DEFAULT_NAME = "metaatoms_default"


def default_library_path() -> Path:
    """Path of the shipped table (package data)."""
    return Path(str(resources.files("dko.optics").joinpath("data", f"{_DEFAULT_NAME}.npz")))


def default_report_path() -> Path:
    """Path of the shipped table's settings + convergence report (package data, JSON)."""
    return Path(str(resources.files("dko.optics").joinpath("data", f"{_DEFAULT_NAME}.json")))


# ----------------------------------------------------------------------------- RCWA
def _pillar_permittivity(radius_m: float, period_m: float, grid_points: int, eps_pillar: float,
                         dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Relative permittivity (grid_points, grid_points) of one unit cell, pillar centred, air around.

    The fill fraction of each grid cell is ``clip((r - d) / dx + 1/2, 0, 1)`` with ``d`` the distance of
    the cell centre from the pillar axis: an anti-aliased disk whose area matches ``pi r^2`` to
    O(dx^2) and that changes continuously with ``r``.
    """
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    dx = period_m / grid_points
    x = (torch.arange(grid_points, dtype=torch.float64, device=device) + 0.5) * dx - period_m / 2
    d = torch.sqrt(x[:, None] ** 2 + x[None, :] ** 2)
    fill = torch.clamp((radius_m - d) / dx + 0.5, 0.0, 1.0)
    return (1.0 + (eps_pillar - 1.0) * fill).to(real).to(dtype)


def _solve_s00(eps_layer, wavelength_um: float, period_um: float, height_um: float, eps_substrate: float,
               order: int, dtype: torch.dtype, device: torch.device) -> complex:
    import torcwa

    sim = torcwa.rcwa(freq=1.0 / wavelength_um, order=[order, order], L=[period_um, period_um], dtype=dtype,
                      device=device)
    sim.add_input_layer(eps=eps_substrate)
    sim.set_incident_angle(inc_ang=0.0, azi_ang=0.0)
    sim.add_layer(thickness=height_um, eps=eps_layer)
    sim.solve_global_smatrix()
    s = sim.S_parameters(orders=[0, 0], direction="forward", port="transmission", polarization="xx",
                         ref_order=[0, 0], power_norm=True)
    return complex(s.reshape(-1)[0].item())


def solve_transmission(radii_m: Sequence[float] | np.ndarray, wavelengths_m: Sequence[float] | np.ndarray, *,
                       pillar_index: float, substrate_index: float, pillar_height_m: float, period_m: float,
                       order: int, dtype: torch.dtype = torch.complex128, grid_points: int = GRID_POINTS,
                       device: torch.device | str | None = None, progress: bool = False) -> np.ndarray:
    """Zeroth-order complex transmission of pillar arrays by RCWA (torcwa), one solve per (lambda, r).

    Conventions (module docstring): ``exp(-i omega t)``; phase relative to an empty cell (air layer of
    the same height on the substrate); ``|t|^2`` = power fraction in the zeroth transmitted order.

    Args:
        radii_m: (R,) pillar radii, metres, each in [0, period_m / 2] (0 = no pillar).
        wavelengths_m: (L,) free-space wavelengths, metres.
        pillar_index, substrate_index: real refractive indices (lossless).
        pillar_height_m, period_m: metres.
        order: Fourier order per axis (>= 1); 2*order+1 harmonics per axis.
        dtype: torch.complex128 (default) or torch.complex64 for the solver.
        grid_points: rasterisation of the unit cell per side.
        device: torch device for the solver (default CPU).
        progress: show a tqdm bar.
    Returns:
        complex128 array (L, R).
    Raises:
        ValueError: on non-physical inputs (naming the argument).
    """
    radii = np.asarray(radii_m, dtype=np.float64).reshape(-1)
    wls = np.asarray(wavelengths_m, dtype=np.float64).reshape(-1)
    for name, value in (("pillar_index", pillar_index), ("substrate_index", substrate_index),
                        ("pillar_height_m", pillar_height_m), ("period_m", period_m)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"metaatoms.{name} must be a positive finite number, got {value!r}")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"metaatoms.rcwa_order must be an integer >= 1, got {order!r}")
    if wls.size == 0 or not np.all(np.isfinite(wls)) or np.any(wls <= 0) or np.any(wls > 1e-4):
        raise ValueError(f"wavelengths_m must be positive wavelengths in metres, got {wls.tolist()}")
    if radii.size == 0 or np.any(radii < 0) or np.any(radii > period_m / 2):
        raise ValueError(f"radii_m must lie in [0, period_m/2 = {period_m / 2:.3e}] m, got range "
                         f"[{radii.min() if radii.size else 'n/a'}, {radii.max() if radii.size else 'n/a'}]")
    device = torch.device(device) if device is not None else torch.device("cpu")
    um = 1e6  # torcwa is scale free; solve in micrometres to keep numbers O(1)
    eps_p, eps_s = float(pillar_index) ** 2, float(substrate_index) ** 2
    out = np.empty((wls.size, radii.size), dtype=np.complex128)
    jobs = [(i, j) for i in range(wls.size) for j in range(radii.size)]
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc=f"torcwa order {order}", unit="solve")
    refs = {}
    with torch.no_grad():
        for i, wl in enumerate(wls):
            refs[i] = _solve_s00(1.0, wl * um, period_m * um, pillar_height_m * um, eps_s, order, dtype, device)
            if abs(refs[i]) < 1e-6:  # pragma: no cover - a homogeneous layer always transmits
                raise ValueError(f"empty-cell reference transmission vanished at wavelength {wl} m")
        for i, j in iterator:
            r = radii[j]
            eps = 1.0 if r == 0 else _pillar_permittivity(r, period_m, grid_points, eps_p, dtype, device)
            s = _solve_s00(eps, wls[i] * um, period_m * um, pillar_height_m * um, eps_s, order, dtype, device)
            out[i, j] = s * np.conj(refs[i]) / abs(refs[i])
    return out


# ----------------------------------------------------------------------------- library
def _to_dict(obj: Any) -> dict:
    if isinstance(obj, Mapping):
        return dict(obj)
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    raise TypeError(f"expected a mapping or dataclass of metaatoms settings, got {type(obj).__name__}")


def library_settings(meta_cfg: Any, wavelengths_m: Sequence[float]) -> dict:
    """The settings that define a table: the ``metaatoms`` config section plus wavelengths and grid.

    Args:
        meta_cfg: :class:`dko.config.MetaAtomConfig` or a mapping with the same keys.
        wavelengths_m: table wavelengths, metres (``optics.wavelengths_m``).
    """
    m = _to_dict(meta_cfg)
    missing = [k for k in _SETTING_KEYS if k not in ("grid_points", "wavelengths_m") and k not in m]
    if missing:
        raise ValueError(f"metaatoms settings lack key(s) {', '.join('metaatoms.' + k for k in missing)}")
    out = {k: m[k] for k in _SETTING_KEYS if k not in ("grid_points", "wavelengths_m")}
    for k in ("n_radii", "rcwa_order", "convergence_order_step", "convergence_radii"):
        out[k] = int(out[k])
    for k in ("pillar_index", "substrate_index", "pillar_height_m", "period_m", "radius_min_m", "radius_max_m"):
        out[k] = float(out[k])
    out["grid_points"] = int(m.get("grid_points", GRID_POINTS))
    out["wavelengths_m"] = [float(w) for w in wavelengths_m]
    return out


def settings_match(a: Mapping, b: Mapping) -> bool:
    """True when two table settings agree on every defining key (numbers to relative 1e-9)."""
    for key in _SETTING_KEYS:
        if key not in a or key not in b:
            return False
        va, vb = np.atleast_1d(np.asarray(a[key], dtype=np.float64)), np.atleast_1d(np.asarray(b[key], dtype=np.float64))
        if va.shape != vb.shape or not np.allclose(va, vb, rtol=1e-9, atol=0.0):
            return False
    return True



def _phase_bin(phase: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Index (long) of the nearest of ``n_bins`` phase bins 2 pi j / n_bins (periodic)."""
    return torch.round(phase.detach().to(torch.float64) * (n_bins / (2 * math.pi))).to(torch.long) % n_bins


def catmull_rom(table: torch.Tensor, r: torch.Tensor, lo: float, span: float) -> torch.Tensor:
    """Cubic Hermite (Catmull-Rom) interpolation of (Re, Im) samples ``table`` (n, 2) on a uniform grid from ``lo``
    over ``span`` at ``r`` (any shape, same real dtype); end points extrapolated linearly. Complex, shape of ``r``."""
    n = table.shape[0]
    u = ((r - lo) / (span / (n - 1))).clamp(0.0, n - 1.0)
    i = torch.floor(u).clamp(max=n - 2)
    s = (u - i).unsqueeze(-1)
    i = i.to(torch.long)
    # end points extrapolated linearly: p[-1] = 2 p[0] - p[1], p[n] = 2 p[n-1] - p[n-2]
    ext = torch.cat([2 * table[:1] - table[1:2], table, 2 * table[-1:] - table[-2:-1]], dim=0)
    p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
    m1, m2 = 0.5 * (p2 - p0), 0.5 * (p3 - p1)
    s2, s3 = s * s, s * s * s
    val = (2 * s3 - 3 * s2 + 1) * p1 + (s3 - 2 * s2 + s) * m1 + (-2 * s3 + 3 * s2) * p2 + (s3 - s2) * m2
    return torch.complex(val[..., 0], val[..., 1])


class MetaAtomLibrary:
    """Table of zeroth-order complex transmission ``t(r, lambda)`` with a differentiable lookup.

    Attributes:
        radii_m: float64 (R,), uniform grid from ``radius_min_m`` to ``radius_max_m``, metres.
        wavelengths_m: float64 (L,), metres, ascending.
        settings: dict of the generating settings (see :func:`library_settings`).
        table: complex128 (L, R), the transmission table (conventions: module docstring); also
            ``transmission_table``. The name ``transmission`` is the differentiable lookup *method*
            (a Python class cannot have an array attribute and a method of the same name).
    """

    def __init__(self, radii_m: np.ndarray, wavelengths_m: np.ndarray, transmission: np.ndarray,
                 settings: Mapping | None = None, excluded: np.ndarray | None = None):
        radii = np.asarray(radii_m, dtype=np.float64).reshape(-1)
        wls = np.asarray(wavelengths_m, dtype=np.float64).reshape(-1)
        table = np.asarray(transmission, dtype=np.complex128)
        if radii.size < 4:
            raise ValueError(f"a meta-atom table needs at least 4 radii, got {radii.size}")
        steps = np.diff(radii)
        if np.any(steps <= 0) or not np.allclose(steps, steps.mean(), rtol=1e-6, atol=0):
            raise ValueError("meta-atom table radii_m must be a strictly increasing uniform grid")
        if wls.size < 1 or np.any(np.diff(wls) == 0) or np.any(wls <= 0):
            raise ValueError(f"meta-atom table wavelengths_m must be distinct positive values, got {wls.tolist()}")
        if table.shape != (wls.size, radii.size):
            raise ValueError(f"meta-atom table transmission has shape {table.shape}, expected {(wls.size, radii.size)}")
        if not np.all(np.isfinite(table)):
            raise ValueError("meta-atom table transmission contains non-finite values")
        order = np.argsort(wls)
        self.radii_m = radii
        self.wavelengths_m = wls[order]
        self.table = table[order]
        self.settings = dict(settings or {})
        if excluded is None:
            excluded = np.zeros(table.shape, dtype=bool)
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != table.shape:
            raise ValueError(f"meta-atom table 'excluded' has shape {excluded.shape}, expected {table.shape}")
        if excluded.all(axis=1).any():
            raise ValueError("meta-atom table 'excluded' leaves no radius at some wavelength")
        self.excluded = excluded[order]
        self._cache: dict = {}

    # the (L, R) array under the name of the brief's attribute, distinct from the lookup method
    @property
    def transmission_table(self) -> np.ndarray:
        """complex128 (L, R): the table (same as ``table``)."""
        return self.table

    @property
    def radius_min_m(self) -> float:
        return float(self.radii_m[0])

    @property
    def radius_max_m(self) -> float:
        return float(self.radii_m[-1])

    def __repr__(self) -> str:
        return (f"MetaAtomLibrary({self.radii_m.size} radii {self.radius_min_m:.3e}..{self.radius_max_m:.3e} m, "
                f"wavelengths {[float(f'{w:.4g}') for w in self.wavelengths_m]} m)")

    # ------------------------------------------------------------------ persistence
    @classmethod
    def default(cls) -> "MetaAtomLibrary":
        """The shipped table (package data, see :func:`default_library_path`)."""
        path = default_library_path()
        if not path.is_file():
            raise ValueError(f"the shipped meta-atom table '{path}' is missing from the installed package")
        return cls.load(path)

    @classmethod
    def load(cls, path: str | Path) -> "MetaAtomLibrary":
        """Read a table written by :meth:`save`."""
        import json

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"meta-atom table '{path}' does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ("radii_m", "wavelengths_m", "transmission", "settings_json") if k not in data]
                if missing:
                    raise ValueError(f"meta-atom table '{path}' lacks array(s) {missing}")
                settings = json.loads(str(data["settings_json"]))
                excluded = data["excluded"] if "excluded" in data else None
                return cls(data["radii_m"], data["wavelengths_m"], data["transmission"], settings, excluded)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"meta-atom table '{path}' cannot be read: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write the table atomically as ``.npz`` (arrays + settings as a JSON string; no pickle)."""
        import json

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, radii_m=self.radii_m, wavelengths_m=self.wavelengths_m, transmission=self.table,
                         settings_json=np.array(json.dumps(self.settings, sort_keys=True)), excluded=self.excluded)

    # ------------------------------------------------------------------ radii kept out of designs
    def with_resonances_excluded(self, gradient_factor: float | None, margin: int = 1) -> "MetaAtomLibrary":
        """A copy whose reverse lookup (:meth:`design_for_phase`, hence the phase parametrisation of DKO and E2E)
        never picks radii near a resonance of the element's own wavelength.

        Per table wavelength, :func:`dko.optics.rcwa_oblique.flag_resonances` (``steep``: ``|dt/dr|`` above
        ``gradient_factor`` times the median, widened by ``margin`` table radii): there t changes fast, so the
        interpolant's error, the factorisation's error and any fabrication error in r are amplified. None = no
        exclusion (the mask is cleared).
        """
        from dko.optics.rcwa_oblique import flag_resonances

        excluded = np.zeros(self.table.shape, dtype=bool)
        if gradient_factor is not None:
            for j in range(self.wavelengths_m.size):
                excluded[j] = flag_resonances(self.table[j][:, None], self.radii_m, gradient_factor=gradient_factor,
                                              margin=margin)
        return MetaAtomLibrary(self.radii_m, self.wavelengths_m, self.table,
                               dict(self.settings, resonance_factor=gradient_factor), excluded)

    def _allowed(self, wavelength_m: float, radii: np.ndarray) -> np.ndarray:
        """bool (n,): radii whose nearest table radius is not excluded at ``wavelength_m`` (between two table
        wavelengths: at neither)."""
        step = (self.radius_max_m - self.radius_min_m) / (self.radii_m.size - 1)
        nearest = np.clip(np.rint((radii - self.radius_min_m) / step).astype(int), 0, self.radii_m.size - 1)
        mask = np.zeros(self.radii_m.size, dtype=bool)
        for j, _ in self._wavelength_weights(wavelength_m):
            mask |= self.excluded[j]
        return ~mask[nearest]

    # ------------------------------------------------------------------ design variable
    def radius_from_design(self, p: torch.Tensor) -> torch.Tensor:
        """Unbounded design variable ``p`` (any shape, real) -> radius ``r_min + (r_max - r_min) sigmoid(p)``, metres.

        Output dtype/device follow ``p`` (float64 recommended: radii are ~1e-7 m).
        """
        p = torch.as_tensor(p)
        if not p.is_floating_point():
            p = p.to(torch.float64)
        return self.radius_min_m + (self.radius_max_m - self.radius_min_m) * torch.sigmoid(p)

    def design_from_radius(self, radius_m: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
        """Inverse of :meth:`radius_from_design` (logit); radii at or beyond the bounds map to +-logit(1 - eps)."""
        r = torch.as_tensor(radius_m)
        if not r.is_floating_point():
            r = r.to(torch.float64)
        frac = (r - self.radius_min_m) / (self.radius_max_m - self.radius_min_m)
        return torch.logit(frac.clamp(eps, 1 - eps))

    # ------------------------------------------------------------------ lookup
    def _wavelength_weights(self, wavelength_m: float) -> list[tuple[int, float]]:
        """[(table index, weight)]: one entry at a table wavelength, two in between; ValueError outside."""
        wl = float(wavelength_m)
        wls = self.wavelengths_m
        close = np.nonzero(np.isclose(wls, wl, rtol=_WL_RTOL, atol=0.0))[0]
        if close.size:
            return [(int(close[0]), 1.0)]
        if not (wls[0] < wl < wls[-1]):
            raise ValueError(f"wavelength {wl} m is outside the meta-atom table's range [{wls[0]}, {wls[-1]}] m; "
                             "rebuild the library with it (optics.wavelengths_m)")
        hi = int(np.searchsorted(wls, wl))
        w = (wl - wls[hi - 1]) / (wls[hi] - wls[hi - 1])
        return [(hi - 1, 1.0 - w), (hi, w)]

    def _table_at(self, wavelength_m: float) -> np.ndarray:
        """complex128 (R,) table at one wavelength.

        Between table wavelengths: amplitude interpolated linearly and phase along the shorter arc
        (linear in lambda); a coarse approximation of the dispersion, logged as a warning once.
        """
        weights = self._wavelength_weights(wavelength_m)
        if len(weights) == 1:
            return self.table[weights[0][0]]
        key = ("wl", float(wavelength_m))
        if key not in self._cache:
            log.warning("wavelength %.4g m is not in the meta-atom table %s: interpolating between table "
                        "wavelengths (approximate)", wavelength_m, self.wavelengths_m.tolist())
            (ia, wa), (ib, wb) = weights
            ta, tb = self.table[ia], self.table[ib]
            amp = wa * np.abs(ta) + wb * np.abs(tb)
            dphi = np.angle(tb * np.conj(ta))
            self._cache[key] = amp * np.exp(1j * (np.angle(ta) + wb * dphi))
        return self._cache[key]

    def _tensor_table(self, wavelength_m: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = ("t", float(wavelength_m), dtype, str(device))
        if key not in self._cache:
            t = self._table_at(wavelength_m)
            self._cache[key] = torch.as_tensor(np.stack([t.real, t.imag], axis=-1), dtype=dtype, device=device)
        return self._cache[key]

    def transmission(self, radius_m: torch.Tensor, wavelength_m: float) -> torch.Tensor:
        """Complex transmission at radii ``radius_m`` (any shape, metres) and one wavelength (metres).

        Cubic Hermite (Catmull-Rom) interpolation of Re t and Im t on the uniform radius grid: passes
        through the table values, continuous first derivative, differentiable in ``radius_m``.
        Wavelengths between table wavelengths are interpolated (see :meth:`_table_at`).

        Returns:
            complex tensor, same shape and device as ``radius_m``; complex128 for float64 radii,
            complex64 for float32.
        Raises:
            ValueError: radius outside [r_min, r_max] (beyond 1e-6 of the range), or wavelength outside
            the table's range.
        """
        r = torch.as_tensor(radius_m)
        if not r.is_floating_point():
            r = r.to(torch.float64)
        real = torch.float64 if r.dtype == torch.float64 else torch.float32
        r = r.to(real)
        span = self.radius_max_m - self.radius_min_m
        with torch.no_grad():
            if r.numel() and (float(r.min()) < self.radius_min_m - 1e-6 * span
                              or float(r.max()) > self.radius_max_m + 1e-6 * span):
                raise ValueError(f"radius_m spans [{float(r.min()):.4e}, {float(r.max()):.4e}] m, outside the meta-atom "
                                 f"table's range [{self.radius_min_m:.4e}, {self.radius_max_m:.4e}] m")
        table = self._tensor_table(wavelength_m, real, r.device)  # (R, 2)
        return catmull_rom(table, r, self.radius_min_m, span)

    # ------------------------------------------------------------------ reverse lookup
    def _dense(self, wavelength_m: float, n: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(radii (n,), t (n,)) sampled densely from the interpolant (float64)."""
        key = ("dense", float(wavelength_m), n)
        if key not in self._cache:
            radii = np.linspace(self.radius_min_m, self.radius_max_m, n)
            with torch.no_grad():
                t = self.transmission(torch.as_tensor(radii), wavelength_m).numpy()
            self._cache[key] = (radii, t)
        return self._cache[key]

    def design_for_phase(self, phase: torch.Tensor, wavelength_m: float, n_bins: int = 4096) -> torch.Tensor:
        """Design variable whose transmission best realises ``exp(i phase)`` (reverse lookup).

        Picks, among 4096 radii sampled from the interpolant (less those :meth:`with_resonances_excluded` keeps
        out of designs), the one minimising ``|t(r) - exp(i phase)|``:
        the phase closest mod 2 pi, trading phase error against amplitude (a candidate with |t| = a and
        exact phase is beaten only by one whose phase error is below ``asin(1 - a)``, so where an exact
        candidate with high |t| exists the phase error is small). Target phases are quantised to
        ``n_bins`` bins over 2 pi (error <= pi / n_bins).

        Args:
            phase: real tensor, any shape, radians (any range).
            wavelength_m: metres.
        Returns:
            float64 design variable, same shape/device as ``phase``; not differentiable (an initialiser).
        """
        phase = torch.as_tensor(phase)
        key = ("lut", float(wavelength_m), n_bins)
        if key not in self._cache:
            radii, t = self._dense(wavelength_m)
            allowed = self._allowed(wavelength_m, radii)
            radii, t = radii[allowed], t[allowed]
            targets = np.exp(1j * 2 * np.pi * np.arange(n_bins) / n_bins)
            best = np.empty(n_bins, dtype=np.int64)
            for start in range(0, n_bins, 512):
                cost = np.abs(t[None, :] - targets[start:start + 512, None])
                best[start:start + 512] = np.argmin(cost, axis=1)
            design = self.design_from_radius(torch.as_tensor(radii[best])).to(torch.float64)
            self._cache[key] = design
        lut = self._cache[key].to(phase.device)
        return lut[_phase_bin(phase, n_bins)]

    # ------------------------------------------------------------------ phase design variable
    def _phase_bins(self, wavelength_m: float, n_bins: int, dtype: torch.dtype,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(radius (n_bins,) float64, t (n_bins,) complex) of the reverse lookup of phases 2 pi j / n_bins."""
        key = ("phase_bins", float(wavelength_m), n_bins, dtype, str(device))
        if key not in self._cache:
            phases = torch.arange(n_bins, dtype=torch.float64) * (2 * math.pi / n_bins)
            radius = self.radius_from_design(self.design_for_phase(phases, wavelength_m, n_bins=n_bins))
            with torch.no_grad():
                t = self.transmission(radius, wavelength_m)
            self._cache[key] = (radius.to(device), t.to(device=device, dtype=dtype))
        return self._cache[key]

    def radius_for_phase(self, phase: torch.Tensor, wavelength_m: float, n_bins: int = 4096) -> torch.Tensor:
        """Pillar radius (float64 metres, same shape/device as ``phase``) realising the design phase ``phase``
        (radians, any range): the reverse lookup of :meth:`design_for_phase` (nearest of ``n_bins`` bins)."""
        phase = torch.as_tensor(phase)
        radius, _ = self._phase_bins(wavelength_m, n_bins, torch.complex128, phase.device)
        return radius[_phase_bin(phase, n_bins)]

    def transmission_for_phase(self, phase: torch.Tensor, wavelength_m: float, n_bins: int = 4096) -> torch.Tensor:
        """Complex transmission of the pillars realising the design phase ``phase`` (the phase parametrisation).

        Forward: exactly ``transmission(radius_for_phase(phase))``, the realised meta-atom (its amplitude and
        its phase error where the library does not reach the target, e.g. the ~9 % of 2 pi it misses in the
        red). Backward (straight-through): the derivative of ``|t| exp(i phase)``, the ideal phase mask of the
        same amplitude. The design variable is periodic, so a superpixel can wrap through 2 pi, and the
        gradient never vanishes inside a phase gap of the library (with the exact, piecewise-constant
        lookup it would: measured, superpixels gather there and scatter half of the light).

        Args:
            phase: real tensor, any shape, radians; float32 gives complex64, float64 complex128.
            wavelength_m: metres (a table wavelength or between two).
        Returns:
            complex tensor, same shape/device as ``phase``, differentiable in ``phase``.
        """
        phase = torch.as_tensor(phase)
        if not phase.is_floating_point():
            phase = phase.to(torch.float64)
        cdtype = torch.complex128 if phase.dtype == torch.float64 else torch.complex64
        _, table = self._phase_bins(wavelength_m, n_bins, cdtype, phase.device)
        realised = table[_phase_bin(phase, n_bins)]
        surrogate = torch.polar(realised.abs().to(phase.dtype), phase)
        return surrogate + (realised - surrogate).detach()

    def phase_coverage(self, wavelength_m: float) -> float:
        """Span (max - min) of the transmission phase unwrapped along the table radii, in units of 2 pi.

        Unwrapped on the solved radii, not on the dense interpolant: next to a sharp resonance (|t| near
        0, e.g. in the blue) the interpolant may wind once around the origin between two table radii,
        which would add a spurious 2 pi.
        """
        t = self._table_at(wavelength_m)
        phase = np.unwrap(np.angle(t))
        return float((phase.max() - phase.min()) / (2 * np.pi))

    def mean_amplitude(self, wavelength_m: float) -> float:
        """Mean |t| over the radius range (uniform in radius)."""
        _, t = self._dense(wavelength_m)
        return float(np.mean(np.abs(t)))


# ----------------------------------------------------------------------------- build / prepare
def _radii_grid(s: Mapping) -> np.ndarray:
    return np.linspace(s["radius_min_m"], s["radius_max_m"], s["n_radii"])


def build_library(meta_cfg: Any, wavelengths_m: Sequence[float], *, device: torch.device | str | None = None,
                  progress: bool = True) -> tuple[MetaAtomLibrary, dict]:
    """Solve a table at ``rcwa_order`` and a convergence check at ``rcwa_order + convergence_order_step``.

    Also checks the radius interpolation at ``convergence_radii`` midpoints (:func:`interpolation_check`).

    The check re-solves ``convergence_radii`` radii (evenly spread over the table, at every wavelength)
    at the higher order and reports, per wavelength and overall, the median and maximum of the wrapped
    phase difference |arg(t_hi / t_lo)| (radians) and of the amplitude difference ||t_hi| - |t_lo||.

    Args:
        meta_cfg: :class:`dko.config.MetaAtomConfig` or mapping (keys of the ``metaatoms`` section).
        wavelengths_m: table wavelengths, metres.
    Returns:
        (library, convergence report dict).
    """
    s = library_settings(meta_cfg, wavelengths_m)
    radii = _radii_grid(s)
    phys = dict(pillar_index=s["pillar_index"], substrate_index=s["substrate_index"],
                pillar_height_m=s["pillar_height_m"], period_m=s["period_m"], grid_points=s["grid_points"],
                device=device, progress=progress)
    t0 = time.perf_counter()
    table = solve_transmission(radii, s["wavelengths_m"], order=s["rcwa_order"], **phys)
    table_s = time.perf_counter() - t0
    sub = np.unique(np.round(np.linspace(0, radii.size - 1, min(s["convergence_radii"], radii.size))).astype(int))
    hi_order = s["rcwa_order"] + s["convergence_order_step"]
    t1 = time.perf_counter()
    hi = solve_transmission(radii[sub], s["wavelengths_m"], order=hi_order, **phys)
    check_s = time.perf_counter() - t1
    lo = table[:, sub]
    dphase = np.abs(np.angle(hi * np.conj(lo)))
    damp = np.abs(np.abs(hi) - np.abs(lo))
    per_wl = {}
    for i, wl in enumerate(s["wavelengths_m"]):
        per_wl[f"{wl:.4e}"] = {"median_dphase_rad": float(np.median(dphase[i])), "max_dphase_rad": float(dphase[i].max()),
                                "median_damp": float(np.median(damp[i])), "max_damp": float(damp[i].max())}
    report = {
        "order": s["rcwa_order"], "check_order": hi_order, "check_radii_m": radii[sub].tolist(),
        "median_dphase_rad": float(np.median(dphase)), "max_dphase_rad": float(dphase.max()),
        "median_damp": float(np.median(damp)), "max_damp": float(damp.max()),
        "per_wavelength": per_wl, "table_seconds": table_s, "check_seconds": check_s,
        "torcwa_version": _torcwa_version(),
    }
    settings = dict(s, convention="exp(-i omega t); phase relative to an empty cell (air layer of the same height); "
                                  "|t|^2 = zeroth-order transmitted power fraction; substrate -> pillars -> air, "
                                  "x-polarised normal incidence")
    log.info("meta-atom table: %d radii x %d wavelengths at order %d in %.1f s; order %d check: median/max dphase "
             "%.3g/%.3g rad, median/max d|t| %.3g/%.3g", radii.size, len(s["wavelengths_m"]), s["rcwa_order"], table_s,
             hi_order, report["median_dphase_rad"], report["max_dphase_rad"], report["median_damp"], report["max_damp"])
    lib = MetaAtomLibrary(radii, np.asarray(s["wavelengths_m"]), table, settings)
    t2 = time.perf_counter()
    report["interpolation"] = interpolation_check(lib, s["convergence_radii"], device=device)
    report["interpolation_seconds"] = time.perf_counter() - t2
    log.info("interpolation check at %d midpoints: median/max |dt| %.3g/%.3g", len(report["interpolation"]["radii_m"]),
             report["interpolation"]["median_dt"], report["interpolation"]["max_dt"])
    return lib, report


def interpolation_check(lib: MetaAtomLibrary, n_points: int, *, device: torch.device | str | None = None) -> dict:
    """Accuracy of the radius interpolant: fresh solves at ``n_points`` midpoints between table radii.

    The midpoints are spread evenly over the table; each is solved at the table's settings (every
    wavelength) and compared with :meth:`MetaAtomLibrary.transmission`. Large errors flag resonances
    narrower than the radius step (raise ``metaatoms.n_radii`` to resolve them).

    Returns:
        dict with ``median_dt`` / ``max_dt`` (|t_interp - t_solved|), ``median_dphase_rad`` /
        ``max_dphase_rad``, ``radii_m`` and the same per wavelength.
    """
    s = lib.settings
    left = np.unique(np.round(np.linspace(0, lib.radii_m.size - 2, min(n_points, lib.radii_m.size - 1))).astype(int))
    mid = 0.5 * (lib.radii_m[left] + lib.radii_m[left + 1])
    solved = solve_transmission(mid, lib.wavelengths_m, pillar_index=s["pillar_index"],
                                substrate_index=s["substrate_index"], pillar_height_m=s["pillar_height_m"],
                                period_m=s["period_m"], order=s["rcwa_order"], grid_points=s["grid_points"],
                                device=device)
    with torch.no_grad():
        interp = np.stack([lib.transmission(torch.as_tensor(mid), float(wl)).numpy() for wl in lib.wavelengths_m])
    dt = np.abs(interp - solved)
    dphase = np.abs(np.angle(interp * np.conj(solved)))
    per_wl = {f"{wl:.4e}": {"median_dt": float(np.median(dt[i])), "max_dt": float(dt[i].max()),
                            "median_dphase_rad": float(np.median(dphase[i])), "max_dphase_rad": float(dphase[i].max())}
              for i, wl in enumerate(lib.wavelengths_m)}
    return {"radii_m": mid.tolist(), "median_dt": float(np.median(dt)), "max_dt": float(dt.max()),
            "median_dphase_rad": float(np.median(dphase)), "max_dphase_rad": float(dphase.max()),
            "per_wavelength": per_wl}


def _torcwa_version() -> str:
    try:
        from importlib.metadata import version

        return version("torcwa")
    except Exception:  # pragma: no cover
        return "unknown"


def needs_rebuild(settings: Mapping, reference: Mapping | None = None) -> bool:
    """True when a table with ``settings`` must be solved (they differ from the shipped table's)."""
    if reference is None:
        path = default_report_path()
        if not path.is_file() or not default_library_path().is_file():
            return True
        reference = read_json(path)["settings"]
    return not settings_match(settings, reference)


def plot_library(lib: MetaAtomLibrary, path: str | Path) -> None:
    """Figure: unwrapped phase / 2 pi (left) and |t| (right) vs radius, one curve per wavelength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colors = {0: "tab:blue", 1: "tab:green", 2: "tab:red"}
    k = 16  # dense samples per table interval; the dense grid contains the table radii (every k-th point)
    for i, wl in enumerate(lib.wavelengths_m):
        radii, t = lib._dense(wl, (lib.radii_m.size - 1) * k + 1)
        color = colors.get(i, None) if lib.wavelengths_m.size == 3 else None
        label = f"{wl * 1e9:.0f} nm (coverage {lib.phase_coverage(wl):.2f} x 2pi)"
        phase = np.unwrap(np.angle(t))
        axes[0].plot(radii * 1e9, (phase - phase[0]) / (2 * np.pi), color=color, label=label)
        axes[0].plot(lib.radii_m * 1e9, (phase[::k] - phase[0]) / (2 * np.pi), ".", color=color, ms=3)
        axes[1].plot(radii * 1e9, np.abs(t), color=color, label=f"{wl * 1e9:.0f} nm (mean {np.mean(np.abs(t)):.2f})")
        axes[1].plot(lib.radii_m * 1e9, np.abs(lib.table[i]), ".", color=color, ms=3)
    axes[0].set(xlabel="pillar radius (nm)", ylabel="phase / 2pi (relative to r_min)",
                title="transmission phase (unwrapped along the interpolant)")
    axes[1].set(xlabel="pillar radius (nm)", ylabel="|t|", ylim=(0, 1.05), title="transmission amplitude")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    s = lib.settings
    if s:
        fig.suptitle(f"n_pillar {s.get('pillar_index')}, h {s.get('pillar_height_m', 0) * 1e9:.0f} nm, period "
                     f"{s.get('period_m', 0) * 1e9:.0f} nm, substrate {s.get('substrate_index')}, RCWA order "
                     f"{s.get('rcwa_order')}", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _summary(lib: MetaAtomLibrary, report: Mapping, seconds: float, reused: bool) -> dict:
    out: dict[str, float] = {}
    for wl in lib.wavelengths_m:
        tag = f"{wl * 1e9:.0f}nm"
        out[f"phase_coverage_{tag}"] = lib.phase_coverage(wl)
        out[f"mean_abs_t_{tag}"] = lib.mean_amplitude(wl)
    for key in ("median_dphase_rad", "max_dphase_rad", "median_damp", "max_damp"):
        out[f"convergence_{key}"] = float(report[key])
    if "interpolation" in report:
        for key in ("median_dt", "max_dt"):
            out[f"interpolation_{key}"] = float(report["interpolation"][key])
    out["seconds"] = float(seconds)
    out["reused_shipped_table"] = float(reused)
    return out


def prepare_library(cfg: Any, out_dir: str | Path, *, device: torch.device | str | None = None) -> dict:
    """Write ``library.npz``, ``convergence.json`` and ``library.png`` into ``out_dir``.

    When the settings (``cfg.metaatoms`` + ``cfg.optics.wavelengths_m``) equal the shipped table's, the
    shipped table and its stored convergence report are copied without solving; otherwise a fresh
    table is solved (:func:`build_library`).

    Returns:
        summary numbers: ``phase_coverage_<nm>nm`` and ``mean_abs_t_<nm>nm`` per wavelength,
        ``convergence_{median,max}_{dphase_rad,damp}``, ``seconds``, ``reused_shipped_table`` (0/1).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = library_settings(cfg.metaatoms, cfg.optics.wavelengths_m)
    reused = not needs_rebuild(settings)
    if reused:
        log.info("meta-atom settings equal the shipped table's: reusing %s", default_library_path())
        lib = MetaAtomLibrary.default()
        stored = read_json(default_report_path())
        report = dict(stored["convergence"], reused_from=str(default_library_path()))
    else:
        log.info("meta-atom settings differ from the shipped table's: solving a fresh table")
        lib, report = build_library(cfg.metaatoms, cfg.optics.wavelengths_m, device=device)
    lib = lib.with_resonances_excluded(cfg.metaatoms.resonance_factor)
    lib.save(out_dir / "library.npz")
    seconds = time.perf_counter() - t0
    summary = _summary(lib, report, seconds, reused)
    for j, wl in enumerate(lib.wavelengths_m):
        nm = f"{wl * 1e9:.0f}nm"
        summary[f"excluded_radii_{nm}"] = int(lib.excluded[j].sum())
        log.info("meta-atom table at %s: %d of %d radii kept out of designs (resonances, metaatoms.resonance_factor "
                 "%s): %s nm", nm, int(lib.excluded[j].sum()), lib.radii_m.size, cfg.metaatoms.resonance_factor,
                 np.round(lib.radii_m[lib.excluded[j]] * 1e9, 1).tolist())
    write_json(out_dir / "convergence.json", {"settings": lib.settings, "convergence": report, "summary": summary})
    plot_library(lib, out_dir / "library.png")
    return summary


def write_default_table(out_dir: str | Path | None = None) -> Path:
    """Solve the table at the schema-default settings and write ``metaatoms_default.{npz,json}``.

    Regenerates the shipped package data (``python -m dko.optics.metaatoms --write-default``); the JSON
    holds the settings, the convergence report and the summary numbers.
    """
    from dko.config import config_from_dict

    cfg = config_from_dict({}, check_paths=False)
    target = Path(out_dir) if out_dir is not None else default_library_path().parent
    t0 = time.perf_counter()
    lib, report = build_library(cfg.metaatoms, cfg.optics.wavelengths_m)
    summary = _summary(lib, report, time.perf_counter() - t0, False)
    lib.save(target / f"{_DEFAULT_NAME}.npz")
    write_json(target / f"{_DEFAULT_NAME}.json", {"settings": lib.settings, "convergence": report, "summary": summary})
    return target / f"{_DEFAULT_NAME}.npz"


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin CLI
    """``python -m dko.optics.metaatoms --write-default [DIR]``: regenerate the shipped table."""
    import argparse

    parser = argparse.ArgumentParser(description="DKO meta-atom library tools")
    parser.add_argument("--write-default", nargs="?", const="", metavar="DIR",
                        help="solve the table at the default settings into DIR (default: the package data folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.write_default is not None:
        path = write_default_table(args.write_default or None)
        lib = MetaAtomLibrary.load(path)
        for wl in lib.wavelengths_m:
            print(f"{wl * 1e9:.0f} nm: phase coverage {lib.phase_coverage(wl):.3f} x 2pi, mean |t| "
                  f"{lib.mean_amplitude(wl):.3f}")
    else:
        parser.print_help()


if __name__ == "__main__":  # pragma: no cover
    main()
