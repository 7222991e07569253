"""The ``frontend.npz`` file: a realised opto-electronic conv1 (DKO's ``dko/frontend.npz``, E2E's
``e2e/<variant>/frontend.npz``).

A :class:`FrontEnd` holds the :class:`~dko.frontend.bank.KernelBank` of its elements (with the bank's
uncalibrated gains ``sum(W+-)``), the :class:`~dko.optics.psf.OpticalSystem` geometry, and what was realised:
the pillar radii, the PSFs at every stored object distance, their efficiencies, the calibrated gains and the
element layout. On disk (``np.savez``, no pickle; format :data:`FRONTEND_FORMAT`) every field is a key of its
own (:data:`_DTYPES`): the bank as ``targets``, ``kernel_gains``, ``sign``, ``out_channel``, ``in_channel``,
``wavelength_m``, ``bias``, ``pad_value``, ``stride``, ``padding``, ``n_out``, ``n_in``; the system as
``superpixel_m``, ``n_superpixels``, ``sensor_distance_m``, ``pixel_pitch_m``, ``aperture``; then ``radius_m``,
``psfs``, ``object_distances_m``, ``efficiency``, ``gains``, ``element_centers_m``, ``info_json`` and ``format``;
optionally ``flat_field`` (bool; absent = false) and ``flat_field_max_gain`` (float; absent = no cap).

``psfs`` is (D, E, P, P) (one PSF per element and object distance: the cheap model's shift-invariant front end)
or (D, Fy, Fx, E, P, P) on a field grid (the faithful front end of rule ``faithful_frontend``,
:func:`dko.frontend.faithful.faithful_frontend`: spatially varying image formation, :class:`OptoConv1`).

The file stores the system's geometry, not its simulation numerics: a loaded :attr:`FrontEnd.system` has
``psf_size_px`` = the stored PSFs' window, ``oversample`` 1, complex64, and ``pad_factor`` 2 (raised just
enough to hold that window when 2 is too small).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dko.frontend.bank import KernelBank
from dko.frontend.layer import OptoConv1, centre_node
from dko.io import atomic_path, check_format
from dko.optics.psf import OpticalSystem, is_infinite_distance

__all__ = ["FRONTEND_FORMAT", "FrontEnd", "save_frontend", "load_frontend", "distances_to_array",
           "distances_from_array"]

FRONTEND_FORMAT = "dko.frontend/1"
_DEFAULT_PAD_FACTOR = 2.0


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
        bank: the elements on the CPU (targets float32 (E, k, k), gains float32 (E,) = the kernel bank's gains
            ``sum(W+-)`` before calibration, sign float32, out/in channel int64, wavelength_m float64, bias
            float32 (K,), pad_value float32 (C,), conv geometry).
        system: the optics geometry (superpixel, N, sensor distance, pixel pitch, aperture; see the module
            docstring for the numerics of a loaded one).
        radius_m: float32 (E, N, N) pillar radius of every superpixel, metres (row = y, top = largest y).
        psfs: float32 (D, E, P, P) realised PSFs (orientation of the targets), units of the incident power; or
            (D, Fy, Fx, E, P, P) on a field grid (spatially varying, :class:`OptoConv1`).
        object_distances_m: float64 (D,) distances of ``psfs``, metres (inf = infinity); index 0 is the
            distance used when no depth map is given (the design distance).
        efficiency: float32 (D, E) transmitted fraction over the simulated sensor plane.
        gains: float32 (E,) electronic gains applied to the sensor images (after calibration).
        element_centers_m: float64 (E, 2) (x, y) of each element on the array, metres.
        info: JSON-serialisable extras (method, config hash, shard budgets summary, ...).
        flat_field: the electronics apply the flat-field correction of :class:`OptoConv1` (a field grid only).
        flat_field_max_gain: the cap of that correction's gain (None = no cap).
    """

    bank: KernelBank
    system: OpticalSystem
    radius_m: np.ndarray
    psfs: np.ndarray
    object_distances_m: np.ndarray
    efficiency: np.ndarray
    gains: np.ndarray
    element_centers_m: np.ndarray
    info: dict = field(default_factory=dict)
    flat_field: bool = False
    flat_field_max_gain: float | None = None

    @property
    def field_grid(self) -> tuple[int, int]:
        """(Fy, Fx) of the PSF field grid; (1, 1) for a shift-invariant front end."""
        return (int(self.psfs.shape[1]), int(self.psfs.shape[2])) if self.psfs.ndim == 6 else (1, 1)

    @property
    def centre_psfs(self) -> np.ndarray:
        """(D, E, P, P): the PSFs, at the field grid's centre node (the mean of the middle ones for an even grid)."""
        return self.psfs if self.psfs.ndim == 4 else centre_node(self.psfs)

    @property
    def n_elements(self) -> int:
        return self.bank.n_elements

    @property
    def kernel_size(self) -> int:
        return self.bank.kernel_size

    @property
    def distances(self) -> list[float | None]:
        """Object distances as config values (None = infinity)."""
        return distances_from_array(self.object_distances_m)

    def calibrated_bank(self, device: Any = "cpu") -> KernelBank:
        """:attr:`bank` on ``device`` with the calibrated :attr:`gains` (the bank the layer applies)."""
        return self.bank.replace(gains=torch.as_tensor(self.gains, dtype=torch.float32)).to(device)

    def opto_layer(self, sensor=None, device: Any = "cpu") -> OptoConv1:
        """:class:`OptoConv1` with the realised PSFs at every stored distance and the calibrated gains."""
        psfs = torch.as_tensor(self.psfs, dtype=torch.float32, device=device)
        return OptoConv1(self.calibrated_bank(device), psfs, self.distances, sensor=sensor,
                         flat_field=self.flat_field, flat_field_max_gain=self.flat_field_max_gain).to(device)


