"""The optical front end shared by DKO (stage 2) and the E2E baseline: design variables -> PSFs -> conv1.

Everything that both methods must do *identically* lives here, so that their comparison is fair:

* Design parametrisations (``dko.parametrization``), the meaning of the design variable ``p`` (E, N, N):
  ``phase`` (default) - the target phase of each superpixel in radians, periodic; the pillar radius is the
  meta-atom library's reverse lookup of that phase (:meth:`MetaAtomLibrary.radius_for_phase`) and the
  transmission is the realised one, with a straight-through gradient (:meth:`MetaAtomLibrary.transmission_for_phase`).
  ``radius`` - a logit: ``r = r_min + (r_max - r_min) sigmoid(p)``, transmission ``t(r, lambda)`` by the
  differentiable interpolant. Measured (8 elements, NA 0.36, 1500 steps): the radius parametrisation cannot
  wrap a superpixel's phase through 2 pi (sigmoid ends) and keeps ~40-50 % of the light in the kernel window
  where the phase parametrisation keeps ~90 % at a lower shape error.
* :func:`initial_designs` - the initialisation: a hyperbolic lens focused on the sensor (its wrapped phase, or
  the library's reverse lookup of it for ``radius``), plus Gaussian noise on the design variable.
* :func:`element_psfs` - the PSF model: design ``p`` (E, N, N) -> complex transmission at the element's
  wavelength (:func:`design_transmission`) -> band-limited ASM PSF on the sensor
  (:func:`dko.optics.psf.psf_from_transmission`), for every object distance: (D, E, P, P), in units of the
  incident power, and the transmitted efficiency (D, E). Differentiable in ``p``.
* :func:`design_radius` / :func:`radius_psfs` - the realised pillar radii of a design and their PSFs (the
  physics of the fabricated array; for ``phase`` identical to :func:`element_psfs`'s forward values).
* :class:`FrontEnd` / :func:`save_frontend` / :func:`load_frontend` - the ``frontend.npz`` file: the
  realised design (radius maps, PSFs per distance, gains, bias, wavelengths, layout, geometry).
* :func:`calibrate_gains` - the electronic gains applied to the realised PSFs.
* :class:`OptoFront` / :func:`build_opto_predictor` - a :class:`dko.depth.model.DepthNet` whose
  normalisation + conv1 is replaced by the opto-electronic layer (:class:`dko.opto_layer.OptoConv1`),
  registered as the predictors ``dko``, ``dko_noisy`` and ``dko_layered`` (any DepthNet checkpoint + any
  ``frontend.npz``, so the E2E variants register theirs with the same builder).

Gain calibration (``dko.gain_calibration``): the kernel bank's gain ``g = sum(W+-)`` assumes a PSF that sums
to 1. A realised PSF sums to its efficiency ``eta`` over the simulated window, and only part of that lands in
the k x k kernel window. ``total`` (default) uses ``g / sum(PSF over the whole P x P window)``: the
response to a uniform scene (the DC gain, which the folded bias relies on) is exactly the electronic one.
``window`` uses ``g / sum(PSF over k x k)``: inside the kernel window the realised kernel then equals the
target up to its shape error (this is how :func:`dko.dko.fidelity_metrics` defines the error), and the light
outside adds to it. ``none`` keeps ``g`` (an uncalibrated system: the efficiency scales every feature).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dko.io import atomic_path
from dko.opto_layer import KernelBank, OptoConv1
from dko.optics.psf import (OpticalSystem, ideal_lens_phase, is_infinite_distance, per_element_wavelength,
                            psf_from_transmission, transmission_for_elements, wrap_phase)

__all__ = ["FRONTEND_FORMAT", "PARAMETRIZATIONS", "FrontEnd", "initial_designs", "element_psfs", "design_radius",
           "design_transmission", "radius_psfs", "subset_bank", "calibrate_gains",
           "array_layout", "save_frontend", "load_frontend", "OptoFront", "build_opto_predictor",
           "distances_to_array", "distances_from_array"]

log = logging.getLogger(__name__)
FRONTEND_FORMAT = "dko.frontend/1"
GAIN_CALIBRATIONS = ("total", "window", "none")
PARAMETRIZATIONS = ("phase", "radius")


def _check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"dko.parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")


def design_radius(p: torch.Tensor, bank: KernelBank, library, parametrization: str = "phase") -> torch.Tensor:
    """Pillar radii (float64 (E, N, N), metres) realising the design variables ``p`` (E, N, N) of ``bank``'s
    elements (each at its wavelength). Not differentiable for ``phase`` (a lookup)."""
    _check_parametrization(parametrization)
    if parametrization == "radius":
        return library.radius_from_design(p.double())
    return per_element_wavelength(library.radius_for_phase, p.detach(), bank.wavelength_m)


def design_transmission(p: torch.Tensor, bank: KernelBank, library, parametrization: str = "phase") -> torch.Tensor:
    """Complex (E, N, N) transmission of the design variables ``p`` (E, N, N), differentiable in ``p``."""
    _check_parametrization(parametrization)
    if parametrization == "radius":
        return transmission_for_elements(library, library.radius_from_design(p), bank.wavelength_m)
    return per_element_wavelength(library.transmission_for_phase, p, bank.wavelength_m)


# ----------------------------------------------------------------------------- designs -> PSFs
def initial_designs(bank: KernelBank, system: OpticalSystem, library, *, noise_std: float, seed: int,
                    focus_distance_m: float | None = None, parametrization: str = "phase") -> torch.Tensor:
    """Focusing-lens initialisation of every element, plus noise.

    Element e gets the hyperbolic lens (:func:`dko.optics.psf.ideal_lens_phase`) at its wavelength that
    images a point at ``focus_distance_m`` (None = infinity) onto the sensor: its wrapped phase
    (``phase`` parametrisation; the realised radii are the library's reverse lookup of it) or, for
    ``radius``, the design variable of the radius whose transmission is closest to ``exp(i phase)``; then
    ``noise_std * N(0, 1)`` is added to the design variable (seeded; radians for ``phase``).

    Args:
        bank: the elements (only ``wavelength_m`` (E,) is used).
        system: optics geometry (N = ``system.n_superpixels``).
        library: :class:`dko.optics.metaatoms.MetaAtomLibrary`.
        noise_std: standard deviation of the noise on the design variable (radians or logit radius).
        seed: seed of the noise.
        focus_distance_m: object distance the lens is focused at (None = infinity).
        parametrization: ``phase`` or ``radius`` (see the module docstring).
    Returns:
        float32 (E, N, N) design variables ``p`` on the bank's device.
    """
    _check_parametrization(parametrization)
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"dko.init_noise_std must be >= 0, got {noise_std!r}")
    device = bank.targets.device
    wls = [float(w) for w in bank.wavelength_m.detach().cpu().tolist()]
    if not wls:
        raise ValueError("the kernel bank has no element")
    designs = []
    lens = {}
    for wl in wls:
        if wl not in lens:
            phase = wrap_phase(ideal_lens_phase(system, wl, focus_distance_m))
            lens[wl] = (phase if parametrization == "phase" else library.design_for_phase(phase, wl)).to(torch.float32)
        designs.append(lens[wl])
    p = torch.stack(designs)
    if noise_std > 0:
        g = torch.Generator().manual_seed(int(seed))
        p = p + noise_std * torch.randn(p.shape, generator=g, dtype=torch.float32)
    return p.to(device)


def element_psfs(p: torch.Tensor, bank: KernelBank, system: OpticalSystem, library,
                 object_distances_m: Sequence[float | None], parametrization: str = "phase"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """PSFs of design variables ``p`` at every object distance (the one PSF model of DKO and E2E).

    Args:
        p: float (E, N, N) design variables (see ``parametrization``), differentiable.
        bank: the E elements (their ``wavelength_m`` is used; element e is simulated at its wavelength).
        system: optics geometry and numerics.
        library: meta-atom library.
        object_distances_m: D point-source distances, metres (None / inf = infinity).
        parametrization: ``phase`` or ``radius`` (module docstring).
    Returns:
        ``psfs`` real (D, E, P, P) (P = ``system.psf_size_px``, ``system.real_dtype``) in units of the incident
        power, and ``efficiency`` (D, E): transmitted fraction over the whole simulated sensor plane.
    """
    if p.ndim != 3 or p.shape[0] != bank.n_elements:
        raise ValueError(f"p must have shape (E={bank.n_elements}, N, N), got {tuple(p.shape)}")
    return _psfs_of_transmission(design_transmission(p, bank, library, parametrization), bank, system,
                                 object_distances_m)


def radius_psfs(radius_m: torch.Tensor, bank: KernelBank, system: OpticalSystem, library,
                object_distances_m: Sequence[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`element_psfs` of realised pillar radii (E, N, N) metres: the PSFs of the fabricated array."""
    if radius_m.ndim != 3 or radius_m.shape[0] != bank.n_elements:
        raise ValueError(f"radius_m must have shape (E={bank.n_elements}, N, N), got {tuple(radius_m.shape)}")
    return _psfs_of_transmission(transmission_for_elements(library, radius_m, bank.wavelength_m), bank, system,
                                 object_distances_m)


def _psfs_of_transmission(t: torch.Tensor, bank: KernelBank, system: OpticalSystem,
                          object_distances_m: Sequence[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(object_distances_m) == 0:
        raise ValueError("object_distances_m must list at least one distance")
    psfs, effs = [], []
    for z in object_distances_m:
        psf, eff = psf_from_transmission(t, bank.wavelength_m, system, z, return_efficiency=True)
        psfs.append(psf)
        effs.append(eff)
    return torch.stack(psfs), torch.stack(effs)


def subset_bank(bank: KernelBank, index: torch.Tensor | Sequence[int]) -> KernelBank:
    """The elements ``index`` of ``bank`` (same conv geometry, bias and channel counts)."""
    idx = torch.as_tensor(index, dtype=torch.long, device=bank.targets.device).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bank.n_elements):
        raise ValueError(f"element index out of range for a bank of {bank.n_elements} elements")
    return KernelBank(targets=bank.targets[idx], gains=bank.gains[idx], sign=bank.sign[idx],
                      out_channel=bank.out_channel[idx], in_channel=bank.in_channel[idx],
                      wavelength_m=bank.wavelength_m[idx], bias=bank.bias, pad_value=bank.pad_value,
                      stride=bank.stride, padding=bank.padding, n_out=bank.n_out, n_in=bank.n_in)


def calibrate_gains(psf: torch.Tensor, kernel_gains: torch.Tensor, kernel_size: int, mode: str = "total") -> torch.Tensor:
    """Electronic gains for realised PSFs (see the module docstring).

    Args:
        psf: (E, P, P) realised PSFs (P odd >= k), units of the incident power.
        kernel_gains: (E,) gains ``g = sum(W+-)`` of the kernel bank.
        kernel_size: k.
        mode: ``total`` (g / PSF sum), ``window`` (g / PSF sum in k x k) or ``none`` (g).
    Returns:
        (E,) gains, dtype of ``kernel_gains``.
    """
    from dko.dko import center_window

    if mode not in GAIN_CALIBRATIONS:
        raise ValueError(f"dko.gain_calibration must be one of {GAIN_CALIBRATIONS}, got {mode!r}")
    if mode == "none":
        return kernel_gains.clone()
    region = psf if mode == "total" else center_window(psf, kernel_size)
    s = region.sum(dim=(-2, -1)).to(kernel_gains.dtype)
    if torch.any(s <= 0):
        bad = torch.nonzero(s <= 0).flatten().tolist()
        raise ValueError(f"elements {bad[:10]} put no light in the {mode} window: cannot calibrate their gains")
    return kernel_gains / s


def array_layout(bank: KernelBank, pitch_m: float) -> np.ndarray:
    """Element centres on the array, float64 (E, 2) (x, y) metres, centred on the origin.

    Column = output channel k (left to right), row = (input channel c, sign): rows ``2c`` (positive part)
    and ``2c + 1`` (negative part), top to bottom, so the elements behind one colour filter form a band of
    two rows. Every (k, c, sign) has its slot; a dropped (all-zero) part leaves its slot empty.
    """
    if not (pitch_m > 0 and math.isfinite(pitch_m)):
        raise ValueError(f"dko.element_pitch_m must be positive, got {pitch_m!r}")
    cols = bank.out_channel.detach().cpu().numpy().astype(np.float64)
    rows = 2 * bank.in_channel.detach().cpu().numpy() + (bank.sign.detach().cpu().numpy() < 0)
    n_cols, n_rows = bank.n_out, 2 * bank.n_in
    x = (cols - (n_cols - 1) / 2) * pitch_m
    y = ((n_rows - 1) / 2 - rows) * pitch_m
    return np.stack([x, y], axis=1)


# ----------------------------------------------------------------------------- the file
def distances_to_array(distances_m: Sequence[float | None]) -> np.ndarray:
    """Object distances -> float64 array (None / infinity -> inf)."""
    return np.array([math.inf if is_infinite_distance(z) else float(z) for z in distances_m], dtype=np.float64)


def distances_from_array(values: np.ndarray) -> list[float | None]:
    """float array (inf = infinity) -> list with None for infinity (the config's convention)."""
    return [None if math.isinf(float(z)) else float(z) for z in np.asarray(values).reshape(-1)]


@dataclass
class FrontEnd:
    """A realised opto-electronic conv1 (the content of ``frontend.npz``; E elements, D distances).

    Attributes:
        radius_m: float32 (E, N, N) pillar radius of every superpixel, metres (row = y, top = largest y).
        psfs: float32 (D, E, P, P) realised PSFs (orientation of the targets), units of the incident power.
        object_distances_m: float64 (D,) distances of ``psfs``, metres (inf = infinity); index 0 is the
            distance used when no depth map is given (the design distance).
        efficiency: float32 (D, E) transmitted fraction over the simulated sensor plane.
        gains: float32 (E,) electronic gains applied to the sensor images (after calibration).
        kernel_gains: float32 (E,) gains of the kernel bank, ``sum(W+-)``.
        targets: float32 (E, k, k) target PSFs (sum 1, rotated 180 deg).
        sign, out_channel, in_channel, wavelength_m: per element (float32 +-1, int64, int64, float64 metres).
        bias: float32 (K,) folded bias; pad_value: float32 (C,) raw padding value.
        stride, padding, n_out, n_in: conv geometry.
        element_centers_m: float64 (E, 2) (x, y) of each element on the array, metres.
        superpixel_m, n_superpixels, sensor_distance_m, pixel_pitch_m, aperture: optics geometry.
        info: JSON-serialisable extras (method, config hash, shard budgets summary, ...).
    """

    radius_m: np.ndarray
    psfs: np.ndarray
    object_distances_m: np.ndarray
    efficiency: np.ndarray
    gains: np.ndarray
    kernel_gains: np.ndarray
    targets: np.ndarray
    sign: np.ndarray
    out_channel: np.ndarray
    in_channel: np.ndarray
    wavelength_m: np.ndarray
    bias: np.ndarray
    pad_value: np.ndarray
    stride: int
    padding: int
    n_out: int
    n_in: int
    element_centers_m: np.ndarray
    superpixel_m: float
    n_superpixels: int
    sensor_distance_m: float
    pixel_pitch_m: float
    aperture: str
    info: dict = field(default_factory=dict)

    @property
    def n_elements(self) -> int:
        return int(self.targets.shape[0])

    @property
    def kernel_size(self) -> int:
        return int(self.targets.shape[-1])

    @property
    def distances(self) -> list[float | None]:
        """Object distances as config values (None = infinity)."""
        return distances_from_array(self.object_distances_m)

    def bank(self, device: Any = "cpu", *, calibrated: bool = True) -> KernelBank:
        """The :class:`KernelBank` of the elements, float32 (gains = calibrated ``gains`` or ``kernel_gains``)."""
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        return KernelBank(targets=f32(self.targets), gains=f32(self.gains if calibrated else self.kernel_gains),
                          sign=f32(self.sign), out_channel=torch.as_tensor(self.out_channel, dtype=torch.long, device=device),
                          in_channel=torch.as_tensor(self.in_channel, dtype=torch.long, device=device),
                          wavelength_m=torch.as_tensor(self.wavelength_m, dtype=torch.float64, device=device),
                          bias=f32(self.bias), pad_value=f32(self.pad_value), stride=int(self.stride),
                          padding=int(self.padding), n_out=int(self.n_out), n_in=int(self.n_in))

    def opto_layer(self, sensor=None, device: Any = "cpu") -> OptoConv1:
        """:class:`OptoConv1` with the realised PSFs at every stored distance and the calibrated gains."""
        psfs = torch.as_tensor(self.psfs, dtype=torch.float32, device=device)
        return OptoConv1(self.bank(device), psfs, self.distances, sensor=sensor).to(device)


_ARRAY_FIELDS = ("radius_m", "psfs", "object_distances_m", "efficiency", "gains", "kernel_gains", "targets", "sign",
                 "out_channel", "in_channel", "wavelength_m", "bias", "pad_value", "element_centers_m")
_INT_FIELDS = ("stride", "padding", "n_out", "n_in", "n_superpixels")
_FLOAT_FIELDS = ("superpixel_m", "sensor_distance_m", "pixel_pitch_m")
_DTYPES = {"radius_m": np.float32, "psfs": np.float32, "object_distances_m": np.float64, "efficiency": np.float32,
           "gains": np.float32, "kernel_gains": np.float32, "targets": np.float32, "sign": np.float32,
           "out_channel": np.int64, "in_channel": np.int64, "wavelength_m": np.float64, "bias": np.float32,
           "pad_value": np.float32, "element_centers_m": np.float64}


def _np(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _validate(fe: FrontEnd, where: str) -> None:
    e, k = fe.n_elements, fe.kernel_size
    d = fe.object_distances_m.shape[0]
    n = fe.n_superpixels
    checks = {
        "radius_m": (e, n, n), "efficiency": (d, e), "gains": (e,), "kernel_gains": (e,), "sign": (e,),
        "out_channel": (e,), "in_channel": (e,), "wavelength_m": (e,), "bias": (fe.n_out,), "pad_value": (fe.n_in,),
        "element_centers_m": (e, 2),
    }
    for name, shape in checks.items():
        if tuple(getattr(fe, name).shape) != shape:
            raise ValueError(f"{where}: '{name}' has shape {tuple(getattr(fe, name).shape)}, expected {shape}")
    if fe.psfs.ndim != 4 or fe.psfs.shape[:2] != (d, e) or fe.psfs.shape[-1] != fe.psfs.shape[-2] \
            or fe.psfs.shape[-1] % 2 == 0 or fe.psfs.shape[-1] < k:
        raise ValueError(f"{where}: 'psfs' has shape {fe.psfs.shape}, expected ({d}, {e}, P, P) with P odd >= {k}")
    for name in ("radius_m", "psfs", "efficiency", "gains", "targets", "bias"):
        if not np.all(np.isfinite(getattr(fe, name))):
            raise ValueError(f"{where}: '{name}' contains non-finite values")


def save_frontend(path: str | Path, *, radius_m, psfs, object_distances_m, efficiency, gains, kernel_gains,
                  bank: KernelBank, element_centers_m, system: OpticalSystem, info: dict | None = None) -> FrontEnd:
    """Write ``frontend.npz`` atomically (no pickle) and return the :class:`FrontEnd`.

    Args:
        path: output ``.npz``.
        radius_m: (E, N, N) radii, metres. psfs: (D, E, P, P). object_distances_m: D distances (None = inf).
        efficiency: (D, E). gains: (E,) applied gains. kernel_gains: (E,) bank gains.
        bank: the kernel bank (targets, signs, channels, wavelengths, bias, padding, conv geometry).
        element_centers_m: (E, 2) layout, metres. system: optics geometry. info: JSON-serialisable extras.
    """
    fe = FrontEnd(
        radius_m=_np(radius_m, np.float32), psfs=_np(psfs, np.float32),
        object_distances_m=distances_to_array(object_distances_m) if not isinstance(object_distances_m, np.ndarray)
        else object_distances_m.astype(np.float64),
        efficiency=_np(efficiency, np.float32), gains=_np(gains, np.float32), kernel_gains=_np(kernel_gains, np.float32),
        targets=_np(bank.targets, np.float32), sign=_np(bank.sign, np.float32), out_channel=_np(bank.out_channel, np.int64),
        in_channel=_np(bank.in_channel, np.int64), wavelength_m=_np(bank.wavelength_m, np.float64),
        bias=_np(bank.bias, np.float32), pad_value=_np(bank.pad_value, np.float32), stride=int(bank.stride),
        padding=int(bank.padding), n_out=int(bank.n_out), n_in=int(bank.n_in),
        element_centers_m=_np(element_centers_m, np.float64), superpixel_m=float(system.superpixel_m),
        n_superpixels=int(system.n_superpixels), sensor_distance_m=float(system.sensor_distance_m),
        pixel_pitch_m=float(system.pixel_pitch_m), aperture=str(system.aperture), info=dict(info or {}))
    _validate(fe, f"frontend '{path}'")
    arrays = {name: getattr(fe, name) for name in _ARRAY_FIELDS}
    arrays.update({name: np.array(int(getattr(fe, name))) for name in _INT_FIELDS})
    arrays.update({name: np.array(float(getattr(fe, name))) for name in _FLOAT_FIELDS})
    arrays["aperture"] = np.array(fe.aperture)
    arrays["info_json"] = np.array(json.dumps(fe.info, sort_keys=True, default=str))
    arrays["format"] = np.array(FRONTEND_FORMAT)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return fe


def load_frontend(path: str | Path) -> FrontEnd:
    """Read a file written by :func:`save_frontend` (ValueError naming the file on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"front-end file '{path}' does not exist (run assemble_frontend / train_e2e)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data or str(data["format"]) != FRONTEND_FORMAT:
                raise ValueError(f"front-end file '{path}' is not a {FRONTEND_FORMAT} file")
            missing = [k for k in (*_ARRAY_FIELDS, *_INT_FIELDS, *_FLOAT_FIELDS, "aperture", "info_json") if k not in data]
            if missing:
                raise ValueError(f"front-end file '{path}' lacks {missing}")
            kwargs = {name: np.asarray(data[name], dtype=_DTYPES[name]) for name in _ARRAY_FIELDS}
            kwargs.update({name: int(data[name]) for name in _INT_FIELDS})
            kwargs.update({name: float(data[name]) for name in _FLOAT_FIELDS})
            kwargs["aperture"] = str(data["aperture"])
            kwargs["info"] = json.loads(str(data["info_json"]))
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"front-end file '{path}' cannot be read: {exc}") from exc
    fe = FrontEnd(**kwargs)
    _validate(fe, f"front-end file '{path}'")
    return fe


# ----------------------------------------------------------------------------- the network front
class OptoFront(nn.Module):
    """Replaces a DepthNet's normalisation + conv1 (``DepthNet.front``) by an :class:`OptoConv1`.

    Args:
        layer: the opto-electronic conv1.
        noise: add sensor noise (``layer.sensor``) with a seeded generator.
        layered: depth-layered image formation; set :attr:`depth_m` (B, H, W) before each forward.
        seed: seed of the noise generator (reset by :meth:`reset_noise`).
    """

    def __init__(self, layer: OptoConv1, *, noise: bool = False, layered: bool = False, seed: int = 0):
        super().__init__()
        if noise and layer.sensor is None:
            raise ValueError("noise=True needs a sensor model on the opto layer")
        self.layer = layer
        self.noise = bool(noise)
        self.layered = bool(layered)
        self.seed = int(seed)
        self.depth_m: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.reset_noise()

    def reset_noise(self) -> None:
        dev = self.layer.psfs.device
        self.generator = torch.Generator(device=dev).manual_seed(self.seed) if self.noise else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        depth = None
        if self.layered:
            if self.depth_m is None:
                raise ValueError("depth-layered image formation needs OptoFront.depth_m (B, H, W) set before forward")
            depth = self.depth_m.to(images.device)
        if depth is not None and not self.noise and self.layer.psfs.shape[0] > 1:
            return self._layered_fused(images, depth)
        # without noise or depth layers the layer is linear: one dense conv (same result, faster)
        return self.layer(images, depth, noise=self.noise, generator=self.generator,
                          fused=not self.noise and not self.layered)

    def _layered_fused(self, images: torch.Tensor, depth_m: torch.Tensor) -> torch.Tensor:
        """Noise-free depth-layered forward as one dense conv per depth layer (the layer is linear without
        noise): the same image formation as :meth:`OptoConv1.sensor_images` + :meth:`OptoConv1.combine`."""
        import torch.nn.functional as F

        from dko.opto_layer import nearest_distance_index

        layer = self.layer
        b, _, h, w = images.shape
        if depth_m.shape != (b, h, w):
            raise ValueError(f"depth_m must be (B, H, W) = {(b, h, w)}, got {tuple(depth_m.shape)}")
        pads = layer._pads(h, w)
        if min(pads) < 0:
            raise ValueError("depth-layered forward needs a PSF window of at least the kernel size")
        xp = layer._pad_raw(images)
        dp = F.pad(depth_m[:, None].to(torch.float64), pads, mode="replicate")[:, 0]
        index = nearest_distance_index(dp, layer.object_distances_m)
        out = None
        for d in range(layer.psfs.shape[0]):
            mask = (index == d)
            if not bool(mask.any()):
                continue
            y = F.conv2d(xp * mask[:, None].to(xp.dtype), layer.effective_weight(d), stride=layer.stride)
            out = y if out is None else out + y
        return out + layer.bias[None, :, None, None]


class _FeatureStats:
    """Accumulates conv1 feature fidelity and depth agreement with the electronic teacher."""

    def __init__(self):
        self.diff2 = self.ref2 = 0.0
        self.abs_rel_sum = self.delta1_sum = 0.0
        self.n_px = 0

    def result(self) -> dict:
        if self.n_px == 0:
            return {}
        return {"conv1_feature_rel_l2": math.sqrt(self.diff2 / max(self.ref2, 1e-300)),
                "teacher_abs_rel": self.abs_rel_sum / self.n_px, "teacher_delta1": self.delta1_sum / self.n_px}


class OptoPredictor:
    """Predictor (uint8 images (B, H, W, 3) [, depth (B, H, W)] -> depth (B, H, W) metres) of a DepthNet
    with an :class:`OptoFront`; with a teacher it also accumulates :meth:`extra_metrics`."""

    def __init__(self, model, front: OptoFront, device: Any = "cpu", teacher=None):
        self.model = model.to(device).eval()
        self.model.front = front.to(device)
        self.front = front
        self.device = device
        self.teacher = teacher.to(device).eval() if teacher is not None else None
        self.needs_depth = front.layered
        self.stats = _FeatureStats()
        self._collect = True

    def __call__(self, images: np.ndarray, depth_m: np.ndarray | None = None) -> np.ndarray:
        from dko.data.format import batch_to_tensors

        img, _ = batch_to_tensors(np.array(images), np.zeros(np.asarray(images).shape[:3], np.float32))
        img = img.to(self.device)
        if self.front.layered:
            if depth_m is None:
                raise ValueError("the depth-layered predictor needs the ground-truth depth of the images")
            d = torch.as_tensor(np.asarray(depth_m, dtype=np.float32), device=self.device)
            # invalid (0) / out-of-range depth: the far end of the range (sky)
            d = torch.where(d > 0, d, torch.full_like(d, float(self.model.max_depth_m)))
            self.front.depth_m = d
        with torch.no_grad():
            depth = self.model.predict_depth(img)
            if self.teacher is not None and self._collect:
                # with noise this is a fresh draw, statistically the same as the one behind ``depth``
                feat = self.model.conv1_features(img)
                ref = self.teacher.conv1_features(img)
                self.stats.diff2 += float((feat.double() - ref.double()).square().sum())
                self.stats.ref2 += float(ref.double().square().sum())
                t_depth = self.teacher.predict_depth(img).double()
                rel = (depth.double() - t_depth).abs() / t_depth
                self.stats.abs_rel_sum += float(rel.sum())
                ratio = torch.maximum(depth.double() / t_depth, t_depth / depth.double())
                self.stats.delta1_sum += float((ratio < 1.25).double().sum())
                self.stats.n_px += int(t_depth.numel())
        return depth[:, 0].float().cpu().numpy()

    def extra_metrics(self) -> dict:
        """conv1 feature rel. L2 (vs the teacher's conv1 on the same images, over all evaluated images) and
        depth agreement with the teacher (AbsRel and delta<1.25 of this model's depth vs the teacher's, all pixels)."""
        self._collect = False
        return self.stats.result()


def build_opto_predictor(ctx, *, noise: bool, layered: bool) -> OptoPredictor:
    """Predictor of ``ctx.inputs["model"]`` (a DepthNet checkpoint) with conv1 replaced by the front end in
    ``ctx.inputs["frontend"]`` (frontend.npz); sensor noise from ``ctx.cfg.sensor`` when ``noise``; depth-layered
    image formation when ``layered``. With ``ctx.inputs["teacher"]`` (the electronic stage-1 model) it also
    reports conv1 feature fidelity and depth agreement with the teacher (:meth:`OptoPredictor.extra_metrics`)."""
    from dko.depth.checkpoint import load_depthnet
    from dko.optics.sensor import SensorModel

    for key in ("model", "frontend"):
        if key not in ctx.inputs:
            raise ValueError(f"an opto-electronic model needs the input '{key}' (got {sorted(ctx.inputs)})")
    model, _ = load_depthnet(ctx.inputs["model"], ctx.device)
    fe = load_frontend(ctx.inputs["frontend"])
    conv = model.conv1
    if (fe.n_out, fe.n_in, fe.kernel_size) != (conv.out_channels, conv.in_channels, conv.kernel_size[0]) \
            or (fe.stride, fe.padding) != (conv.stride[0], conv.padding[0]):
        raise ValueError(f"front end '{ctx.inputs['frontend']}' ({fe.n_out}x{fe.n_in}x{fe.kernel_size}, stride {fe.stride}) "
                         f"does not fit conv1 of '{ctx.inputs['model']}' ({conv.out_channels}x{conv.in_channels}x"
                         f"{conv.kernel_size[0]}, stride {conv.stride[0]})")
    if layered and fe.psfs.shape[0] < 2:
        log.warning("depth-layered evaluation with PSFs at a single object distance: identical to noise-free")
    sensor = SensorModel.from_config(ctx.cfg.sensor) if noise else None
    front = OptoFront(fe.opto_layer(sensor, ctx.device), noise=noise, layered=layered, seed=int(ctx.cfg.seed))
    teacher = None
    if "teacher" in ctx.inputs:
        teacher, _ = load_depthnet(ctx.inputs["teacher"], ctx.device)
    return OptoPredictor(model, front, ctx.device, teacher)


def _register() -> None:
    from dko.depth.evaluate import register_predictor

    for name, noise, layered in (("dko", False, False), ("dko_noisy", True, False), ("dko_layered", False, True)):
        register_predictor(name)(lambda ctx, _n=noise, _l=layered: build_opto_predictor(ctx, noise=_n, layered=_l))


_register()
