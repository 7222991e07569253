"""NYUv2 reader on a miniature labeled .mat written in MATLAB v7.3's layout (HDF5, axes reversed) + splits.mat."""

import h5py
import numpy as np
import pytest
import scipy.io

from dko.config import config_from_dict
from dko.data.format import load_split, read_meta
from dko.data.nyu import prepare_nyu, read_split_indices, resize_dense_depth

H0, W0, N = 24, 32, 7            # non-square miniature of the 480x640x1449 labeled set
MARKER = (2, 5)                  # (row, col) of a pure red pixel in every frame
TRAIN_1B = [2, 3, 5, 7]          # 1-based, as in splits.mat
TEST_1B = [1, 4, 6]


def _matlab_arrays():
    """The labeled set as MATLAB indexes it: images (H, W, 3, N) uint8, depths (H, W, N) double metres."""
    r, c = np.mgrid[:H0, :W0]
    images = np.zeros((H0, W0, 3, N), np.uint8)
    depths = np.zeros((H0, W0, N), np.float64)
    for n in range(N):
        images[:, :, 0, n] = 5 * r
        images[:, :, 1, n] = 4 * c
        images[:, :, 2, n] = 30 * n
        images[MARKER[0], MARKER[1], :, n] = (255, 0, 0)
        depths[:, :, n] = 0.5 + 0.1 * r + 0.01 * c + n
        depths[r < 2 + n % 3, n] = 0.0                       # invalid rows at the top (Kinect holes)
    return images, depths


