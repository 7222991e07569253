"""The embedded synthetic scene dataset: exact depth, determinism, on-disk format, preview figure."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dko.config import config_from_dict
from dko.data.format import load_split, read_meta
from dko.data.synthetic import (Box, Camera, Scene, baseline_abs_rel, camera_rays, prepare_synthetic, render,
                                render_scene, scene_seed)
from dko.plots import plot_dataset_preview

H, W = 24, 80


def _tiny_cfg(workers: int, seed: int = 7):
    data = dict(height=H, width=W, n_train=5, n_val=2, n_test=3, workers=workers, min_depth_m=1.0, max_depth_m=80.0)
    return config_from_dict({"seed": seed, "data": data}, check_paths=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same tiny dataset generated with 1 and with 2 worker processes."""
    out = {}
    for workers in (1, 2):
        folder = tmp_path_factory.mktemp(f"synthetic_w{workers}")
        out[workers] = (folder, prepare_synthetic(_tiny_cfg(workers), folder))
    return out


def test_worker_count_does_not_change_a_byte(datasets):
    (d1, _), (d2, _) = datasets[1], datasets[2]
    for split in ("train", "val", "test"):
        a, b = load_split(d1, split, mmap=False), load_split(d2, split, mmap=False)
        assert a.images.tobytes() == b.images.tobytes()
        assert a.depth.tobytes() == b.depth.tobytes()
        assert a.names == b.names


def test_format_shapes_counts_and_meta(datasets):
    folder, summary = datasets[2]
    meta = read_meta(folder)
    assert meta["protocol"] == "synthetic" and meta["source"] == "synthetic"
    assert meta["counts"] == {"train": 5, "val": 2, "test": 3}
    assert (meta["height"], meta["width"], meta["seed"]) == (H, W, 7)
    for split, n in meta["counts"].items():
        s = load_split(folder, split)
        assert s.images.shape == (n, H, W, 3) and s.images.dtype == np.uint8
        assert s.depth.shape == (n, H, W) and s.depth.dtype == np.float32
        assert len(set(s.names)) == n
        valid = s.depth[s.depth > 0]
        assert valid.size > 0.3 * s.depth.size
        assert valid.min() >= 1.0 and valid.max() <= 80.0
        assert np.all((s.depth == 0) | (s.depth >= 1.0))
        # the bottom row sees the ground or near objects: mostly valid
        assert np.all((s.depth[:, -1] > 0).mean(axis=1) > 0.5)
        assert s.images.std() > 10
    assert summary["n_train"] == 5 and summary["workers"] == 2
    assert 0 < summary["valid_fraction"] <= 1
    assert summary["depth_p05_m"] <= summary["depth_p50_m"] <= summary["depth_p95_m"]
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in summary.values())


def test_deterministic_per_seed_split_index():
    a = render_scene(scene_seed(3, "train", 4), H, W)
    b = render_scene(scene_seed(3, "train", 4), H, W)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    for other in (scene_seed(4, "train", 4), scene_seed(3, "val", 4), scene_seed(3, "train", 5)):
        assert render_scene(other, H, W)[1].tobytes() != a[1].tobytes()


def test_seed_changes_dataset(datasets, tmp_path):
    folder = tmp_path / "other_seed"
    cfg = _tiny_cfg(1, seed=8)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_train=1, n_val=1, n_test=1))
    prepare_synthetic(cfg, folder)
    assert load_split(folder, "train").depth[0].tobytes() != load_split(datasets[1][0], "train").depth[0].tobytes()


def test_missing_count_is_rejected(tmp_path):
    cfg = _tiny_cfg(1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_val=None))
    with pytest.raises(ValueError, match="data.n_val"):
        prepare_synthetic(cfg, tmp_path / "x")
    assert not (tmp_path / "x" / "meta.json").exists()


def _empty_scene(pitch_deg: float = 0.0, yaw_deg: float = 0.0, height_m: float = 1.6) -> Scene:
    cam = Camera(height_m=height_m, x_m=0.3, pitch_rad=math.radians(pitch_deg), yaw_rad=math.radians(yaw_deg))
    return Scene(camera=cam, boxes=[], skyline=())


