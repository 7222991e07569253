"""KITTI reader on a miniature copy of the real layout: raw PNG/JPEG images, uint16 annotated depth, Eigen lists."""

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dko.config import config_from_dict
from dko.data.format import load_split, read_meta
from dko.data.kitti import prepare_kitti, resize_rgb, resize_sparse_depth

H0, W0 = 37, 124                      # miniature "original" size
DATE = "2011_09_26"
MARKER = (3, 10)                      # asymmetric marker pixel (row, col): pure red


def _raw_depth(seed: int) -> np.ndarray:
    """uint16 ground truth: valid on a sparse lattice (LiDAR-like), values encode (row, col), 0 elsewhere."""
    r, c = np.mgrid[:H0, :W0]
    raw = (256 * (1 + r + seed) + c).astype(np.uint16)        # depth = 1 + r + seed + c / 256 metres
    raw[(r + 2 * c + seed) % 3 != 0] = 0
    raw[: H0 // 3] = 0                                        # no LiDAR in the top third (sky)
    return raw


def _image(seed: int) -> np.ndarray:
    r, c = np.mgrid[:H0, :W0]
    img = np.stack([3 * r + 20 * seed, c, 150 - 2 * r], axis=-1).astype(np.uint8)     # smooth, distinct per frame
    img[MARKER] = (255, 0, 0)
    return img


def _add_frame(root, drive, frame, side="l", gt_subset="train", with_gt=True, ext=".png", seed=0):
    cam = {"l": "image_02", "r": "image_03"}[side]
    img_dir = root / DATE / f"{DATE}_drive_{drive:04d}_sync" / cam / "data"
    img_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_image(seed)).save(img_dir / f"{frame:010d}{ext}", quality=95, subsampling=0)
    if with_gt:
        gt_dir = (root / "data_depth_annotated" / gt_subset / f"{DATE}_drive_{drive:04d}_sync" / "proj_depth"
                  / "groundtruth" / cam)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_raw_depth(seed)).save(gt_dir / f"{frame:010d}.png")
    return f"{DATE}/{DATE}_drive_{drive:04d}_sync {frame} {side}"


@pytest.fixture
def kitti_root(tmp_path):
    """train: 3 lines (the 2nd without ground truth); val: 1 right-camera line (GT in the val subset);
    test: 2 lines (one JPEG image)."""
    root = tmp_path / "kitti"
    train = [_add_frame(root, 1, 0, seed=0), _add_frame(root, 1, 5, with_gt=False, seed=1),
             _add_frame(root, 2, 69, seed=2)]
    val = [_add_frame(root, 3, 7, side="r", gt_subset="val", seed=3)]
    test = [_add_frame(root, 4, 1, seed=4), _add_frame(root, 4, 2, ext=".jpg", seed=5)]
    for folder, name, lines in (("eigen_zhou", "train", train), ("eigen_zhou", "val", val),
                                ("eigen_benchmark", "test", test)):        # Monodepth2's split folders
        (root / "splits" / folder).mkdir(parents=True, exist_ok=True)
        (root / "splits" / folder / f"{name}_files.txt").write_text("\n".join(lines) + "\n")
    return root


def _cfg(root, height=H0, width=W0, workers=1, **data):
    d = dict(source="kitti", root=str(root), height=height, width=width, n_train=None, n_val=None, n_test=None,
             workers=workers, min_depth_m=1e-3, max_depth_m=80.0, protocol="eigen_benchmark")
    d.update(data)
    return config_from_dict({"data": d}, check_paths=False)


