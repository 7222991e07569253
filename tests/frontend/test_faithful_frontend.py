"""dko.frontend.faithful_frontend: a design's front end in the faithful optical model (rule faithful_frontend)."""

import json
import math

import numpy as np
import pytest
import torch

from dko.config import config_from_dict
from dko.frontend import load_frontend
from dko.frontend.faithful_frontend import (calibration_sums, faithful_frontend, node_angles_rad, node_offsets_px,
                                            write_faithful_frontend)
from dko.optics.faithful import relative_illumination
from dko.optics.metaatoms import MetaAtomLibrary

torch.set_num_threads(2)
OPTICS = {"n_superpixels": 24, "superpixel_m": 1.2e-6, "sensor_distance_m": 2.0e-4, "psf_size_px": 15}
CHEAP_TERMS_OFF = {"route": "fft", "samples_per_superpixel": 1, "exact_pixels": False, "fresnel": False,
                   "passband_fwhm_m": [0.0, 0.0, 0.0], "field_grid": [1, 1], "image_spectral_samples": 1,
                   "relative_illumination": False, "flat_field": False}


def _cfg(dko=None, **faithful):
    faithful.setdefault("metaatom_model", "normal_incidence")  # the oblique pillars: their own test below
    return config_from_dict({"optics": OPTICS, "data": {"height": 48, "width": 72}, "faithful": faithful,
                             "dko": dko or {}}, check_paths=False)


@pytest.fixture(scope="module")
def library():
    return MetaAtomLibrary.default()


@pytest.fixture(scope="module")
def design(tmp_path_factory, library, write_lens_design):
    """The 6-element lens design of conftest.write_lens_design (gains calibrated on the cheap PSFs)."""
    out = tmp_path_factory.mktemp("faithful_frontend")
    return out, write_lens_design(out, _cfg(), library, calibrate=True)


def test_nodes_sit_on_whole_pixels_symmetric_about_the_centre():
    assert node_offsets_px(5, 320) == [-160, -80, 0, 80, 160]
    assert node_offsets_px(3, 96) == [-48, 0, 48]
    assert node_offsets_px(2, 96) == [-48, 48] and node_offsets_px(1, 7) == [0]
    for n in range(1, 8):
        for size in (5, 6, 31, 96, 97):
            off = node_offsets_px(n, size)
            assert off == [-o for o in reversed(off)]
            assert all(abs(o - (i * (size - 1) / max(n - 1, 1) - (size - 1) / 2)) <= 0.5 for i, o in enumerate(off)
                       if n > 1)
    angles = node_angles_rad((3, 5), 96, 320, 2.74e-6, 1.5e-4)
    assert angles.shape == (3, 5, 2)
    assert math.degrees(angles[0, 4, 0]) == pytest.approx(math.degrees(math.atan(160 * 2.74e-6 / 1.5e-4)))
    assert math.degrees(angles[0, 4, 0]) == pytest.approx(71.1, abs=0.05)  # the default image's edge
    assert angles[1, 2, 0] == 0.0 and angles[1, 2, 1] == 0.0 and angles[0, 0, 1] < 0 < angles[2, 0, 1]
    with pytest.raises(ValueError):
        node_offsets_px(0, 10)


def test_relative_illumination_is_the_cos4_law():
    assert relative_illumination(0.0) == 1.0
    assert relative_illumination(math.radians(60)) == pytest.approx(0.0625)
    gamma = math.atan(math.hypot(160 * 2.74e-6 / 1.5e-4, 48 * 2.74e-6 / 1.5e-4))  # the default image's corner
    assert relative_illumination(gamma) == pytest.approx(0.0094, abs=5e-4)


def test_with_every_term_off_on_one_node_it_is_the_cheap_front_end(design, library):
    """Faithful numerics set to the cheap model's (FFT of one sample per superpixel, cell-constant pixels, no
    Fresnel, one wavelength, one on-axis node, no illumination factor): the PSFs are the design's and the gains
    stay as calibrated (measured 1e-7 relative)."""
    _, fe = design
    arrays, summary = faithful_frontend(_cfg(**CHEAP_TERMS_OFF), fe, library, fe.radius_m.astype(np.float64),
                                        progress=False)
    assert arrays["psfs"].shape == (1, 1, 1, fe.n_elements, 15, 15)
    np.testing.assert_allclose(arrays["psfs"][0, 0, 0], fe.psfs[0], rtol=0, atol=2e-6 * fe.psfs.max())
    np.testing.assert_allclose(arrays["gains"], fe.gains, rtol=2e-5)
    assert summary["cheap_vs_faithful"]["max_psf_rel_diff"] < 2e-5
    assert summary["nodes"][0]["relative_illumination"] == 1.0 and not arrays["flat_field"]


