"""GDSII export: read back and check pillar counts, radius histogram and element positions."""

from collections import Counter

import numpy as np
import pytest

from dko.optics.gds import read_array_summary, write_array_gds


def _design(rng, n_el=3, n=8):
    radii = rng.uniform(30e-9, 135e-9, size=(n_el, n, n))
    centers = np.array([[i * 50e-6, -j * 60e-6] for i, j in zip(range(n_el), range(n_el))])
    return radii, centers


def test_round_trip_counts_histogram_positions(tmp_path):
    rng = np.random.default_rng(0)
    radii, centers = _design(rng)
    n = radii.shape[1]
    yy, xx = np.mgrid[:n, :n] + 0.5 - n / 2
    aperture = xx**2 + yy**2 <= (n / 2) ** 2
    path = tmp_path / "array.gds"
    summary = write_array_gds(path, radii, centers, superpixel_m=0.9e-6, period_m=0.3e-6,
                              element_names=["k0_c0_pos", "k0_c1_neg", "k1_c2_pos"], aperture_mask=aperture)
    per_superpixel = 3 * 3
    assert summary["n_pillars"] == 3 * aperture.sum() * per_superpixel
    back = read_array_summary(path)
    assert back["n_pillars"] == summary["n_pillars"]
    assert set(back["elements"]) == {"k0_c0_pos", "k0_c1_neg", "k1_c2_pos"}
    for e, name in enumerate(["k0_c0_pos", "k0_c1_neg", "k1_c2_pos"]):
        el = back["elements"][name]
        np.testing.assert_allclose(el["center_m"], centers[e], atol=1e-9)
        expected = Counter()
        for r in np.rint(radii[e][aperture] * 1e9).astype(int):
            expected[int(r)] += per_superpixel
        assert el["radius_histogram_nm"] == dict(sorted(expected.items()))


def test_pillar_geometry_is_where_the_map_says(tmp_path):
    """Flatten the layout and check one superpixel's pillars: position, count and radius."""
    import gdstk

    radii = np.full((1, 4, 4), 50e-9)
    radii[0, 0, 3] = 120e-9  # top-right superpixel
    path = tmp_path / "one.gds"
    write_array_gds(path, radii, np.zeros((1, 2)), superpixel_m=0.6e-6, period_m=0.3e-6)
    lib = gdstk.read_gds(str(path))
    top = next(c for c in lib.cells if c.name == "DKO_ARRAY")
    polys = [p for p in top.copy("flat").flatten().polygons if p.layer == 1]
    assert len(polys) == 16 * 4
    big = [p for p in polys if (p.bounding_box()[1][0] - p.bounding_box()[0][0]) > 0.2]
    assert len(big) == 4
    centres = np.array([np.mean(p.bounding_box(), axis=0) for p in big])
    # top-right superpixel spans x in [0.6, 1.2] um, y in [0.6, 1.2] um
    assert np.all((centres > 0.6) & (centres < 1.2))


def test_invalid_inputs_are_named(tmp_path):
    radii = np.full((1, 4, 4), 50e-9)
    with pytest.raises(ValueError, match="superpixel_m"):
        write_array_gds(tmp_path / "x.gds", radii, np.zeros((1, 2)), superpixel_m=0.5e-6, period_m=0.3e-6)
    with pytest.raises(ValueError, match="period_m / 2"):
        write_array_gds(tmp_path / "x.gds", radii * 4, np.zeros((1, 2)), superpixel_m=0.6e-6, period_m=0.3e-6)
    with pytest.raises(ValueError, match="does not exist"):
        read_array_summary(tmp_path / "missing.gds")
    (tmp_path / "junk.gds").write_bytes(b"not a gds file at all")
    with pytest.raises(ValueError, match="junk.gds"):
        read_array_summary(tmp_path / "junk.gds")
