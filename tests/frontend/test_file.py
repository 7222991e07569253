"""The frontend.npz file (dko.frontend.file): a FrontEnd holds its KernelBank and OpticalSystem; the file round
trip keeps every field; files written before the package (format dko.frontend/1) still load."""

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from dko.frontend import FrontEnd, KernelBank, OptoConv1, ideal_psfs, load_frontend, save_frontend
from dko.optics.psf import OpticalSystem

torch.set_num_threads(2)
OLD_FILE = Path(__file__).parent / "data" / "frontend_format1.npz"
# the keys and dtypes of format dko.frontend/1 (the file is unchanged by the package)
FORMAT1 = {"radius_m": "float32", "psfs": "float32", "object_distances_m": "float64", "efficiency": "float32",
           "gains": "float32", "kernel_gains": "float32", "targets": "float32", "sign": "float32",
           "out_channel": "int64", "in_channel": "int64", "wavelength_m": "float64", "bias": "float32",
           "pad_value": "float32", "element_centers_m": "float64", "stride": "int64", "padding": "int64",
           "n_out": "int64", "n_in": "int64", "n_superpixels": "int64", "superpixel_m": "float64",
           "sensor_distance_m": "float64", "pixel_pitch_m": "float64", "aperture": "<U", "info_json": "<U",
           "format": "<U"}
GEOMETRY = ("superpixel_m", "n_superpixels", "sensor_distance_m", "pixel_pitch_m", "aperture")


def _assert_same_bank(a: KernelBank, b: KernelBank) -> None:
    for f in fields(KernelBank):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f.name
        else:
            assert x == y, f.name


def _dtype_name(a: np.ndarray) -> str:
    return "<U" if a.dtype.kind == "U" else str(a.dtype)