def test_nodes_illumination_calibration_and_the_layer(design, library, tmp_path):
    """Default faithful terms on a 3 x 3 grid (one wavelength for speed): every node's PSF is cos^4 of its angle
    times the unscaled one; the calibrated gains give every element the design's DC response at the centre node
    (total: the whole window; window: the k x k one; none: gains unchanged); the written front end forms a
    spatially varying image whose flat-field-corrected response to a uniform scene is flat across the field,
    while without the correction the corners are darker by about their relative illumination."""
    out, fe = design
    base = dict(field_grid=[3, 3], image_spectral_samples=1)
    radii_path = out / "array.gds"
    with_ri, summary = faithful_frontend(_cfg(**base), fe, library, _gds(radii_path, fe), progress=False)
    without, _ = faithful_frontend(_cfg(relative_illumination=False, **base), fe, library, _gds(radii_path, fe),
                                   progress=False)
    angles = node_angles_rad((3, 3), 48, 72, fe.system.pixel_pitch_m, fe.system.sensor_distance_m)
    for i in range(3):
        for j in range(3):
            gamma = math.atan(math.hypot(math.tan(angles[i, j, 0]), math.tan(angles[i, j, 1])))
            np.testing.assert_allclose(with_ri["psfs"][0, i, j], relative_illumination(gamma) * without["psfs"][0, i, j],
                                       rtol=1e-6, atol=1e-12)
            assert summary["nodes"][3 * i + j]["relative_illumination"] == pytest.approx(relative_illumination(gamma))
    assert summary["nodes"][4]["relative_illumination"] == 1.0 and summary["nodes"][0]["relative_illumination"] < 0.95
    k = fe.kernel_size
    design_psf = torch.as_tensor(fe.psfs[0], dtype=torch.float64)
    centre = torch.as_tensor(with_ri["psfs"][0, 1, 1], dtype=torch.float64)
    for mode in ("total", "window"):
        arrays, _ = faithful_frontend(_cfg(dko={"gain_calibration": mode}, **base), fe, library, _gds(radii_path, fe),
                                      progress=False)
        dc_faithful = calibration_sums(centre, k, mode) * torch.as_tensor(arrays["gains"], dtype=torch.float64)
        dc_design = calibration_sums(design_psf, k, mode) * torch.as_tensor(fe.gains, dtype=torch.float64)
        torch.testing.assert_close(dc_faithful, dc_design, rtol=1e-5, atol=0)
    none, _ = faithful_frontend(_cfg(dko={"gain_calibration": "none"}, **base), fe, library, _gds(radii_path, fe),
                                progress=False)
    np.testing.assert_array_equal(none["gains"], fe.gains)
    assert summary["cheap_vs_faithful"]["median_psf_rel_diff"] > 0.02  # the faithful model differs from the cheap one
    # the written front end in the layer: uniform scene, with and without the flat-field correction
    summary = write_faithful_frontend(_cfg(**base), out / "frontend.npz", radii_path, library, tmp_path / "ff.npz",
                                      tmp_path / "ff.json", tmp_path / "map.png", progress=False)
    assert json.loads((tmp_path / "ff.json").read_text())["field_grid"] == [3, 3]
    assert (tmp_path / "map.png").stat().st_size > 5000
    faithful = load_frontend(tmp_path / "ff.npz")
    assert faithful.flat_field and faithful.field_grid == (3, 3) and faithful.info["optical_model"] == "faithful"
    x = torch.full((1, 3, 48, 72), 0.5)
    layer = faithful.opto_layer()
    images = layer.sensor_images(x)
    flat = layer.combine(images * layer.flat_field_gain(48, 72)[None]) - layer.bias[None, :, None, None]
    raw = layer.combine(images) - layer.bias[None, :, None, None]
    inner_centre, inner_corner = flat[0, :, 12, 18], flat[0, :, 3, 3]   # output pixels (stride 2)
    assert float((inner_corner - inner_centre).abs().max()) < 0.02 * float(inner_centre.abs().max())
    ri_corner = summary["nodes"][0]["relative_illumination"]
    assert float((raw[0, :, 3, 3] / raw[0, :, 12, 18]).mean()) < 0.5 * (1 + ri_corner)


def _gds(path, fe):
    from dko.frontend.faithful import read_gds_radii

    return read_gds_radii(path, fe.element_centers_m, fe.system.n_superpixels, fe.system.superpixel_m)