def _write_matlab_v73(path, variables):
    """Write like MATLAB -v7.3: HDF5 with a 512-byte userblock holding the MAT header, arrays stored column-major
    (i.e. HDF5/h5py sees every array with its axes reversed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, value in variables.items():
            f.create_dataset(key, data=np.asarray(value).T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


@pytest.fixture
def nyu_root(tmp_path):
    root = tmp_path / "nyu"
    root.mkdir()
    images, depths = _matlab_arrays()
    _write_matlab_v73(root / "nyu_depth_v2_labeled.mat", {"images": images, "depths": depths})
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array(TRAIN_1B, float)[:, None],
                                           "testNdxs": np.array(TEST_1B, float)[:, None]})
    return root


def _cfg(root, height=H0, width=W0, **data):
    d = dict(source="nyu", root=str(root), height=height, width=width, n_train=None, n_val=1, n_test=None,
             min_depth_m=1e-3, max_depth_m=10.0)
    d.update(data)
    return config_from_dict({"data": d}, check_paths=False)


def test_h5py_sees_matlab_arrays_transposed(nyu_root):
    with h5py.File(nyu_root / "nyu_depth_v2_labeled.mat", "r") as f:
        assert f["images"].shape == (N, 3, W0, H0) and f["depths"].shape == (N, W0, H0)


def test_same_size_values_orientation_splits_and_meta(nyu_root, tmp_path):
    out = tmp_path / "out"
    summary = prepare_nyu(_cfg(nyu_root), out)
    images, depths = _matlab_arrays()
    meta = read_meta(out)
    assert meta["counts"] == {"train": 3, "val": 1, "test": 3}
    assert meta["protocol"] == "nyu" and meta["source"] == "nyu"
    assert meta["original_size"] == [H0, W0] and meta["labeled_frames"] == N
    assert meta["split_file"] == str(nyu_root / "splits.mat")
    assert summary["n_val"] == 1

    expected = {"train": [2, 3, 5], "val": [7], "test": [1, 4, 6]}          # val = last of trainNdxs
    for split, frames in expected.items():
        s = load_split(out, split, mmap=False)
        assert s.names == [f"nyu-labeled-{n:04d}" for n in frames]
        for k, n in enumerate(frames):
            np.testing.assert_array_equal(s.images[k], images[:, :, :, n - 1])
            np.testing.assert_array_equal(s.depth[k], depths[:, :, n - 1].astype(np.float32))
            assert tuple(s.images[k][MARKER]) == (255, 0, 0)
            assert tuple(s.images[k][MARKER[1], MARKER[0]]) != (255, 0, 0)
    test = load_split(out, "test", mmap=False)
    # frame 4 (1-based; n = 3): 2 + 3 % 3 = 2 invalid rows (0, 1), value 0.5 + 0.1 r + 0.01 c + 3
    assert test.depth[1, 1, 7] == 0 and test.depth[1, 2, 7] == np.float32(0.5 + 0.2 + 0.07 + 3)
    assert test.depth[1, 23, 31] == np.float32(0.5 + 2.3 + 0.31 + 3)
    assert summary["valid_fraction_test"] == pytest.approx(1 - (2 + 2 + 4) / (3 * H0), abs=1e-9)   # frames 1, 4, 6: 2 + (0, 3, 5) % 3 rows


def test_resized_depth_never_mixes_invalid_zeros(nyu_root, tmp_path):
    out = tmp_path / "out"
    prepare_nyu(_cfg(nyu_root, 16, 16, n_train=2, n_test=1), out)
    assert read_meta(out)["counts"] == {"train": 2, "val": 1, "test": 1}
    train = load_split(out, "train", mmap=False)
    assert train.images.shape == (2, 16, 16, 3)
    _, depths = _matlab_arrays()
    for k, n in enumerate((2, 3)):
        src = depths[:, :, n - 1]
        d = train.depth[k]
        valid_src = src[src > 0]
        assert d[d > 0].min() >= valid_src.min() - 1e-5 and d.max() <= valid_src.max() + 1e-5
    # the marker survives at its scaled position (2 * 16 / 24, 5 * 16 / 32) -> row 1, col 2 is the reddest
    img = train.images[0].astype(int)
    redness = img[..., 0] - img[..., 1]
    assert redness[1, 2] - np.median(redness[:4, :5]) > 15

    depth = np.full((24, 32), 2.0)
    depth[::2, ::2] = 0.0                                   # 25 % invalid, spread out
    np.testing.assert_allclose(resize_dense_depth(depth, 16, 16), 2.0, rtol=1e-6)
    half = np.full((24, 32), 3.0)
    half[:, :16] = 0.0
    half[5, 20] = np.nan
    got = resize_dense_depth(half, 16, 16)
    assert np.all(got[:, :8] == 0) and np.allclose(got[:, 8:], 3.0, rtol=1e-6)
    sparse = np.zeros((24, 32))
    sparse[::2, ::2] = 4.0                                  # 25 % valid: below the 50 % coverage threshold
    assert np.all(resize_dense_depth(sparse, 12, 16) == 0)
    ramp = np.tile(np.arange(32, dtype=float) + 1, (24, 1))
    np.testing.assert_allclose(resize_dense_depth(ramp, 24, 16)[0], np.arange(16) * 2 + 1.5, rtol=1e-6)


def test_splits_mat_v73_and_errors(nyu_root, tmp_path):
    v73 = tmp_path / "splits73.mat"
    _write_matlab_v73(v73, {"trainNdxs": np.array(TRAIN_1B, float)[:, None], "testNdxs": np.array(TEST_1B, float)[:, None]})
    train, test = read_split_indices(v73)
    np.testing.assert_array_equal(train, np.array(TRAIN_1B) - 1)
    np.testing.assert_array_equal(test, np.array(TEST_1B) - 1)

    with pytest.raises(ValueError, match="nowhere"):
        prepare_nyu(_cfg(tmp_path / "nowhere"), tmp_path / "o0")
    with pytest.raises(ValueError, match="data.root"):
        config_from_dict({"data": {"source": "nyu", "root": None}})
    with pytest.raises(ValueError, match="data.n_val"):
        prepare_nyu(_cfg(nyu_root, n_val=4), tmp_path / "o1")

    good = (nyu_root / "splits.mat").read_bytes()
    (nyu_root / "splits.mat").unlink()
    with pytest.raises(ValueError, match="splits.mat"):
        prepare_nyu(_cfg(nyu_root), tmp_path / "o2")
    (nyu_root / "splits.mat").write_bytes(b"garbage, not a mat file at all" * 10)
    with pytest.raises(ValueError, match="splits.mat.*corrupt"):
        prepare_nyu(_cfg(nyu_root), tmp_path / "o3")
    scipy.io.savemat(nyu_root / "splits.mat", {"trainNdxs": np.array([[2.0], [9.0]]), "testNdxs": np.array([[1.0]])})
    with pytest.raises(ValueError, match="splits.mat.*index 9"):
        prepare_nyu(_cfg(nyu_root), tmp_path / "o4")
    scipy.io.savemat(nyu_root / "splits.mat", {"trainNdxs": np.array([[2.0], [3.0]])})
    with pytest.raises(ValueError, match="splits.mat.*testNdxs"):
        prepare_nyu(_cfg(nyu_root), tmp_path / "o5")
    (nyu_root / "splits.mat").write_bytes(good)

    labeled = nyu_root / "nyu_depth_v2_labeled.mat"
    data = labeled.read_bytes()
    labeled.write_bytes(data[:700])                        # truncated HDF5
    with pytest.raises(ValueError, match="nyu_depth_v2_labeled.mat"):
        prepare_nyu(_cfg(nyu_root), tmp_path / "o6")
    assert not (tmp_path / "o6" / "meta.json").exists()
    labeled.unlink()
    with pytest.raises(ValueError, match="nyu_depth_v2_labeled.mat.*does not exist"):
        prepare_nyu(_cfg(nyu_root), tmp_path / "o7")
    with h5py.File(labeled, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="nyu_depth_v2_labeled.mat.*'depths'"):
        prepare_nyu(_cfg(nyu_root), tmp_path / "o8")
