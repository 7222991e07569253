"""Eigen-protocol Velodyne ground truth on miniature KITTI raw files (real text / binary formats) in tmp_path."""

import numpy as np
import pytest

from dko.data.velodyne import (
    project_velodyne,
    read_calib_file,
    read_gt_depths_npz,
    read_velodyne_points,
    velodyne_depth_map,
    velodyne_path,
    velodyne_projection,
)

DATE = "2011_09_26"
FOLDER = f"{DATE}/{DATE}_drive_0002_sync"
FX, CX, CY = 721.5377, 609.5593, 172.854          # KITTI P_rect_02 intrinsics (fx = fy)
BASELINE = -387.57                                # P_rect_03[0, 3] = -fx * baseline
T_VELO = (0.05, -0.08, -0.27)                     # Velodyne -> camera translation, metres
# Velodyne axes (x forward, y left, z up) -> camera axes (x right, y down, z forward)
R_VELO = ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0))
SMALL = dict(width=40, height=30, fx=21.5, cx=19.6, cy=14.3, baseline=-11.6)   # scaled-down camera


def _fmt(values) -> str:
    return " ".join(f"{v:e}" for v in np.ravel(values))


def _write_calib(date_dir, width=1242, height=375, fx=FX, cx=CX, cy=CY, baseline=BASELINE,
                 r_rect=np.eye(3), drop=(), override=None):
    """calib_cam_to_cam.txt / calib_velo_to_cam.txt as KITTI ships them (all keys, non-numeric calib_time)."""
    date_dir.mkdir(parents=True, exist_ok=True)
    k = np.array([[fx, 0, cx], [0, fx, cy], [0, 0, 1]])
    cam = {"calib_time": "09-Jan-2012 13:57:47", "corner_dist": _fmt([9.95e-2])}
    for i in range(4):
        cam[f"S_{i:02d}"] = _fmt([1392, 512])
        cam[f"K_{i:02d}"] = _fmt(k * 1.35)
        cam[f"D_{i:02d}"] = _fmt([-0.37, 0.2, 2.2e-3, 1.4e-3, -7.2e-2])
        cam[f"R_{i:02d}"] = _fmt(np.eye(3))
        cam[f"T_{i:02d}"] = _fmt([-0.54 * (i % 2), 0.0, 0.0])
        cam[f"S_rect_{i:02d}"] = _fmt([width, height])
        cam[f"R_rect_{i:02d}"] = _fmt(r_rect if i == 0 else np.eye(3))
        p = np.hstack([k, np.zeros((3, 1))])
        if i % 2:
            p[0, 3] = baseline
        cam[f"P_rect_{i:02d}"] = _fmt(p)
    velo = {"calib_time": "15-Mar-2012 11:37:16", "R": _fmt(R_VELO), "T": _fmt(T_VELO),
            "delta_f": _fmt([0, 0]), "delta_c": _fmt([0, 0])}
    for d in (cam, velo):
        d.update(override or {})
        for key in drop:
            d.pop(key, None)
    (date_dir / "calib_cam_to_cam.txt").write_text("".join(f"{k}: {v}\n" for k, v in cam.items()))
    (date_dir / "calib_velo_to_cam.txt").write_text("".join(f"{k}: {v}\n" for k, v in velo.items()))
    return date_dir


def _velo(u, v, z_cam, fx=FX, cx=CX, cy=CY):
    """Velodyne point (x, y, z) whose camera-2 projection is (u, v) at camera depth z_cam (identity R_rect)."""
    x_cam, y_cam = (u - cx) * z_cam / fx, (v - cy) * z_cam / fx
    return (z_cam - T_VELO[2], T_VELO[0] - x_cam, -y_cam + T_VELO[1])


def _cloud(*pts):
    pts = np.array(pts, dtype=np.float32)
    return np.hstack([pts, np.full((len(pts), 1), 0.5, np.float32)])     # + reflectance