# key -> dtype on disk (and in memory); the bank's gains are stored as "kernel_gains"
_BANK_ARRAYS = {"kernel_gains": ("gains", np.float32), "targets": ("targets", np.float32),
                "sign": ("sign", np.float32), "out_channel": ("out_channel", np.int64),
                "in_channel": ("in_channel", np.int64), "wavelength_m": ("wavelength_m", np.float64),
                "bias": ("bias", np.float32), "pad_value": ("pad_value", np.float32)}
_BANK_INTS = ("stride", "padding", "n_out", "n_in")
_OWN_ARRAYS = {"radius_m": np.float32, "psfs": np.float32, "object_distances_m": np.float64,
               "efficiency": np.float32, "gains": np.float32, "element_centers_m": np.float64}
_SYSTEM_INTS = ("n_superpixels",)
_SYSTEM_FLOATS = ("superpixel_m", "sensor_distance_m", "pixel_pitch_m")
# the order of the keys in the file (as written since format 1)
_ARRAY_KEYS = ("radius_m", "psfs", "object_distances_m", "efficiency", "gains", "kernel_gains", "targets", "sign",
               "out_channel", "in_channel", "wavelength_m", "bias", "pad_value", "element_centers_m")
_INT_KEYS = (*_BANK_INTS, *_SYSTEM_INTS)
_FLOAT_KEYS = _SYSTEM_FLOATS
_DTYPES = {**_OWN_ARRAYS, **{key: dtype for key, (_, dtype) in _BANK_ARRAYS.items()}}