def test_same_size_copies_depth_exactly_and_skips_missing_gt(kitti_root, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="dko.data.kitti"):
        summary = prepare_kitti(_cfg(kitti_root), out)
    assert "0000000005" in caplog.text and "no annotated ground truth" in caplog.text
    meta = read_meta(out)
    assert meta["counts"] == {"train": 2, "val": 1, "test": 2}
    assert meta["missing_gt"] == {"train": 1, "val": 0, "test": 0}
    assert meta["split_lines"] == {"train": 3, "val": 1, "test": 2}
    assert meta["protocol"] == "eigen_benchmark" and meta["source"] == "kitti"
    assert meta["ground_truth"] == {"train": "annotated", "val": "annotated", "test": "annotated"}
    assert meta["image_encoding"] == "srgb" and meta["linear_light"] is True
    assert meta["original_size"] == [H0, W0] and meta["original_sizes"] == {f"{H0}x{W0}": 5}
    assert meta["split_files"]["test"] == str(kitti_root / "splits" / "eigen_benchmark" / "test_files.txt")
    assert meta["split_files"]["val"] == str(kitti_root / "splits" / "eigen_zhou" / "val_files.txt")
    assert meta["max_depth_m"] == 80.0
    assert summary["n_train"] == 2 and summary["missing_gt_train"] == 1

    train = load_split(out, "train", mmap=False)
    assert train.names == [f"{DATE}_drive_0001_sync/image_02/0000000000", f"{DATE}_drive_0002_sync/image_02/0000000069"]
    for k, seed in enumerate((0, 2)):
        raw = _raw_depth(seed)
        np.testing.assert_array_equal(train.depth[k], raw.astype(np.float32) / 256)   # exact
        np.testing.assert_array_equal(train.depth[k] == 0, raw == 0)
        np.testing.assert_array_equal(train.images[k], _image(seed))
    # spot values by hand: row 20, col 1 (20 + 2 + 0) % 3 == 1 -> invalid; row 20, col 2 -> valid
    assert train.depth[0, 20, 1] == 0
    assert train.depth[0, 20, 2] == 1 + 20 + 2 / 256
    # seed 2: rows < 12 are sky; (12 + 2*2 + 2) % 3 == 0 -> valid; (12, 1) and (13, 2) off the lattice
    assert train.depth[1, 11, 2] == 0 and train.depth[1, 12, 1] == 0 and train.depth[1, 13, 2] == 0
    assert train.depth[1, 12, 2] == 1 + 12 + 2 + 2 / 256

    val = load_split(out, "val", mmap=False)
    assert val.names == [f"{DATE}_drive_0003_sync/image_03/0000000007"]          # right camera
    np.testing.assert_array_equal(val.depth[0], _raw_depth(3).astype(np.float32) / 256)
    test = load_split(out, "test", mmap=False)
    jpeg = test.images[1].astype(int)
    assert np.abs(jpeg - _image(5)).mean() < 3                                    # lossy JPEG, same picture
    assert jpeg[MARKER][0] > 150 and jpeg[MARKER][1:].max() < 120


def test_resized_depth_only_holds_measured_values_and_marker_keeps_orientation(kitti_root, tmp_path):
    h, w = 16, 40
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    prepare_kitti(_cfg(kitti_root, h, w, workers=1), out1)
    prepare_kitti(_cfg(kitti_root, h, w, workers=2), out2)
    for split in ("train", "val", "test"):
        a, b = load_split(out1, split, mmap=False), load_split(out2, split, mmap=False)
        assert a.images.tobytes() == b.images.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    train = load_split(out1, "train", mmap=False)
    assert train.images.shape == (2, h, w, 3) and train.depth.shape == (2, h, w)
    for k, seed in enumerate((0, 2)):
        raw = _raw_depth(seed).astype(np.float32) / 256
        d = train.depth[k]
        assert set(np.unique(d[d > 0])) <= set(np.unique(raw[raw > 0]))    # nothing invented
        # the top third of the source is invalid: target rows whose footprint lies inside it stay invalid
        assert np.all(d[:5] == 0)
        assert (d[5:] > 0).mean() > 0.9                                         # lattice density 1/3 < 3x3 cells
        # every valid target value comes from a source row inside its footprint: depth rows encode source row
        src_row = np.floor(d - 1 - seed)
        rows = np.nonzero(d > 0)[0]
        assert np.all(np.floor((src_row[d > 0] + 0.5) * h / H0) == rows)
    # the red marker at (3, 10) of 37x124 lands at (1, 3) of 16x40: (3.5 * 16 / 37, 10.5 * 40 / 124) floored
    plain = _image(0)
    plain[MARKER] = plain[MARKER[0] + 1, MARKER[1]]
    bump = train.images[0].astype(int) - resize_rgb(plain, h, w).astype(int)
    assert np.unravel_index(np.argmax(bump[..., 0]), (h, w)) == (1, 3)
    assert bump[1, 3, 0] > 20 and np.abs(bump).sum() < 4 * bump[1, 3, 0] + 40