@pytest.mark.parametrize("pitch_deg,yaw_deg,height_m", [(0.0, 0.0, 1.6), (2.5, 7.0, 1.5), (-1.5, -4.0, 1.75)])
def test_ground_depth_is_analytic(pitch_deg, yaw_deg, height_m):
    """Flat ground seen by a camera at height h, pitched down by theta: z = h / (sin theta + y_n cos theta)."""
    h, w = 48, 160
    scene = _empty_scene(pitch_deg, yaw_deg, height_m)
    _, depth = render(scene, h, w, min_depth_m=1.0, max_depth_m=80.0)
    f = scene.camera.focal_rel * w
    th = math.radians(pitch_deg)
    yn = (np.arange(h) + 0.5 - h / 2) / f
    denom = math.sin(th) + yn * math.cos(th)
    expected = np.where(denom > 0, height_m / np.where(denom > 0, denom, 1.0), 0.0)
    expected = np.where((expected >= 1.0) & (expected <= 80.0), expected, 0.0)
    np.testing.assert_allclose(depth, np.broadcast_to(expected[:, None], (h, w)), rtol=1e-6)
    assert (depth[0] == 0).all() and (depth[-1] > 0).all()          # sky on top, ground below
    assert (expected == 0).any() and (expected > 0).any()


def test_depth_beyond_cap_and_below_min_is_invalid():
    h, w = 48, 160
    _, d80 = render(_empty_scene(), h, w, 1.0, 80.0)
    _, d20 = render(_empty_scene(), h, w, 1.0, 20.0)
    _, dmin = render(_empty_scene(pitch_deg=30.0), h, w, 4.0, 80.0)   # steep view: bottom rows nearer than 4 m
    assert ((d20 > 0) <= (d80 > 0)).all() and (d20 > 0).sum() < (d80 > 0).sum()
    assert d20.max() <= 20.0 and np.all(d20[d20 > 0] == d80[d20 > 0])
    assert (dmin[-1] == 0).all() and dmin[dmin > 0].min() >= 4.0


def test_occlusion_box_in_front_of_wall():
    """A 2x2x2 m box whose front face is at z = 9 m in front of a wall at z = 30 m: exact depths and edges."""
    h, w = 64, 200
    cam = Camera(height_m=1.6, x_m=0.0)
    wall = Box(center=(0.0, 15.0, 30.5), half=(200.0, 15.0, 0.5), side_tint=(0.9, 0.9, 0.9))
    box = Box(center=(0.0, 1.0, 10.0), half=(1.0, 1.0, 1.0), side_tint=(0.9, 0.1, 0.1))
    image, depth = render(Scene(camera=cam, boxes=[wall, box], skyline=()), h, w, 1.0, 80.0)
    f = cam.focal_rel * w
    u = (np.arange(w) + 0.5 - w / 2) / f          # normalised image coordinates of pixel centres
    v = (np.arange(h) + 0.5 - h / 2) / f
    # ray (u, v, 1) from (0, 1.6, 0): on the plane z = 9 it is at x = 9u, y = 1.6 - 9v
    in_box = (np.abs(9 * v[:, None] - 1.6 + 1.0) < 1.0 - 1e-9) & (np.abs(9 * u[None, :]) < 1.0 - 1e-9)
    np.testing.assert_allclose(depth[in_box], 9.0, rtol=1e-6)
    # elsewhere: the wall (z = 30) above its ground contact, the ground below it; never the box
    on_wall = ~in_box & (30 * v[:, None] < 1.6) & (np.abs(u)[None, :] >= 1.0 / 9 + 1e-3)
    np.testing.assert_allclose(depth[on_wall], 30.0, rtol=1e-6)
    assert in_box.sum() > 50 and on_wall.sum() > 500
    # the box is red, the wall is not
    assert image[in_box][:, 0].mean() > 2 * image[in_box][:, 1].mean()
    assert abs(float(image[on_wall][:, 0].mean()) - float(image[on_wall][:, 1].mean())) < 20