def _np(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _bank_from_arrays(arrays: dict, ints: dict) -> KernelBank:
    """The CPU :class:`KernelBank` of the file's bank keys (numpy arrays of :data:`_DTYPES`)."""
    values = {name: torch.from_numpy(np.array(arrays[key], dtype=dtype)) for key, (name, dtype) in _BANK_ARRAYS.items()}
    return KernelBank(**values, **{name: int(ints[name]) for name in _BANK_INTS})


def _file_bank(bank: KernelBank) -> KernelBank:
    """``bank`` as it is stored and read back: on the CPU, detached, in the file's dtypes."""
    arrays = {key: _np(getattr(bank, name), dtype) for key, (name, dtype) in _BANK_ARRAYS.items()}
    return _bank_from_arrays(arrays, {name: getattr(bank, name) for name in _BANK_INTS})


def _file_system(geometry: dict, psf_size_px: int) -> OpticalSystem:
    """The optics geometry of a file, with the numerics the module docstring describes."""
    aperture_m = geometry["n_superpixels"] * geometry["superpixel_m"]
    pad = max(_DEFAULT_PAD_FACTOR, psf_size_px * geometry["pixel_pitch_m"] / aperture_m)
    return OpticalSystem(**geometry, psf_size_px=psf_size_px, pad_factor=pad)


def _validate(fe: FrontEnd, where: str) -> None:
    bank = fe.bank
    e, k = fe.n_elements, fe.kernel_size
    d = fe.object_distances_m.shape[0]
    n = fe.system.n_superpixels
    checks = {
        "radius_m": (fe.radius_m, (e, n, n)), "efficiency": (fe.efficiency, (d, e)), "gains": (fe.gains, (e,)),
        "kernel_gains": (bank.gains, (e,)), "sign": (bank.sign, (e,)), "out_channel": (bank.out_channel, (e,)),
        "in_channel": (bank.in_channel, (e,)), "wavelength_m": (bank.wavelength_m, (e,)),
        "bias": (bank.bias, (bank.n_out,)), "pad_value": (bank.pad_value, (bank.n_in,)),
        "element_centers_m": (fe.element_centers_m, (e, 2)),
    }
    for name, (value, shape) in checks.items():
        if tuple(value.shape) != shape:
            raise ValueError(f"{where}: '{name}' has shape {tuple(value.shape)}, expected {shape}")
    lead = (fe.psfs.shape[0], fe.psfs.shape[-3]) if fe.psfs.ndim in (4, 6) else None
    if lead != (d, e) or fe.psfs.shape[-1] != fe.psfs.shape[-2] or fe.psfs.shape[-1] % 2 == 0 \
            or fe.psfs.shape[-1] < k:
        raise ValueError(f"{where}: 'psfs' has shape {fe.psfs.shape}, expected ({d}, {e}, P, P) or "
                         f"({d}, Fy, Fx, {e}, P, P) with P odd >= {k}")
    if fe.flat_field and fe.psfs.ndim != 6:
        raise ValueError(f"{where}: flat_field needs PSFs on a field grid (D, Fy, Fx, E, P, P)")
    if fe.flat_field_max_gain is not None and not (math.isfinite(fe.flat_field_max_gain) and fe.flat_field_max_gain >= 1):
        raise ValueError(f"{where}: flat_field_max_gain must be >= 1, got {fe.flat_field_max_gain}")
    for name, value in (("radius_m", fe.radius_m), ("psfs", fe.psfs), ("efficiency", fe.efficiency),
                        ("gains", fe.gains), ("targets", bank.targets), ("bias", bank.bias)):
        if not np.all(np.isfinite(np.asarray(value))):
            raise ValueError(f"{where}: '{name}' contains non-finite values")


def save_frontend(path: str | Path, *, radius_m, psfs, object_distances_m, efficiency, gains, bank: KernelBank,
                  element_centers_m, system: OpticalSystem, info: dict | None = None,
                  flat_field: bool = False, flat_field_max_gain: float | None = None) -> FrontEnd:
    """Write ``frontend.npz`` atomically (no pickle) and return the :class:`FrontEnd` (as :func:`load_frontend`
    will read it back, except that its ``system`` is the one given).

    Args:
        path: output ``.npz``.
        radius_m: (E, N, N) radii, metres. psfs: (D, E, P, P) or (D, Fy, Fx, E, P, P).
        object_distances_m: D distances (None = inf).
        efficiency: (D, E). gains: (E,) applied (calibrated) gains.
        bank: the kernel bank (targets, its uncalibrated gains, signs, channels, wavelengths, bias, padding,
            conv geometry), on any device.
        element_centers_m: (E, 2) layout, metres. system: optics geometry. info: JSON-serialisable extras.
        flat_field: the electronics' flat-field correction (:class:`OptoConv1`; field-grid PSFs only).
        flat_field_max_gain: the cap of its gain (None = no cap).
    """
    fe = FrontEnd(
        bank=_file_bank(bank), system=system, radius_m=_np(radius_m, np.float32), psfs=_np(psfs, np.float32),
        object_distances_m=distances_to_array(object_distances_m) if not isinstance(object_distances_m, np.ndarray)
        else object_distances_m.astype(np.float64),
        efficiency=_np(efficiency, np.float32), gains=_np(gains, np.float32),
        element_centers_m=_np(element_centers_m, np.float64), info=dict(info or {}), flat_field=bool(flat_field),
        flat_field_max_gain=None if flat_field_max_gain is None else float(flat_field_max_gain))
    _validate(fe, f"frontend '{path}'")
    own = {key: getattr(fe, key) for key in _OWN_ARRAYS}
    own.update({key: getattr(fe.bank, name).numpy() for key, (name, _) in _BANK_ARRAYS.items()})
    arrays = {key: own[key] for key in _ARRAY_KEYS}
    arrays.update({name: np.array(int(getattr(fe.bank, name))) for name in _BANK_INTS})
    arrays.update({name: np.array(int(getattr(system, name))) for name in _SYSTEM_INTS})
    arrays.update({name: np.array(float(getattr(system, name))) for name in _SYSTEM_FLOATS})
    arrays["aperture"] = np.array(str(system.aperture))
    arrays["info_json"] = np.array(json.dumps(fe.info, sort_keys=True, default=str))
    arrays["format"] = np.array(FRONTEND_FORMAT)
    if fe.flat_field:
        arrays["flat_field"] = np.array(True)
    if fe.flat_field_max_gain is not None:
        arrays["flat_field_max_gain"] = np.array(fe.flat_field_max_gain)
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
            check_format(data, FRONTEND_FORMAT, path, "front-end file")
            missing = [k for k in (*_ARRAY_KEYS, *_INT_KEYS, *_FLOAT_KEYS, "aperture", "info_json") if k not in data]
            if missing:
                raise ValueError(f"front-end file '{path}' lacks {missing}")
            arrays = {key: np.asarray(data[key], dtype=_DTYPES[key]) for key in _ARRAY_KEYS}
            ints = {key: int(data[key]) for key in _INT_KEYS}
            geometry = {key: float(data[key]) for key in _FLOAT_KEYS}
            geometry.update(n_superpixels=ints["n_superpixels"], aperture=str(data["aperture"]))
            info = json.loads(str(data["info_json"]))
            flat_field = bool(data["flat_field"]) if "flat_field" in data else False
            max_gain = float(data["flat_field_max_gain"]) if "flat_field_max_gain" in data else None
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"front-end file '{path}' cannot be read: {exc}") from exc
    psfs = arrays["psfs"]
    window = int(psfs.shape[-1]) if psfs.ndim == 4 and psfs.shape[-1] % 2 else 1  # a bad one: _validate says so
    try:
        system = _file_system(geometry, window)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"front-end file '{path}' holds an invalid optics geometry: {exc}") from exc
    fe = FrontEnd(bank=_bank_from_arrays(arrays, ints), system=system,
                  info=info, flat_field=flat_field, flat_field_max_gain=max_gain,
                  **{key: arrays[key] for key in _OWN_ARRAYS})
    _validate(fe, f"front-end file '{path}'")
    return fe