def test_n_limits_take_the_first_usable_lines(kitti_root, tmp_path):
    out = tmp_path / "out"
    prepare_kitti(_cfg(kitti_root, n_train=1, n_test=1), out)
    meta = read_meta(out)
    assert meta["counts"] == {"train": 1, "val": 1, "test": 1}
    assert load_split(out, "train").names == [f"{DATE}_drive_0001_sync/image_02/0000000000"]


def test_sparse_resize_picks_nearest_sample_and_invents_nothing():
    src = np.zeros((6, 6), np.float32)
    src[0, 0] = 5.0          # target cell (0, 0) of a 2x2 result covers source rows/cols 0..2, centre (1, 1)
    src[1, 2] = 7.0          # distance^2 to (1, 1): 1  -> wins over (0, 0) at distance^2 2
    src[4, 4] = 3.0          # target cell (1, 1), alone
    out = resize_sparse_depth(src, 2, 2)
    np.testing.assert_array_equal(out, np.array([[7.0, 0.0], [0.0, 3.0]], np.float32))
    # equal distances: the smaller (nearer) depth wins
    tie = np.zeros((2, 2), np.float32)
    tie[0, 0], tie[1, 1] = 9.0, 4.0
    assert resize_sparse_depth(tie, 1, 1)[0, 0] == 4.0
    # non-finite and zero are invalid; upsampling leaves gaps instead of interpolating
    up = resize_sparse_depth(np.array([[2.0, np.nan], [0.0, 6.0]], np.float32), 4, 4)
    assert np.count_nonzero(up) == 2 and up[1, 1] == 2.0 and up[3, 3] == 6.0   # centre 0.5 -> 1.0, 1.5 -> 3.0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_sparse_resize_values_come_from_their_footprint(h, w, th, tw, seed):
    rng = np.random.default_rng(seed)
    src = np.where(rng.random((h, w)) < 0.3, rng.integers(1, 65535, (h, w)) / 256, 0).astype(np.float32)
    out = resize_sparse_depth(src, th, tw)
    for y, x in zip(*np.nonzero(out)):
        rows = np.nonzero(np.floor((np.arange(h) + 0.5) * th / h) == y)[0]
        cols = np.nonzero(np.floor((np.arange(w) + 0.5) * tw / w) == x)[0]
        assert out[y, x] in src[np.ix_(rows, cols)]
    # a target pixel is valid exactly when some valid source centre falls into it
    ty = np.floor((np.nonzero(src)[0] + 0.5) * th / h).astype(int)
    tx = np.floor((np.nonzero(src)[1] + 0.5) * tw / w).astype(int)
    hit = np.zeros((th, tw), bool)
    hit[ty, tx] = True
    np.testing.assert_array_equal(out > 0, hit)


def test_image_resize_is_anti_aliased():
    stripes = np.zeros((20, 64, 3), np.uint8)
    stripes[:, ::2] = 255                                 # period-2 columns: aliases to black or white if point-sampled
    small = resize_rgb(stripes, 5, 16).astype(int)
    assert np.all(np.abs(small - 127.5) < 20)
    flat = np.full((37, 124, 3), 77, np.uint8)
    assert np.all(resize_rgb(flat, 12, 40) == 77)


