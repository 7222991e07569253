"""Miniature replicas of the real KITTI and NYUv2 downloads, built from their public specifications, run end to end
through ``prepare_dataset`` and a tiny stage-1 training; KITTI / NYUv2 metrics at native resolution by hand.

KITTI replica: KITTI raw (two recording dates, one drive each: the real image size is fixed per date by its
calibration, 375x1242, 370x1224, ...; here 30x100 and 31x102), 10-digit PNG frames of image_02 / image_03,
``calib_cam_to_cam.txt`` / ``calib_velo_to_cam.txt`` in the real text format (2011_09_26's rotations and
translations, intrinsics scaled to the miniature size), ``velodyne_points/data/*.bin`` (float32 x y z r), the depth
benchmark's annotated uint16 PNGs placed as the devkit unpacks them, as the project layout expects them, inside
the drives (Monodepth2), or absent; Monodepth2's ``splits/`` folder (eigen_zhou unpadded, eigen / eigen_benchmark
zero-padded). Every Velodyne point is placed by inverting the projection from a chosen pixel and homogeneous
depth, so each frame's expected ground truth is known without projecting anything.

NYUv2 replica: ``nyu_depth_v2_labeled.mat`` as MATLAB -v7.3 writes it (HDF5 behind a 512-byte MAT header, arrays
column-major, i.e. h5py sees images (N, 3, 640, 480) uint8 and depths (N, 640, 480) float32) at the real 480x640,
and ``splits.mat`` as MATLAB v5 (1-based trainNdxs / testNdxs column vectors of doubles).
"""

import math
import shutil

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from dko.config import config_from_dict
from dko.data.format import load_split, read_meta
from dko.data.prepare import prepare_dataset
from dko.depth.evaluate import evaluate_predictor
from dko.depth.train import train_electronic
from dko.metrics import METRIC_NAMES, upsample_prediction

# ------------------------------------------------------------------------------------------------ tiny training

TINY = {
    "seed": 2,
    "device": "cpu",
    "network": {"blocks_per_stage": [1, 1, 1, 1], "base_width": 4, "decoder_channels": [4, 4, 4, 8, 8]},
    "train": {"steps": 3, "batch_size": 2, "warmup_steps": 0, "log_every": 1, "checkpoint_every": 1000,
              "val_every": 1000, "lr": 0.01, "collapse_check": False},
}
HEIGHT, WIDTH = 16, 48                                   # dataset resolution of the KITTI replicas


def _train(cfg, data_dir, out_dir):
    """A 3-step stage-1 training on the prepared replica; returns its result after checking the model file."""
    torch.set_num_threads(1)
    result = train_electronic(cfg, data_dir, out_dir, device="cpu", progress=False)
    assert (out_dir / "model.pt").is_file() and result["model_path"] == str(out_dir / "model.pt")
    assert result["steps"] == 3 and math.isfinite(result["final_train_loss"])
    assert math.isfinite(result["val"]["abs_rel"])
    return result


# ------------------------------------------------------------------------------------------------ KITTI replica

A = "2011_09_26/2011_09_26_drive_0002_sync"
B = "2011_09_28/2011_09_28_drive_0001_sync"
SIZE = {"2011_09_26": (30, 100), "2011_09_28": (31, 102)}        # (h, w) per date = S_rect_02 reversed
FRAMES = {A: (3, 12, 27, 40, 55, 70), B: (1, 9, 22, 35, 48)}
NO_ANNOTATION = {(A, 3), (B, 1)}     # the benchmark has no map for a drive's first frames (11-scan accumulation)
DEVKIT_SUBSET = {A: "train", B: "val"}                           # the depth benchmark assigns each drive to one
TRAIN_LINES = [f"{A} 12 l", f"{A} 12 r", f"{B} 9 l", f"{A} 27 r", f"{B} 22 l", f"{A} 3 l", f"{B} 22 r"]
VAL_LINES = [f"{A} 40 l", f"{B} 35 r"]
EIGEN_TEST = [(A, 55), (B, 1), (A, 70), (B, 48)]
BENCHMARK_TEST = [(A, 55), (A, 70), (B, 48)]                     # the eigen lines that have an annotated map
CAMERAS = {"l": "image_02", "r": "image_03"}

# 2011_09_26's calibration (R_rect_00, velo -> cam R and T as KITTI ships them); 2011_09_28: made-up values alike
R_RECT = {"2011_09_26": [9.999239e-01, 9.837760e-03, -7.445048e-03, -9.869795e-03, 9.999421e-01, -4.278459e-03,
                         7.402527e-03, 4.351614e-03, 9.999631e-01],
          "2011_09_28": [9.999280e-01, 8.085985e-03, -8.866797e-03, -8.123205e-03, 9.999583e-01, -4.169750e-03,
                         8.832711e-03, 4.241477e-03, 9.999520e-01]}