def test_frontend_file_roundtrip_and_errors(tmp_path, bank, system, write_frontend):
    psfs = torch.stack([ideal_psfs(bank, 15), ideal_psfs(bank, 15) * 0.5])
    fe = write_frontend(bank, system, psfs, [10.0, None])
    back = load_frontend(tmp_path / "frontend.npz")
    assert isinstance(back, FrontEnd) and back.distances == [10.0, None]
    for name in ("radius_m", "psfs", "gains", "element_centers_m", "object_distances_m", "efficiency"):
        assert np.array_equal(getattr(back, name), getattr(fe, name)), name
    assert (back.bank.stride, back.bank.padding, back.bank.n_out, back.bank.n_in, back.system.n_superpixels) == \
        (2, 2, 2, 3, 24)
    assert back.info == {"method": "test"}
    assert torch.allclose(back.bank.folded_weight(), bank.folded_weight(), atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        load_frontend(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a dko.frontend"):
        load_frontend(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="psfs"):
        write_frontend(bank, system, psfs[..., 6:9, 6:9], [10.0, None])  # window smaller than k


def test_frontend_holds_the_bank_and_the_system_and_the_round_trip_keeps_them(tmp_path, bank, system, write_frontend):
    psfs = torch.stack([ideal_psfs(bank, 15) * 0.8, ideal_psfs(bank, 15) * 0.5])
    calibrated = bank.gains / 0.8
    fe = write_frontend(bank.to(dtype=torch.float64), system, psfs, [10.0, None], gains=calibrated)
    # the bank as it is stored: CPU, the file's dtypes, the kernel bank's (uncalibrated) gains
    assert isinstance(fe.bank, KernelBank) and fe.system is system
    assert fe.bank.targets.dtype == torch.float32 and fe.bank.wavelength_m.dtype == torch.float64
    assert fe.bank.out_channel.dtype == torch.long
    assert torch.equal(fe.bank.gains, bank.gains) and torch.equal(fe.bank.targets, bank.targets)
    back = load_frontend(tmp_path / "frontend.npz")
    _assert_same_bank(back.bank, fe.bank)
    for name in GEOMETRY:
        assert getattr(back.system, name) == getattr(system, name), name
    assert back.system.psf_size_px == 15 and back.system.pad_factor == 2.0
    for name in ("radius_m", "psfs", "object_distances_m", "efficiency", "gains", "element_centers_m"):
        a, b = getattr(back, name), getattr(fe, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.info == fe.info and back.n_elements == bank.n_elements and back.kernel_size == 5
    # the layer applies the calibrated gains; the bank keeps the kernel gains
    layer = back.opto_layer()
    assert isinstance(layer, OptoConv1) and torch.allclose(layer.gains, calibrated)
    assert torch.allclose(back.calibrated_bank().gains, calibrated) and torch.equal(back.bank.gains, bank.gains)
    # saving what was loaded writes the same file content
    again = save_frontend(tmp_path / "again.npz", radius_m=back.radius_m, psfs=back.psfs,
                          object_distances_m=back.object_distances_m, efficiency=back.efficiency, gains=back.gains,
                          bank=back.bank, element_centers_m=back.element_centers_m, system=back.system,
                          info=back.info)
    with np.load(tmp_path / "frontend.npz") as a, np.load(tmp_path / "again.npz") as b:
        assert a.files == b.files
        for key in a.files:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    _assert_same_bank(again.bank, back.bank)


def test_the_file_format_is_format_1(tmp_path, bank, system, write_frontend):
    """The keys, their order and dtypes are those of dko.frontend/1 (written before the package)."""
    write_frontend(bank, system, ideal_psfs(bank, 15)[None], [10.0])
    with np.load(tmp_path / "frontend.npz") as new, np.load(OLD_FILE) as old:
        assert new.files == old.files == list(FORMAT1)
        assert {k: _dtype_name(new[k]) for k in new.files} == {k: _dtype_name(old[k]) for k in old.files} == FORMAT1
        assert str(new["format"]) == "dko.frontend/1"


def test_a_file_written_before_the_package_loads(tmp_path):
    """tests/frontend/data/frontend_format1.npz was written by the module dko.frontend before it became a package."""
    fe = load_frontend(OLD_FILE)
    with np.load(OLD_FILE) as raw:
        bank_keys = {"kernel_gains": "gains", "targets": "targets", "sign": "sign", "out_channel": "out_channel",
                     "in_channel": "in_channel", "wavelength_m": "wavelength_m", "bias": "bias",
                     "pad_value": "pad_value"}
        for key, name in bank_keys.items():
            value = getattr(fe.bank, name)
            assert str(value.dtype).endswith(str(raw[key].dtype)) and np.array_equal(value.numpy(), raw[key]), key
        for key in ("stride", "padding", "n_out", "n_in"):
            assert getattr(fe.bank, key) == int(raw[key]), key
        for key in GEOMETRY:
            assert getattr(fe.system, key) == raw[key].item(), key
        for key in ("radius_m", "psfs", "object_distances_m", "efficiency", "gains", "element_centers_m"):
            assert np.array_equal(getattr(fe, key), raw[key]), key
    assert fe.n_elements == 6 and fe.distances == [10.0, None] and fe.info["method"] == "fixture"
    assert fe.system.aperture == "square" and fe.system.psf_size_px == 5
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    assert fe.opto_layer()(x).shape == (1, 1, 6, 6)


def test_a_loaded_system_holds_the_psf_window(tmp_path, bank, write_frontend):
    """The file keeps the geometry, not the padding: a window wider than twice the aperture raises pad_factor."""
    wide = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=8, sensor_distance_m=2.0e-4, pixel_pitch_m=2.74e-6,
                         psf_size_px=15, pad_factor=5.0)  # 41 um window > 2 x 9.6 um aperture
    write_frontend(bank, wide, ideal_psfs(bank, 15)[None], [10.0])
    back = load_frontend(tmp_path / "frontend.npz")
    assert back.system.psf_size_px == 15
    assert back.system.grid_extent_m >= 15 * 2.74e-6 and 2.0 < back.system.pad_factor < 5.0
    assert back.system.n_superpixels == 8 and back.radius_m.shape == (bank.n_elements, 8, 8)


def test_a_front_end_with_a_field_grid_and_flat_field_round_trips_into_a_spatially_varying_layer(tmp_path, bank,
                                                                                                 system):
    """(D, Fy, Fx, E, P, P) PSFs and the flat_field flag survive the file; the layer gets the grid and the flag; a
    file without the key (every earlier file) loads with flat_field false; flat_field without a grid is refused."""
    from dko.frontend import array_layout

    e, n = bank.n_elements, system.n_superpixels
    gen = torch.Generator().manual_seed(2)
    grid = torch.rand(1, 2, 3, e, 15, 15, generator=gen)
    common = dict(radius_m=torch.full((e, n, n), 8e-8), object_distances_m=[10.0], gains=bank.gains, bank=bank,
                  element_centers_m=array_layout(bank, 1e-4), system=system)
    fe = save_frontend(tmp_path / "grid.npz", psfs=grid, efficiency=grid[:, 0, 1].sum(dim=(-2, -1)), flat_field=True,
                       **common)
    back = load_frontend(tmp_path / "grid.npz")
    assert back.flat_field and back.field_grid == (2, 3) and np.array_equal(back.psfs, fe.psfs)
    assert np.allclose(back.centre_psfs, grid[:, :, 1].mean(dim=1).numpy())  # even Fy: the mean of the middle rows
    layer = back.opto_layer()
    assert layer.field_grid == (2, 3) and layer.shading_corrected
    torch.testing.assert_close(layer.psfs, torch.as_tensor(back.centre_psfs))
    plain = save_frontend(tmp_path / "plain.npz", psfs=grid[:, 0, 0], efficiency=grid[:, 0, 0].sum(dim=(-2, -1)),
                          **common)
    assert not load_frontend(tmp_path / "plain.npz").flat_field and plain.field_grid == (1, 1)
    with np.load(tmp_path / "plain.npz") as data:
        assert "flat_field" not in data.files  # the file of a shift-invariant front end is format 1 as before
    with pytest.raises(ValueError, match="flat_field needs PSFs on a field grid"):
        save_frontend(tmp_path / "bad.npz", psfs=grid[:, 0, 0], efficiency=grid[:, 0, 0].sum(dim=(-2, -1)),
                      flat_field=True, **common)
    with pytest.raises(ValueError, match="psfs"):
        save_frontend(tmp_path / "bad.npz", psfs=grid[:, :, :, :3], efficiency=grid[:, 0, 0].sum(dim=(-2, -1)),
                      **common)
    # the gain cap of the correction: absent = None (every earlier file), kept by the file, passed to the layer
    assert back.flat_field_max_gain is None and layer.flat_field_max_gain is None
    capped = save_frontend(tmp_path / "capped.npz", psfs=grid, efficiency=grid[:, 0, 1].sum(dim=(-2, -1)),
                           flat_field=True, flat_field_max_gain=8.0, **common)
    assert load_frontend(tmp_path / "capped.npz").flat_field_max_gain == 8.0 == capped.opto_layer().flat_field_max_gain
    with pytest.raises(ValueError, match="flat_field_max_gain"):
        save_frontend(tmp_path / "bad.npz", psfs=grid, efficiency=grid[:, 0, 1].sum(dim=(-2, -1)), flat_field=True,
                      flat_field_max_gain=0.5, **common)