def test_missing_and_corrupt_files_are_named(kitti_root, tmp_path):
    split_dir = kitti_root / "splits" / "eigen_zhou"
    # missing root / config
    with pytest.raises(ValueError, match="data.root"):
        config_from_dict({"data": {"source": "kitti", "root": str(tmp_path / "nowhere"), "n_train": None}})
    with pytest.raises(ValueError, match="nowhere"):
        prepare_kitti(_cfg(tmp_path / "nowhere"), tmp_path / "o0")
    # missing split file
    (split_dir / "val_files.txt").rename(split_dir / "val_files.bak")
    with pytest.raises(ValueError, match="val_files.txt"):
        prepare_kitti(_cfg(kitti_root), tmp_path / "o1")
    (split_dir / "val_files.bak").rename(split_dir / "val_files.txt")
    # malformed split line
    bad = tmp_path / "elsewhere" / "bad"                # a split by path, outside data.splits_dir
    bad.mkdir(parents=True)
    (bad / "test_files.txt").write_text(f"{DATE}/{DATE}_drive_0004_sync 1 x\n")
    with pytest.raises(ValueError, match=r"test_files.txt' line 1"):
        prepare_kitti(_cfg(kitti_root, test_split=str(bad)), tmp_path / "o2")
    with pytest.raises(ValueError, match=r"data.test_split.*'no_such_split'.*splits"):
        prepare_kitti(_cfg(kitti_root, test_split="no_such_split"), tmp_path / "o2b")
    # missing image (ground truth present)
    img = kitti_root / DATE / f"{DATE}_drive_0002_sync" / "image_02" / "data" / "0000000069.png"
    img.rename(img.with_suffix(".bak"))
    with pytest.raises(ValueError, match="0000000069.png"):
        prepare_kitti(_cfg(kitti_root), tmp_path / "o3")
    img.with_suffix(".bak").rename(img)
    # corrupt (truncated) depth PNG and image PNG
    gt = (kitti_root / "data_depth_annotated" / "val" / f"{DATE}_drive_0003_sync" / "proj_depth" / "groundtruth"
          / "image_03" / "0000000007.png")
    good = gt.read_bytes()
    gt.write_bytes(good[:60])
    with pytest.raises(ValueError, match="0000000007.png"):
        prepare_kitti(_cfg(kitti_root), tmp_path / "o4")
    assert not (tmp_path / "o4" / "meta.json").exists()
    # an 8-bit PNG where the uint16 depth map should be
    Image.fromarray(np.zeros((H0, W0), np.uint8)).save(gt)
    with pytest.raises(ValueError, match="16-bit"):
        prepare_kitti(_cfg(kitti_root), tmp_path / "o5")
    gt.write_bytes(good)
    img.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="0000000069.png.*corrupt"):
        prepare_kitti(_cfg(kitti_root, workers=2), tmp_path / "o6")


def _move_gt(root, dest_for):
    """Move every annotated depth map from the project layout to ``dest_for(subset, drive, camera)``."""
    for png in sorted((root / "data_depth_annotated").rglob("*.png")):
        subset, drive, _, _, camera = png.relative_to(root / "data_depth_annotated").parts[:5]
        target = dest_for(subset, drive, camera) / png.name
        target.parent.mkdir(parents=True, exist_ok=True)
        png.rename(target)


def test_the_devkit_unpack_anywhere_and_monodepth2_in_drive_layout_read_the_same(kitti_root, tmp_path):
    """data_depth_annotated.zip unpacks to train/ and val/ at its top (put where the user likes: data.gt_dir);
    Monodepth2 moves the maps into each raw drive folder. Both give the project layout's dataset."""
    reference = tmp_path / "reference"
    prepare_kitti(_cfg(kitti_root), reference)
    devkit = tmp_path / "downloads" / "depth_annotated"            # the zip's train/ and val/ at the top
    _move_gt(kitti_root, lambda subset, drive, camera: devkit / subset / drive / "proj_depth" / "groundtruth" / camera)
    with pytest.raises(ValueError, match=r"(?s)none of its 3 frames has annotated.*data_depth_annotated/train/.*"
                                         r"2011_09_26/2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02.*data.gt_dir"):
        prepare_kitti(_cfg(kitti_root), tmp_path / "nothing")
    prepare_kitti(_cfg(kitti_root, gt_dir=str(devkit)), tmp_path / "devkit")
    # Monodepth2: <root>/<date>/<drive>/proj_depth/groundtruth/<camera>/
    for png in sorted(devkit.rglob("*.png")):
        drive, camera = png.relative_to(devkit).parts[1], png.parent.name
        target = kitti_root / DATE / drive / "proj_depth" / "groundtruth" / camera / png.name
        target.parent.mkdir(parents=True, exist_ok=True)
        png.rename(target)
    prepare_kitti(_cfg(kitti_root), tmp_path / "in_drive")
    for name in ("devkit", "in_drive"):
        for split in ("train", "val", "test"):
            a, b = load_split(reference, split, mmap=False), load_split(tmp_path / name, split, mmap=False)
            assert a.names == b.names
            np.testing.assert_array_equal(a.depth, b.depth)
            np.testing.assert_array_equal(a.images, b.images)
    with pytest.raises(ValueError, match=r"config key 'data.gt_dir'.*does not exist"):
        prepare_kitti(_cfg(kitti_root, gt_dir=str(tmp_path / "no_such_folder")), tmp_path / "x")