VELO_R = {"2011_09_26": [7.533745e-03, -9.999714e-01, -6.166020e-04, 1.480249e-02, 7.280733e-04, -9.998902e-01,
                         9.998621e-01, 7.523790e-03, 1.480755e-02],
          "2011_09_28": [6.927964e-03, -9.999722e-01, -2.757829e-03, -1.162982e-03, 2.749836e-03, -9.999955e-01,
                         9.999753e-01, 6.931141e-03, -1.143899e-03]}
VELO_T = {"2011_09_26": [-4.069766e-03, -7.631618e-02, -2.717806e-01],
          "2011_09_28": [-2.457729e-02, -6.127237e-02, -3.321029e-01]}
SPOTS = {A: {(20, 50): 10.0, (15, 7): 25.0, (28, 90): 3.0}, B: {(21, 60): 12.0, (13, 95): 40.0}}
"""Hand-placed points (row, col of image_02) -> homogeneous depth p2 in metres, in every frame of the drive."""


def _q(values) -> np.ndarray:
    """Values as a calibration file holds them (``%e``: 7 significant digits), float64."""
    return np.array([float(f"{v:e}") for v in np.ravel(values)])


def _date(folder: str) -> str:
    return folder.split("/")[0]


def _calibration(date: str) -> dict:
    """Rectified projections P_rect_02 / P_rect_03 (3x4), R_rect_00 and velo -> cam R (3x3), T (3), as written."""
    h, w = SIZE[date]
    s = w / 1242.0                                   # scale of the real 1242-pixel-wide intrinsics
    fx, cx, cy = 721.5377 * s, 0.4908 * w, 0.4609 * h
    p2 = [[fx, 0, cx, 44.85728 * s], [0, fx, cy, 0.2163791 * s], [0, 0, 1, 2.745884e-03]]
    p3 = [[fx, 0, cx, -339.5242 * s], [0, fx, cy, 2.199936 * s], [0, 0, 1, 2.729905e-03]]
    return {"P_rect_02": _q(p2).reshape(3, 4), "P_rect_03": _q(p3).reshape(3, 4),
            "R_rect_00": _q(R_RECT[date]).reshape(3, 3), "R": _q(VELO_R[date]).reshape(3, 3), "T": _q(VELO_T[date]),
            "size": (h, w), "K_raw": _q([[fx * 1.35, 0, cx + 3], [0, fx * 1.35, cy + 2], [0, 0, 1]])}


def _fmt(values) -> str:
    return " ".join(f"{v:e}" for v in np.ravel(values))


def _write_calibration(date_dir, date: str) -> None:
    """calib_cam_to_cam.txt, calib_velo_to_cam.txt (and calib_imu_to_velo.txt) in KITTI raw's text format."""
    cal = _calibration(date)
    h, w = cal["size"]
    lines = ["calib_time: 09-Jan-2012 13:57:47", f"corner_dist: {_fmt([9.95e-02])}"]
    for i in range(4):
        p = {0: cal["P_rect_02"] * [1, 1, 1, 0], 1: cal["P_rect_02"] * [1, 1, 1, 0] + [[0, 0, 0, -387.57 * w / 1242],
                                                                                      [0, 0, 0, 0], [0, 0, 0, 0]],
             2: cal["P_rect_02"], 3: cal["P_rect_03"]}[i]
        lines += [f"S_{i:02d}: {_fmt([w + 12, h + 6])}", f"K_{i:02d}: {_fmt(cal['K_raw'])}",
                  f"D_{i:02d}: {_fmt([-3.691481e-01, 1.968681e-01, 1.353473e-03, 5.677587e-04, -6.770705e-02])}",
                  f"R_{i:02d}: {_fmt(np.eye(3))}", f"T_{i:02d}: {_fmt([-0.54 * (i % 2), 0.0, 0.0])}",
                  f"S_rect_{i:02d}: {_fmt([w, h])}",
                  f"R_rect_{i:02d}: {_fmt(cal['R_rect_00'] if i == 0 else np.eye(3))}", f"P_rect_{i:02d}: {_fmt(p)}"]
    date_dir.mkdir(parents=True, exist_ok=True)
    (date_dir / "calib_cam_to_cam.txt").write_text("\n".join(lines) + "\n")
    (date_dir / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {_fmt(cal['R'])}\nT: {_fmt(cal['T'])}\n"
        f"delta_f: {_fmt([0, 0])}\ndelta_c: {_fmt([0, 0])}\n")
    (date_dir / "calib_imu_to_velo.txt").write_text(
        f"calib_time: 25-May-2012 16:47:16\nR: {_fmt(np.eye(3))}\nT: {_fmt([-0.81, 0.32, -0.8])}\n")