def _write_bin(root, frame, points):
    path = velodyne_path(root, FOLDER, frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(points, dtype="<f4").tofile(path)
    return path


# ---------------------------------------------------------------------------------------------------- calib files

def test_read_calib_file_numbers_strings_and_errors(tmp_path):
    _write_calib(tmp_path)
    cam = read_calib_file(tmp_path / "calib_cam_to_cam.txt")
    assert cam["calib_time"] == "09-Jan-2012 13:57:47"
    assert cam["S_rect_02"].dtype == np.float64 and cam["S_rect_02"].tolist() == [1242.0, 375.0]
    assert cam["P_rect_03"].shape == (12,) and cam["P_rect_03"][3] == BASELINE
    assert {"K_00", "D_01", "R_02", "T_03", "S_rect_00", "P_rect_00"} <= set(cam)
    velo = read_calib_file(tmp_path / "calib_velo_to_cam.txt")
    assert velo["T"].tolist() == list(T_VELO) and velo["calib_time"] == "15-Mar-2012 11:37:16"

    with pytest.raises(ValueError, match="missing.txt"):
        read_calib_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("R: 1 0 0 0 1 0 0 0 1\nthis line has no separator\n")
    with pytest.raises(ValueError, match=r"bad\.txt.*line 2"):
        read_calib_file(bad)


def test_velodyne_projection_matrix_by_hand(tmp_path):
    _write_calib(tmp_path)
    P2, shape = velodyne_projection(tmp_path, "image_02")
    assert shape == (375, 1242) and P2.dtype == np.float64 and P2.shape == (3, 4)
    tx, ty, tz = T_VELO
    # K @ [R | T] with R mapping (x fwd, y left, z up) -> (right, down, forward), written out by hand
    expected = np.array([[CX, -FX, 0.0, FX * tx + CX * tz],
                         [CY, 0.0, -FX, FX * ty + CY * tz],
                         [1.0, 0.0, 0.0, tz]])
    np.testing.assert_allclose(P2, expected, rtol=1e-12, atol=1e-9)
    P3, shape3 = velodyne_projection(tmp_path, "image_03")
    assert shape3 == shape                                  # S_rect_02 for both cameras, as Monodepth2
    np.testing.assert_allclose(P3 - P2, [[0, 0, 0, BASELINE], [0, 0, 0, 0], [0, 0, 0, 0]], atol=1e-9)


def test_velodyne_projection_applies_r_rect(tmp_path):
    a = 0.02
    r_rect = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    _write_calib(tmp_path, r_rect=r_rect)
    P, _ = velodyne_projection(tmp_path, "image_02")
    k = np.array([[FX, 0, CX, 0], [0, FX, CY, 0], [0, 0, 1, 0]])
    rect = np.eye(4)
    rect[:3, :3] = r_rect
    v2c = np.eye(4)
    v2c[:3, :3], v2c[:3, 3] = R_VELO, T_VELO
    np.testing.assert_allclose(P, k @ rect @ v2c, rtol=1e-6, atol=1e-5)  # the file holds 7 significant digits
    assert not np.allclose(P, k @ v2c, atol=1.0)            # the rectification is really applied


@pytest.mark.parametrize("drop, override, name, key", [
    (("P_rect_03",), None, "calib_cam_to_cam.txt", "P_rect_03"),
    (("R_rect_00",), None, "calib_cam_to_cam.txt", "R_rect_00"),
    ((), {"S_rect_02": "1242 375 1"}, "calib_cam_to_cam.txt", "S_rect_02"),
    ((), {"S_rect_02": "1242.5 375"}, "calib_cam_to_cam.txt", "S_rect_02"),
    ((), {"R": "1 0 0 0 1 0 0 0"}, "calib_velo_to_cam.txt", "'R'"),
    (("T",), None, "calib_velo_to_cam.txt", "'T'"),
])
def test_velodyne_projection_bad_calib_names_file_and_key(tmp_path, drop, override, name, key):
    _write_calib(tmp_path, drop=drop, override=override)
    with pytest.raises(ValueError) as e:
        velodyne_projection(tmp_path, "image_03")
    assert name in str(e.value) and key in str(e.value)


def test_velodyne_projection_bad_camera_and_missing_file(tmp_path):
    _write_calib(tmp_path)
    with pytest.raises(ValueError, match="image_01"):
        velodyne_projection(tmp_path, "image_01")
    (tmp_path / "calib_velo_to_cam.txt").unlink()
    with pytest.raises(ValueError, match="calib_velo_to_cam.txt"):
        velodyne_projection(tmp_path, "image_02")


# ---------------------------------------------------------------------------------------------------- .bin scans

def test_read_velodyne_points_round_trip_and_errors(tmp_path):
    pts = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    path = tmp_path / "0000000003.bin"
    pts.astype("<f4").tofile(path)
    out = read_velodyne_points(path)
    assert out.dtype == np.float32 and out.shape == (7, 4)
    np.testing.assert_array_equal(out, pts)
    path.write_bytes(path.read_bytes()[:-4])                 # 108 bytes: not a multiple of 16
    with pytest.raises(ValueError, match=r"0000000003\.bin.*108"):
        read_velodyne_points(path)
    with pytest.raises(ValueError, match="nothere.bin"):
        read_velodyne_points(tmp_path / "nothere.bin")


# ---------------------------------------------------------------------------------------------------- projection

def test_hand_computed_pixels_and_depth_is_velodyne_x(tmp_path):
    _write_calib(tmp_path)
    P, shape = velodyne_projection(tmp_path, "image_02")
    # A: camera (0, 0, 10) = Velodyne (10.27, 0.05, -0.08): u = cx = 609.5593 -> col 610 - 1 = 609,
    #    v = cy = 172.854 -> row 173 - 1 = 172; depth = Velodyne x = 10.27 (camera z is 10.0).
    # B: camera (2, -1, 20) = Velodyne (20.27, -1.95, 0.92): u = 721.5377 * 2 / 20 + 609.5593 = 681.71307
    #    -> col 681; v = -721.5377 / 20 + 172.854 = 136.777115 -> row 136; depth 20.27 (camera z 20.0).
    depth = project_velodyne(_cloud((10.27, 0.05, -0.08), (20.27, -1.95, 0.92)), P, shape)
    assert depth.dtype == np.float32 and depth.shape == (375, 1242)
    assert depth[172, 609] == np.float32(10.27) and depth[136, 681] == np.float32(20.27)
    assert np.count_nonzero(depth) == 2
    # (N, 3) input (no reflectance) gives the same map
    np.testing.assert_array_equal(project_velodyne(_cloud((10.27, 0.05, -0.08), (20.27, -1.95, 0.92))[:, :3],
                                                   P, shape), depth)


def test_image_03_shifts_columns_by_baseline(tmp_path):
    _write_calib(tmp_path)
    P, shape = velodyne_projection(tmp_path, "image_03")
    # u_03 = u_02 + P_rect_03[0, 3] / z_cam: A 609.5593 - 38.757 = 570.8023 -> col 570;
    # B 681.71307 - 19.3785 = 662.33457 -> col 661; rows unchanged.
    depth = project_velodyne(_cloud((10.27, 0.05, -0.08), (20.27, -1.95, 0.92)), P, shape)
    assert depth[172, 570] == np.float32(10.27) and depth[136, 661] == np.float32(20.27)
    assert np.count_nonzero(depth) == 2


def test_points_behind_are_dropped(tmp_path):
    _write_calib(tmp_path)
    P, shape = velodyne_projection(tmp_path, "image_02")
    # camera (0, 0, -10.27): p = (cx, cy, 1) * -10.27 would land on pixel (172, 609) if x < 0 were kept
    behind = (-10.0, 0.05, -0.08)
    assert not project_velodyne(_cloud(behind), P, shape).any()
    # ... and it does not take part in the minimum either (its depth -10 would win, then be zeroed)
    depth = project_velodyne(_cloud(behind, (10.27, 0.05, -0.08)), P, shape)
    assert depth[172, 609] == np.float32(10.27) and np.count_nonzero(depth) == 1


def test_points_outside_are_dropped_with_the_minus_one_offset(tmp_path):
    _write_calib(tmp_path)
    P, (h, w) = velodyne_projection(tmp_path, "image_02")
    kept = {(0, 0): (0.6, 0.6), (h - 1, w - 1): (w + 0.4, h + 0.4), (5, w - 1): (w + 0.4, 6.0)}
    dropped = [(0.4, 10.0), (w + 0.6, 10.0), (10.0, 0.4), (10.0, h + 0.6), (-300.0, 10.0), (5000.0, 10.0)]
    depth = project_velodyne(_cloud(*[_velo(u, v, 10.0) for u, v in [*kept.values(), *dropped]]), P, (h, w))
    assert {tuple(rc) for rc in np.argwhere(depth)} == set(kept)
    assert np.all(depth[tuple(np.array(list(kept)).T)] == np.float32(10.27))


def test_two_points_on_one_pixel_keep_the_smaller_depth(tmp_path):
    _write_calib(tmp_path)
    P, shape = velodyne_projection(tmp_path, "image_02")
    near, far = (10.27, 0.05, -0.08), (30.27, 0.05, -0.08)         # both on the optical axis: pixel (172, 609)
    for order in ((near, far), (far, near)):
        depth = project_velodyne(_cloud(*order), P, shape)
        assert depth[172, 609] == np.float32(10.27) and np.count_nonzero(depth) == 1


def test_first_and_last_column_pixels_keep_their_own_minimum(tmp_path):
    """(r, w-1) and (r+1, 0) are distinct pixels (Monodepth2's sub2ind aliases them)."""
    _write_calib(tmp_path, **{k: SMALL[k] for k in ("width", "height", "fx", "cx", "cy")})
    P, (h, w) = velodyne_projection(tmp_path, "image_02")
    assert (h, w) == (30, 40)
    s = {k: SMALL[k] for k in ("fx", "cx", "cy")}
    pts = [_velo(w, 6.0, 7.0, **s), _velo(1.0, 7.0, 3.0, **s), _velo(w, 6.0, 9.0, **s), _velo(1.0, 7.0, 5.0, **s)]
    depth = project_velodyne(_cloud(*pts), P, (h, w))
    assert depth[5, w - 1] == np.float32(7.0 - T_VELO[2]) and depth[6, 0] == np.float32(3.0 - T_VELO[2])
    assert np.count_nonzero(depth) == 2


def _reference(points, P, shape):
    """Slow reference: one point at a time, per-pixel minima in a dict."""
    h, w = shape
    best = {}
    for x, y, z in np.asarray(points, dtype=np.float64)[:, :3]:
        if not x >= 0:
            continue
        p = P @ np.array([x, y, z, 1.0])
        col, row = int(np.round(p[0] / p[2])) - 1, int(np.round(p[1] / p[2])) - 1
        if 0 <= col < w and 0 <= row < h:
            d = float(np.float32(x))
            best[row, col] = min(best.get((row, col), np.inf), d)
    out = np.zeros(shape, np.float32)
    for (row, col), d in best.items():
        out[row, col] = max(d, 0.0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("camera", ["image_02", "image_03"])
def test_vectorised_projection_equals_slow_reference(tmp_path, seed, camera):
    a = 0.03
    r_rect = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    _write_calib(tmp_path, r_rect=r_rect, **SMALL)
    P, shape = velodyne_projection(tmp_path, camera)
    rng = np.random.default_rng(seed)
    n = 600
    pts = np.stack([rng.uniform(-5, 40, n), rng.uniform(-30, 30, n), rng.uniform(-4, 4, n),
                    rng.uniform(0, 1, n)], axis=1).astype(np.float32)
    pts[:40, 0] = rng.uniform(0, 0.3, 40)                           # near the sensor, some behind the camera plane
    pts[40:60] = pts[60:80] * np.array([1.5, 1.5, 1.5, 1], np.float32)  # same rays farther away: shared pixels
    expected = _reference(pts, P, shape)
    got = project_velodyne(pts, P, shape)
    assert got.dtype == np.float32
    assert np.count_nonzero(expected) > 50                         # the cloud really hits the image
    np.testing.assert_array_equal(got, expected)


def test_project_velodyne_rejects_bad_shapes():
    P = np.zeros((3, 4))
    with pytest.raises(ValueError, match="points"):
        project_velodyne(np.zeros((5, 2)), P, (3, 4))
    with pytest.raises(ValueError, match="P_velo2im"):
        project_velodyne(np.zeros((5, 4)), np.zeros((4, 4)), (3, 4))
    with pytest.raises(ValueError, match="shape"):
        project_velodyne(np.zeros((5, 4)), P, (0, 4))


# ---------------------------------------------------------------------------------------------------- frames

def test_velodyne_depth_map_from_raw_layout(tmp_path):
    _write_calib(tmp_path / DATE)
    path = _write_bin(tmp_path, 69, _cloud((10.27, 0.05, -0.08), (20.27, -1.95, 0.92), (-3.0, 1.0, 0.0)))
    assert path == tmp_path / DATE / f"{DATE}_drive_0002_sync" / "velodyne_points" / "data" / "0000000069.bin"
    left = velodyne_depth_map(tmp_path, FOLDER, 69, "image_02")
    assert left.dtype == np.float32 and left.shape == (375, 1242)
    assert left[172, 609] == np.float32(10.27) and left[136, 681] == np.float32(20.27)
    assert np.count_nonzero(left) == 2
    right = velodyne_depth_map(tmp_path, FOLDER, 69, "image_03")
    assert right[172, 570] == np.float32(10.27) and np.count_nonzero(right) == 2


def test_velodyne_depth_map_missing_files_are_named(tmp_path):
    _write_calib(tmp_path / DATE)
    with pytest.raises(ValueError, match="0000000005.bin"):
        velodyne_depth_map(tmp_path, FOLDER, 5, "image_02")
    _write_bin(tmp_path, 5, _cloud((10.27, 0.05, -0.08)))
    (tmp_path / DATE / "calib_cam_to_cam.txt").unlink()
    with pytest.raises(ValueError, match="calib_cam_to_cam.txt"):
        velodyne_depth_map(tmp_path, FOLDER, 5, "image_02")
    with pytest.raises(ValueError, match="folder"):
        velodyne_path(tmp_path, f"{DATE}_drive_0002_sync", 5)
    with pytest.raises(ValueError, match="frame"):
        velodyne_path(tmp_path, FOLDER, -1)


# ---------------------------------------------------------------------------------------------------- gt_depths.npz

def _maps(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [np.where(rng.uniform(size=s) < 0.3, rng.uniform(1, 80, size=s), 0).astype(np.float32) for s in shapes]


def test_gt_depths_npz_stacked_round_trip(tmp_path):
    maps = _maps([(6, 9)] * 3)
    path = tmp_path / "gt_depths.npz"
    np.savez_compressed(path, data=np.array(maps))                 # what export_gt_depth.py writes: (3, 6, 9)
    out = read_gt_depths_npz(path, expected_count=3)
    assert len(out) == 3 and all(m.dtype == np.float32 and m.shape == (6, 9) for m in out)
    for a, b in zip(out, maps):
        np.testing.assert_array_equal(a, b)


def test_gt_depths_npz_object_array_round_trip(tmp_path):
    maps = _maps([(6, 9), (5, 11), (6, 9)], seed=1)
    data = np.empty(len(maps), dtype=object)                       # several image sizes: a ragged object array
    data[:] = maps
    path = tmp_path / "gt_depths.npz"
    np.savez_compressed(path, data=data)
    out = read_gt_depths_npz(path)
    assert [m.shape for m in out] == [(6, 9), (5, 11), (6, 9)] and all(m.dtype == np.float32 for m in out)
    for a, b in zip(out, maps):
        np.testing.assert_array_equal(a, b)


def test_gt_depths_npz_errors_name_the_file(tmp_path):
    path = tmp_path / "gt_depths.npz"
    with pytest.raises(ValueError, match="gt_depths.npz"):
        read_gt_depths_npz(path)                                   # missing
    np.savez_compressed(path, data=np.array(_maps([(4, 5)] * 2)))
    with pytest.raises(ValueError, match=r"gt_depths\.npz.*2 depth maps, expected 697.*test_files\.txt"):
        read_gt_depths_npz(path, expected_count=697)

    flat = np.empty(2, dtype=object)
    flat[:] = [np.ones((4, 5), np.float32), np.ones(20, np.float32)]
    np.savez_compressed(path, data=flat)
    with pytest.raises(ValueError, match=r"gt_depths\.npz.*depth map 1.*2-D"):
        read_gt_depths_npz(path)
    np.savez_compressed(path, data=np.ones((4, 5), np.float32))    # one map without the N axis
    with pytest.raises(ValueError, match=r"gt_depths\.npz.*\(N, h, w\)"):
        read_gt_depths_npz(path)

    np.savez_compressed(path, depth=np.ones((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"gt_depths\.npz.*'data'"):
        read_gt_depths_npz(path)
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(ValueError, match="gt_depths.npz"):
        read_gt_depths_npz(path)
    np.savez_compressed(path, data=np.array(_maps([(40, 50)] * 2)))
    path.write_bytes(path.read_bytes()[:200] + bytes(200) + path.read_bytes()[400:])   # damaged payload
    with pytest.raises(ValueError, match="gt_depths.npz"):
        read_gt_depths_npz(path)