def test_yawed_box_nearest_edge_depth():
    """A cube turned by 45 degrees presents a vertical edge; its depth there is z_c - a*sqrt(2)."""
    h, w = 64, 201
    cam = Camera(height_m=1.0, x_m=0.0)
    cube = Box(center=(0.0, 2.0, 12.0), half=(1.0, 2.0, 1.0), yaw_rad=math.pi / 4)
    _, depth = render(Scene(camera=cam, boxes=[cube], skyline=()), h, w, 1.0, 80.0)
    assert cube.corners()[:, 2].min() == pytest.approx(12.0 - math.sqrt(2.0))
    col = w // 2                                 # the pixel column through x = 0 (odd width)
    f = cam.focal_rel * w
    z0 = 12.0 - math.sqrt(2.0)
    y_edge = 1.0 - z0 * (np.arange(h) + 0.5 - h / 2) / f     # height of the ray where it meets the edge
    rows = np.flatnonzero((y_edge > 0.05) & (y_edge < 3.95))
    assert rows.size > 5
    np.testing.assert_allclose(depth[rows, col], z0, rtol=1e-6)
    # a face of a 45-degree box: depth grows linearly with |x| (z = z_near + |x|)
    r = rows[rows.size // 2]
    c = col + 10
    xn = (c + 0.5 - w / 2) / f
    z_face = z0 / (1.0 - xn)   # z = z0 + x, x = xn z
    assert depth[r, c] == pytest.approx(z_face, rel=1e-6)


def test_shadows_darken_exactly_the_analytic_shadow():
    h, w = 64, 200
    cam = Camera(height_m=1.6, x_m=0.0, pitch_rad=math.radians(3.0))
    sun = np.array([0.6, 0.5, -0.6])
    sun /= np.linalg.norm(sun)
    box = Box(center=(-3.0, 1.5, 14.0), half=(1.0, 1.5, 1.0))
    scenes = [Scene(camera=cam, boxes=[dataclasses.replace(box, casts_shadow=c)], skyline=(), sun_dir=tuple(sun),
                    haze_m=1e9) for c in (True, False)]
    (img_s, depth), (img_n, _) = render(scenes[0], h, w), render(scenes[1], h, w)
    changed = np.any(img_s != img_n, axis=2)
    assert changed.sum() > 20
    assert (img_s[changed].astype(int).sum(axis=1) < img_n[changed].astype(int).sum(axis=1)).all()
    # independent check: the ground point seen by each pixel has the box between it and the sun
    d = camera_rays(cam, h, w)
    ground = np.isclose(cam.height_m + depth * d[1], 0.0, atol=1e-4) & (depth > 0)
    p = cam.origin()[:, None, None] + depth[None] * d
    lo, hi = np.array(box.center) - box.half, np.array(box.center) + box.half
    s_lo = np.max(np.minimum((lo[:, None, None] - p) / sun[:, None, None], (hi[:, None, None] - p) / sun[:, None, None]), axis=0)
    s_hi = np.min(np.maximum((lo[:, None, None] - p) / sun[:, None, None], (hi[:, None, None] - p) / sun[:, None, None]), axis=0)
    analytic = ground & (s_lo <= s_hi) & (s_hi > 0)
    margin = analytic & ~changed
    assert changed.sum() >= 0.95 * analytic.sum() and not (changed & ground & ~analytic).any()
    assert margin.sum() <= 0.05 * analytic.sum()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 40), w=st.integers(1, 90),
       max_depth=st.floats(10.0, 120.0))
def test_any_size_gives_valid_outputs(seed, h, w, max_depth):
    image, depth = render_scene(seed, h, w, 1.0, max_depth)
    assert image.shape == (h, w, 3) and image.dtype == np.uint8
    assert depth.shape == (h, w) and depth.dtype == np.float32
    assert np.all(np.isfinite(depth))
    assert np.all((depth == 0) | ((depth >= 1.0) & (depth <= max_depth)))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="height"):
        render_scene(0, 0, 10)
    with pytest.raises(ValueError, match="min_depth_m"):
        render_scene(0, 10, 10, 5.0, 2.0)
    with pytest.raises(ValueError, match="split"):
        scene_seed(0, "holdout", 1)


def test_baseline_abs_rel_by_hand():
    train = np.zeros((2, 2, 3), dtype=np.float32)
    train[0] = [[2, 4, 0], [10, 10, 10]]
    train[1] = [[6, 0, 0], [20, 20, 20]]           # mean of valid = 102 / 9; row means 4 and 15
    test = np.array([[[4, 8, 0], [15, 30, 10]]], dtype=np.float32)
    out = baseline_abs_rel(train, test)
    m = 102 / 9
    assert out["mean"] == pytest.approx(np.mean([abs(m - 4) / 4, abs(m - 8) / 8, abs(m - 15) / 15, abs(m - 30) / 30,
                                                  abs(m - 10) / 10]))
    assert out["row_mean"] == pytest.approx(np.mean([0, 0.5, 0, 0.5, 0.5]))


def test_preview_figure(datasets, tmp_path):
    import matplotlib.image

    folder, _ = datasets[1]
    out = plot_dataset_preview(folder, tmp_path / "fig" / "preview.png", n_images=10)   # more than the split has
    assert out.is_file()
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300 and img.std() > 0.05
    assert not list((tmp_path / "fig").glob(".preview.png*"))          # no temporary file left
    with pytest.raises(ValueError, match="n_images"):
        plot_dataset_preview(folder, tmp_path / "p.png", n_images=0)


def test_screen_space_culling_changes_nothing(monkeypatch):
    """Rays are only tested against a box inside its projected rectangle; testing every ray must agree."""
    import dko.data.synthetic as syn

    seeds = [scene_seed(11, "train", i) for i in range(4)]
    culled = [render_scene(s, H, W) for s in seeds]
    monkeypatch.setattr(syn, "_footprint", lambda corners, rot, origin, f, h, w: (0, h, 0, w))
    for s, (image, depth) in zip(seeds, culled):
        image_all, depth_all = render_scene(s, H, W)
        assert depth.tobytes() == depth_all.tobytes() and image.tobytes() == image_all.tobytes()