def _velodyne_point(cal: dict, row: float, col: float, p2: float) -> np.ndarray:
    """The Velodyne (x, y, z) in metres that image_02 sees at pixel (row, col) (KITTI's 1-based u = col + 1,
    v = row + 1) with homogeneous depth ``p2``: the projection P_rect_02 R_rect_00 [R | T] inverted step by step."""
    P = cal["P_rect_02"]
    rect = np.linalg.solve(P[:, :3], p2 * np.array([col + 1.0, row + 1.0, 1.0]) - P[:, 3])
    cam = np.linalg.solve(cal["R_rect_00"], rect)
    return np.linalg.solve(cal["R"], cam - cal["T"])


def _scan(folder: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame's Velodyne scan, float32 (N, 4), and its expected image_02 ground truth, float32 (h, w): per
    placed pixel the point's Velodyne x (one point a pixel), 0 elsewhere; points behind the sensor and outside the
    image are in the scan too."""
    cal = _calibration(_date(folder))
    h, w = cal["size"]
    wanted = {}
    for r in range(int(0.35 * h), h):
        for c in range(w):
            if (r + c + frame) % 2 == 0:
                wanted[r, c] = 2.0 + 40.0 * (h - r) / h + 0.03 * c + 0.05 * (frame % 7)
    for c in range(1, w, 9):
        wanted[int(0.45 * h), c] = 85.0 + 0.1 * c                       # beyond the 80 m cap
    wanted.update(SPOTS[folder])
    kept = np.array([_velodyne_point(cal, r, c, p2) for (r, c), p2 in wanted.items()]).astype(np.float32)
    expected = np.zeros((h, w), np.float32)
    for (r, c), x in zip(wanted, kept[:, 0]):
        expected[r, c] = x
    behind = -kept[::5]                                                 # x < 0: behind the sensor
    outside = np.array([_velodyne_point(cal, r, c, 30.0) for r, c in
                        ((-3, 10), (h + 1, 10), (10, -4), (10, w + 2), (-40, -40))], np.float32)
    xyz = np.concatenate([kept, behind, outside])
    reflectance = (0.1 + 0.8 * (np.arange(len(xyz)) % 10) / 10).astype(np.float32)[:, None]
    return np.hstack([xyz, reflectance]).astype("<f4"), expected


def _image(folder: str, frame: int, camera: str) -> np.ndarray:
    h, w = SIZE[_date(folder)]
    r, c = np.mgrid[:h, :w]
    shift = 3 if camera == "image_03" else 0
    return np.stack([(7 * r + 2 * frame) % 256, (2 * (c + shift) + 11 * len(folder)) % 256,
                     (r * c + 5 * frame) % 256], axis=-1).astype(np.uint8)


def _annotated(folder: str, frame: int, camera: str) -> np.ndarray:
    """The depth benchmark's map: uint16 (h, w), depth = value / 256 m, 0 = none (top rows, a lattice of holes),
    with a few depths beyond 80 m."""
    h, w = SIZE[_date(folder)]
    r, c = np.mgrid[:h, :w]
    depth = 1.5 + 30.0 * (h - r) / h + 0.02 * c + 0.4 * (camera == "image_03") + 0.01 * frame
    raw = np.round(depth * 256).astype(np.uint16)
    raw[(r + 2 * c + frame) % 4 == 0] = 0
    raw[r < int(0.3 * h)] = 0
    raw[int(0.3 * h), ::7] = 85 * 256 + frame
    return raw


LAYOUTS = ("devkit", "project", "in_drive", "velodyne")


def _build_kitti(root, layout: str, gt_dir=None):
    """Write the replica into ``root`` with the annotated maps placed by ``layout``: ``devkit`` (train/ and val/
    at the top of ``gt_dir``), ``project`` (``<root>/data_depth_annotated``), ``in_drive`` (Monodepth2:
    ``<root>/<date>/<drive>/proj_depth``), ``velodyne`` (none). Returns ``root``."""
    for date in SIZE:
        _write_calibration(root / date, date)
    for folder, frames in FRAMES.items():
        drive = folder.split("/")[1]
        for frame in frames:
            for camera in CAMERAS.values():
                img_dir = root / folder / camera / "data"
                img_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_image(folder, frame, camera)).save(img_dir / f"{frame:010d}.png")
            velo_dir = root / folder / "velodyne_points" / "data"
            velo_dir.mkdir(parents=True, exist_ok=True)
            _scan(folder, frame)[0].tofile(velo_dir / f"{frame:010d}.bin")
            if layout == "velodyne" or (folder, frame) in NO_ANNOTATION:
                continue
            base = {"devkit": (gt_dir / DEVKIT_SUBSET[folder] / drive if gt_dir else None),
                    "project": root / "data_depth_annotated" / DEVKIT_SUBSET[folder] / drive,
                    "in_drive": root / folder}[layout]
            for camera in CAMERAS.values():
                out = base / "proj_depth" / "groundtruth" / camera
                out.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_annotated(folder, frame, camera)).save(out / f"{frame:010d}.png")
    splits = root / "splits"
    lists = {"eigen_zhou/train_files.txt": TRAIN_LINES, "eigen_zhou/val_files.txt": VAL_LINES,
             "eigen/test_files.txt": [f"{f} {n:010d} l" for f, n in EIGEN_TEST],
             "eigen_benchmark/test_files.txt": [f"{f} {n:010d} l" for f, n in BENCHMARK_TEST]}
    for name, lines in lists.items():
        (splits / name).parent.mkdir(parents=True, exist_ok=True)
        (splits / name).write_text("\n".join(lines) + "\n")
    return root


def _kitti_cfg(root, **data):
    d = dict(source="kitti", root=str(root), height=HEIGHT, width=WIDTH, workers=1, protocol="eigen_benchmark")
    d.update(data)
    return config_from_dict({**TINY, "data": d})


def _name(folder: str, frame: int, side: str = "l") -> str:
    return f"{folder.split('/')[1]}/{CAMERAS[side]}/{frame:010d}"


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    """The four layouts prepared: the annotated ones with protocol eigen_benchmark, the Velodyne-only one with
    eigen. ``{layout: (root, dataset folder, cfg)}``."""
    base = tmp_path_factory.mktemp("kitti_replicas")
    out = {}
    for layout in LAYOUTS:
        root = base / layout / "kitti_raw"
        gt_dir = base / layout / "devkit_unpack" if layout == "devkit" else None
        _build_kitti(root, layout, gt_dir)
        extra = {"gt_dir": str(gt_dir)} if gt_dir else {}
        cfg = _kitti_cfg(root, protocol="eigen" if layout == "velodyne" else "eigen_benchmark", **extra)
        prepare_dataset(cfg, base / layout / "data")
        out[layout] = (root, base / layout / "data", cfg)
    return out


def test_replica_files_follow_the_real_formats(tmp_path):
    root = _build_kitti(tmp_path / "kitti_raw", "project")
    first = (root / "splits" / "eigen_zhou" / "train_files.txt").read_text().splitlines()[0]
    assert first == "2011_09_26/2011_09_26_drive_0002_sync 12 l"                      # unpadded, as eigen_zhou
    assert (root / "splits" / "eigen" / "test_files.txt").read_text().splitlines()[1] == \
        "2011_09_28/2011_09_28_drive_0001_sync 0000000001 l"                          # zero-padded, as eigen
    scan = np.fromfile(root / A / "velodyne_points" / "data" / "0000000012.bin", dtype="<f4")
    assert scan.size % 4 == 0 and scan.size // 4 > 500
    with Image.open(root / "data_depth_annotated" / "train" / "2011_09_26_drive_0002_sync" / "proj_depth"
                    / "groundtruth" / "image_02" / "0000000012.png") as img:
        assert img.mode in ("I;16", "I") and img.size == (100, 30)
    cam = (root / "2011_09_28" / "calib_cam_to_cam.txt").read_text()
    assert "S_rect_02: 1.020000e+02 3.100000e+01\n" in cam and cam.startswith("calib_time: 09-Jan-2012")
    with Image.open(root / B / "image_03" / "data" / "0000000048.png") as img:
        assert img.mode == "RGB" and img.size == (102, 31)


def test_annotated_layouts_give_identical_datasets(kitti):
    sets = {layout: kitti[layout][1] for layout in ("devkit", "project", "in_drive")}
    ref = sets["devkit"]
    meta = read_meta(ref)
    assert meta["protocol"] == "eigen_benchmark"
    assert meta["ground_truth"] == {"train": "annotated", "val": "annotated", "test": "annotated"}
    assert meta["counts"] == {"train": 6, "val": 2, "test": 3}
    assert meta["missing_gt"] == {"train": 1, "val": 0, "test": 0}                    # A frame 3: no map
    assert meta["original_sizes"] == {"30x100": 6, "31x102": 5}
    assert load_split(ref, "train").names == [_name(A, 12), _name(A, 12, "r"), _name(B, 9), _name(A, 27, "r"),
                                              _name(B, 22), _name(B, 22, "r")]
    for layout, data in sets.items():
        other = read_meta(data)
        for key in ("counts", "missing_gt", "ground_truth", "original_sizes", "split_lines"):
            assert other[key] == meta[key], (layout, key)
        for split in ("train", "val", "test"):
            a, b = load_split(ref, split, mmap=False), load_split(data, split, mmap=False)
            assert a.names == b.names, (layout, split)
            assert a.images.tobytes() == b.images.tobytes() and a.depth.tobytes() == b.depth.tobytes()
            assert (a.native is None) == (b.native is None) == (split != "test")
            if a.native is not None:
                for name in ("shapes", "offsets", "index", "values"):
                    np.testing.assert_array_equal(getattr(a.native, name), getattr(b.native, name))


def test_benchmark_test_split_native_gt_is_the_annotated_png(kitti):
    test = load_split(kitti["in_drive"][1], "test", mmap=False)
    assert test.names == [_name(f, n) for f, n in BENCHMARK_TEST]
    assert test.images.shape == (3, HEIGHT, WIDTH, 3) and test.depth.shape == (3, HEIGHT, WIDTH)
    assert [test.native.shape(i) for i in range(3)] == [(30, 100), (30, 100), (31, 102)]
    for i, (folder, frame) in enumerate(BENCHMARK_TEST):
        np.testing.assert_array_equal(test.native[i], _annotated(folder, frame, "image_02") / np.float32(256))
    assert test.native[0].max() > 80                                                   # kept: no cap on the GT


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_trains(kitti, layout, tmp_path):
    root, data, cfg = kitti[layout]
    _train(cfg, data, tmp_path / "stage1")


def _check_velodyne_test_split(data) -> None:
    meta = read_meta(data)
    assert meta["protocol"] == "eigen" and meta["ground_truth"]["test"] == "velodyne"
    assert meta["ground_truth_from"]["test"] == "velodyne"
    test = load_split(data, "test", mmap=False)
    assert test.names == [_name(f, n) for f, n in EIGEN_TEST]                         # B 1 has no map: kept here
    assert [test.native.shape(i) for i in range(4)] == [(30, 100), (31, 102), (30, 100), (31, 102)]
    for i, (folder, frame) in enumerate(EIGEN_TEST):
        expected = _scan(folder, frame)[1]
        native = test.native[i]
        assert native.dtype == np.float32
        np.testing.assert_array_equal(native, expected)
        for (r, c), p2 in SPOTS[folder].items():                   # depth = the point's Velodyne x, not p2
            x = _velodyne_point(_calibration(_date(folder)), r, c, p2)[0]
            assert native[r, c] == np.float32(x) and abs(x - p2) > 0.2
    spot = test.native[0]
    assert spot[20, 50] == np.float32(_velodyne_point(_calibration("2011_09_26"), 20, 50, 10.0)[0])
    assert spot[20, 48] == 0 and spot[20, 52] == 0 and spot[20, 49] > 0     # no point where r + c + 55 is odd


def test_velodyne_only_layout_is_the_hand_projection(kitti):
    root, data, _ = kitti["velodyne"]
    assert not list(root.rglob("proj_depth")) and not (root / "data_depth_annotated").exists()
    meta = read_meta(data)
    assert meta["ground_truth"] == {"train": "velodyne", "val": "velodyne", "test": "velodyne"}
    assert meta["counts"] == {"train": 7, "val": 2, "test": 4}
    assert meta["missing_gt"] == {"train": 0, "val": 0, "test": 0}
    _check_velodyne_test_split(data)
    train = load_split(data, "train", mmap=False)
    assert train.names[-2:] == [_name(A, 3), _name(B, 22, "r")]
    assert all(np.count_nonzero(d) > 0.2 * d.size for d in train.depth)


def test_devkit_layout_with_the_eigen_protocol(kitti, tmp_path):
    root, _, cfg = kitti["devkit"]
    gt_dir = cfg.data.gt_dir
    prepare_dataset(_kitti_cfg(root, protocol="eigen", gt_dir=gt_dir), tmp_path / "velodyne_gt")
    meta = read_meta(tmp_path / "velodyne_gt")
    assert meta["ground_truth"] == {"train": "velodyne", "val": "velodyne", "test": "velodyne"}
    assert meta["split_files"]["test"] == str(root / "splits" / "eigen" / "test_files.txt")
    _check_velodyne_test_split(tmp_path / "velodyne_gt")

    prepare_dataset(_kitti_cfg(root, protocol="eigen", gt_dir=gt_dir, train_gt="annotated"), tmp_path / "mixed")
    meta = read_meta(tmp_path / "mixed")
    assert meta["ground_truth"] == {"train": "annotated", "val": "annotated", "test": "velodyne"}
    assert meta["counts"] == {"train": 6, "val": 2, "test": 4}
    _check_velodyne_test_split(tmp_path / "mixed")
    a = load_split(tmp_path / "mixed", "val", mmap=False)
    b = load_split(kitti["devkit"][1], "val", mmap=False)
    assert a.depth.tobytes() == b.depth.tobytes()                        # annotated training GT as with benchmark


def test_gt_depths_npz_in_the_eigen_folder_is_the_test_ground_truth(tmp_path):
    root = _build_kitti(tmp_path / "kitti_raw", "velodyne")
    maps = []
    for folder, frame in EIGEN_TEST:                          # different from the projection: it must be read
        m = _scan(folder, frame)[1] * np.float32(1.25)
        m[0, : frame % 7 + 1] = 7.5
        maps.append(m)
    data = np.array(maps, dtype=object)                        # as export_gt_depth.py with several image sizes
    assert data.shape == (4,) and data.dtype == object
    npz = root / "splits" / "eigen" / "gt_depths.npz"
    np.savez_compressed(npz, data=data)
    out = tmp_path / "data"
    prepare_dataset(_kitti_cfg(root, protocol="eigen"), out)
    meta = read_meta(out)
    assert meta["ground_truth_from"]["test"] == str(npz) and meta["ground_truth_from"]["train"] == "velodyne"
    test = load_split(out, "test", mmap=False)
    assert [test.native.shape(i) for i in range(4)] == [m.shape for m in maps]
    for i, m in enumerate(maps):
        np.testing.assert_array_equal(test.native[i], m)


def test_splits_dir_elsewhere_and_test_split_as_a_path(tmp_path):
    root = _build_kitti(tmp_path / "kitti_raw", "velodyne")
    mine, lists = tmp_path / "my_splits", tmp_path / "lists"
    mine.mkdir()
    lists.mkdir()
    shutil.move(root / "splits" / "eigen_zhou", mine / "eigen_zhou")
    shutil.move(root / "splits" / "eigen", lists / "my_eigen")
    shutil.rmtree(root / "splits")
    out = tmp_path / "data"
    prepare_dataset(_kitti_cfg(root, protocol="eigen", splits_dir=str(mine), test_split=str(lists / "my_eigen")), out)
    meta = read_meta(out)
    assert meta["split_files"] == {"train": str(mine / "eigen_zhou" / "train_files.txt"),
                                   "val": str(mine / "eigen_zhou" / "val_files.txt"),
                                   "test": str(lists / "my_eigen" / "test_files.txt")}
    assert meta["counts"] == {"train": 7, "val": 2, "test": 4}
    _check_velodyne_test_split(out)


# ------------------------------------------------------------------------------------------------ metrics by hand

def _hand_metrics(gts, preds, protocol: str, median_scaling: bool) -> dict:
    """Monodepth2's evaluation written out: per image mask, optional median scaling, clip, seven metrics; mean."""
    rows = []
    for gt, pred in zip(gts, preds):
        gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
        h, w = gt.shape
        if protocol == "eigen":
            mask = (gt > 1e-3) & (gt < 80)
            crop = np.zeros_like(mask)
            crop[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = True
            mask &= crop
        elif protocol == "nyu":
            mask = (gt > 1e-3) & (gt < 10)
            crop = np.zeros_like(mask)
            crop[45:471, 41:601] = True
            mask &= crop
        else:
            mask = gt > 0
        g, p = gt[mask], pred[mask]
        if median_scaling:
            p = p * (np.median(g) / np.median(p))
        p = np.clip(p, 1e-3, 10.0 if protocol == "nyu" else 80.0)
        ratio = np.maximum(g / p, p / g)
        rows.append([np.mean(np.abs(g - p) / g), np.mean((g - p) ** 2 / g), np.sqrt(np.mean((g - p) ** 2)),
                     np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
                     np.mean(ratio < 1.25), np.mean(ratio < 1.25 ** 2), np.mean(ratio < 1.25 ** 3)])
    return dict(zip(METRIC_NAMES, np.mean(np.array(rows), axis=0)))


def _fixed_predictor(maps):
    """A predictor returning ``maps`` (float (h, w) depth each) in split order, batch after batch."""
    done = [0]

    def predict(images):
        out = np.asarray(maps[done[0]:done[0] + len(images)], dtype=np.float64)
        done[0] += len(images)
        return out

    return predict


def _evaluate(data, maps, median_scaling):
    meta = read_meta(data)
    return evaluate_predictor(_fixed_predictor(maps), load_split(data, "test"), meta["protocol"],
                              meta["min_depth_m"], meta["max_depth_m"], median_scaling=median_scaling, batch_size=3)


def _assert_metrics(result, expected):
    for name in METRIC_NAMES:
        assert result["metrics"][name] == pytest.approx(expected[name], rel=1e-12, abs=1e-12), name


@pytest.mark.parametrize("median_scaling", [False, True])
def test_eigen_metrics_of_a_constant_prediction_by_hand(kitti, median_scaling):
    data = kitti["velodyne"][1]
    result = _evaluate(data, np.full((4, HEIGHT, WIDTH), 12.5), median_scaling)
    gts = [_scan(f, n)[1] for f, n in EIGEN_TEST]                 # the hand projection, not the stored GT
    expected = _hand_metrics(gts, [np.full(g.shape, 12.5) for g in gts], "eigen", median_scaling)
    assert result["resolution"] == "native" and result["n_images"] == 4 and result["protocol"] == "eigen"
    # crop of 30x100: rows 12:29, columns 3:96; the 85 m points lie in the crop and are excluded by the cap
    assert result["n_pixels"] == sum(int(((g > 1e-3) & (g < 80))[12:int(0.99189189 * g.shape[0]),
                                                                 3:int(0.96405229 * g.shape[1])].sum()) for g in gts)
    _assert_metrics(result, expected)


@pytest.mark.parametrize("median_scaling", [False, True])
def test_eigen_benchmark_metrics_of_a_constant_prediction_by_hand(kitti, median_scaling):
    data = kitti["project"][1]
    result = _evaluate(data, np.full((3, HEIGHT, WIDTH), 9.0), median_scaling)
    gts = [_annotated(f, n, "image_02") / np.float32(256) for f, n in BENCHMARK_TEST]
    expected = _hand_metrics(gts, [np.full(g.shape, 9.0) for g in gts], "eigen_benchmark", median_scaling)
    assert result["protocol"] == "eigen_benchmark" and result["n_images"] == 3
    assert result["n_pixels"] == sum(int((g > 0).sum()) for g in gts)          # > 80 m counts too, no crop
    _assert_metrics(result, expected)


def _disparity_maps(n: int) -> np.ndarray:
    """Per image a non-separable disparity map at the dataset resolution (1 / m)."""
    r, c = np.mgrid[:HEIGHT, :WIDTH]
    return np.stack([0.02 + 0.004 * c + 0.003 * r + 0.002 * ((r * c + i) % 5) for i in range(n)])


def test_upsampled_prediction_by_hand_and_by_torch_and_its_metrics(kitti):
    # a column ramp of disparity 0.02 + 0.004 k (k = 0..47): linear interpolation keeps it linear, so the upsampled
    # disparity at native column j is 0.02 + 0.004 * clamp((j + 0.5) * 48 / w - 0.5, 0, 47)
    ramp = 1.0 / np.broadcast_to(0.02 + 0.004 * np.arange(WIDTH), (HEIGHT, WIDTH))
    up = upsample_prediction(ramp, (30, 100))
    assert up.shape == (30, 100)
    assert up[7, 0] == pytest.approx(1 / 0.02, rel=1e-12)                 # source -0.26: clamped to column 0
    assert up[7, 50] == pytest.approx(1 / (0.02 + 0.004 * 23.74), rel=1e-12)     # 50.5 * 0.48 - 0.5 = 23.74
    assert up[29, 99] == pytest.approx(1 / (0.02 + 0.004 * 47), rel=1e-12)       # 47.26: clamped to 47
    assert up[0, 10] == pytest.approx(1 / (0.02 + 0.004 * 4.54), rel=1e-12)      # 10.5 * 0.48 - 0.5
    up = upsample_prediction(ramp, (31, 102))
    assert up[3, 51] == pytest.approx(1 / (0.02 + 0.004 * (51.5 * 48 / 102 - 0.5)), rel=1e-12)

    disp = _disparity_maps(4)
    gts = [_scan(f, n)[1] for f, n in EIGEN_TEST]
    by_torch = []
    for d, g in zip(disp, gts):
        t = torch.nn.functional.interpolate(torch.from_numpy(d)[None, None], size=g.shape, mode="bilinear",
                                            align_corners=False)[0, 0].numpy()
        by_torch.append(1.0 / t)
        np.testing.assert_allclose(upsample_prediction(1.0 / d, g.shape), 1.0 / t, rtol=1e-12, atol=0)
    data = kitti["velodyne"][1]
    for median_scaling in (False, True):
        result = _evaluate(data, 1.0 / disp, median_scaling)
        _assert_metrics(result, _hand_metrics(gts, by_torch, "eigen", median_scaling))


# ------------------------------------------------------------------------------------------------ NYUv2 replica

NYU_N, NYU_H, NYU_W = 6, 480, 640
NYU_TRAIN_1B, NYU_TEST_1B = [1, 2, 4, 5], [3, 6]


def _nyu_arrays():
    """The labeled set as MATLAB indexes it: images (480, 640, 3, N) uint8, depths (480, 640, N) single, metres
    (dense, in-painted; some beyond 10 m)."""
    r, c = np.mgrid[:NYU_H, :NYU_W]
    images = np.empty((NYU_H, NYU_W, 3, NYU_N), np.uint8)
    depths = np.empty((NYU_H, NYU_W, NYU_N), np.float32)
    for n in range(NYU_N):
        images[..., 0, n] = (r // 2 + 30 * n) % 256
        images[..., 1, n] = (c // 3) % 256
        images[..., 2, n] = ((r + c) // 4 + 17 * n) % 256
        depths[..., n] = 0.7 + 8.0 * r / NYU_H + 3.0 * c / NYU_W + 0.25 * n + 0.05 * np.sin(c / 7.0)
    return images, depths


def _write_matlab_v73(path, variables):
    """As ``save -v7.3``: HDF5 behind a 512-byte MAT header, arrays column-major (h5py sees the axes reversed),
    each dataset tagged with its MATLAB class."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, (value, matlab_class) in variables.items():
            ds = f.create_dataset(key, data=np.asarray(value).T)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Tue Oct 16 10:12:04 2012 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def test_nyu_labeled_replica_prepares_trains_and_keeps_native_depth(tmp_path):
    root = tmp_path / "nyu"
    root.mkdir()
    images, depths = _nyu_arrays()
    labels = (np.arange(NYU_H * NYU_W * NYU_N).reshape(NYU_H, NYU_W, NYU_N) % 894).astype(np.uint16)
    _write_matlab_v73(root / "nyu_depth_v2_labeled.mat",
                      {"accelData": (np.ones((NYU_N, 4), np.float32), "single"), "depths": (depths, "single"),
                       "images": (images, "uint8"), "labels": (labels, "uint16")})
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array(NYU_TRAIN_1B, float)[:, None],
                                           "testNdxs": np.array(NYU_TEST_1B, float)[:, None]})
    with open(root / "nyu_depth_v2_labeled.mat", "rb") as fh:
        assert fh.read(10) == b"MATLAB 7.3"
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "r") as f:
        assert f["images"].shape == (NYU_N, 3, 640, 480) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (NYU_N, 640, 480) and f["depths"].dtype == np.float32
        h5_depth = np.asarray(f["depths"][NYU_TEST_1B[1] - 1])
    assert scipy.io.loadmat(root / "splits.mat")["trainNdxs"].shape == (4, 1)

    cfg = config_from_dict({**TINY, "data": dict(source="nyu", root=str(root), height=48, width=64, n_val=1)})
    out = tmp_path / "data"
    prepare_dataset(cfg, out)
    meta = read_meta(out)
    assert meta["image_encoding"] == "srgb" and meta["protocol"] == "nyu"
    assert meta["counts"] == {"train": 3, "val": 1, "test": 2} and meta["original_size"] == [480, 640]
    test = load_split(out, "test", mmap=False)
    assert test.names == ["nyu-labeled-0003", "nyu-labeled-0006"] and test.images.shape == (2, 48, 64, 3)
    for i, n in enumerate(NYU_TEST_1B):
        assert test.native.shape(i) == (480, 640)
        np.testing.assert_array_equal(test.native[i], depths[:, :, n - 1])
    np.testing.assert_array_equal(test.native[1], h5_depth.T)
    assert load_split(out, "val").names == ["nyu-labeled-0005"]

    result = evaluate_predictor(_fixed_predictor(np.full((2, 48, 64), 4.0)), load_split(out, "test"), "nyu",
                                meta["min_depth_m"], meta["max_depth_m"])
    gts = [depths[:, :, n - 1] for n in NYU_TEST_1B]
    _assert_metrics(result, _hand_metrics(gts, [np.full(g.shape, 4.0) for g in gts], "nyu", False))
    _train(cfg, out, tmp_path / "stage1")


# ------------------------------------------------------------------------------------------------ Monodepth2 weights

@pytest.mark.parametrize("counters", [True, False], ids=["with_num_batches_tracked", "without"])
def test_monodepth2_weights_start_stage1_on_the_replica(kitti, counters, tmp_path):
    """Monodepth2's encoder.pth / depth.pth (written by dko's Monodepth2-format writer; BatchNorm counters kept or
    stripped as older writers leave them out) start a stage-1 training on a replica: the first step starts from the
    imported weights, and the network keeps Monodepth2's 0.1-100 m range, not the protocol's 1e-3-80 m."""
    from dko.depth.checkpoint import load_depthnet, save_monodepth2
    from dko.depth.model import MONODEPTH2_DEPTH_RANGE_M, DepthNet

    root, data, cfg = kitti["velodyne"]
    net = cfg.network
    source = DepthNet(net.blocks_per_stage, net.base_width, net.conv1_kernel, decoder_channels=net.decoder_channels)
    weights = tmp_path / "monodepth2"
    enc_path, _ = save_monodepth2(source, weights, HEIGHT, WIDTH)
    if not counters:
        raw = torch.load(enc_path, weights_only=True)
        torch.save({k: v for k, v in raw.items() if not k.endswith("num_batches_tracked")}, enc_path)
    raw = config_from_dict({}).to_dict()
    raw.update(TINY, data=cfg.to_dict()["data"])
    raw["network"] = {**TINY["network"], "pretrained_dir": str(weights)}
    raw["train"] = {**TINY["train"], "lr": 1e-12, "weight_decay": 0.0}   # a negligible step: weights stay the import
    pretrained = config_from_dict(raw)
    _train(pretrained, data, tmp_path / "stage1")
    trained, _ = load_depthnet(tmp_path / "stage1" / "model.pt")
    assert (trained.min_depth_m, trained.max_depth_m) == MONODEPTH2_DEPTH_RANGE_M
    assert torch.allclose(trained.conv1.weight.detach(), source.conv1.weight.detach(), atol=1e-6)
