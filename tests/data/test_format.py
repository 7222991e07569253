"""The on-disk dataset format: a damaged split names the file and says how to rebuild it."""

import numpy as np
import pytest

from dko.data.format import SplitWriter, load_split

H, W = 4, 6


def _write_split(root, split="test", count=3):
    rng = np.random.default_rng(0)
    with SplitWriter(root, split, count, H, W) as writer:
        for i in range(count):
            writer.write(i, rng.integers(0, 256, (H, W, 3), dtype=np.uint8), rng.uniform(1, 80, (H, W)), f"img{i}")
    return root / split


def test_written_split_loads(tmp_path):
    _write_split(tmp_path)
    split = load_split(tmp_path, "test")
    assert len(split) == 3 and split.images.shape == (3, H, W, 3) and split.depth.dtype == np.float32


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("name, keep", [("images.npy", -7), ("depth.npy", -7), ("depth.npy", 40), ("images.npy", 0)])
def test_truncated_array_names_the_file_and_the_rebuild(tmp_path, name, keep, mmap):
    """Truncated in the data, in the header, or empty: the error names the file and the rebuild commands."""
    folder = _write_split(tmp_path)
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep else b"")
    with pytest.raises(ValueError) as err:
        load_split(tmp_path, "test", mmap=mmap)
    message = str(err.value)
    assert f"'{path}'" in message and "corrupt or truncated" in message
    assert f"delete the folder '{tmp_path}'" in message
    assert "snakemake --forcerun prepare_dataset" in message and "make run" in message


def test_missing_file_says_how_to_rebuild(tmp_path):
    folder = _write_split(tmp_path)
    (folder / "names.txt").unlink()
    with pytest.raises(ValueError, match="names.txt' is missing; rebuild the dataset: delete the folder"):
        load_split(tmp_path, "test")


def test_native_ground_truth_round_trips_at_each_frames_own_size(tmp_path):
    """A split may keep every frame's ground truth at its own size (sparse), which the evaluation scores at."""
    from dko.data.format import SplitWriter, load_split

    rng = np.random.default_rng(0)
    natives = [np.where(rng.random((7, 11)) < 0.3, rng.uniform(1, 80, (7, 11)), 0).astype(np.float32),
               np.where(rng.random((6, 13)) < 0.3, rng.uniform(1, 80, (6, 13)), 0).astype(np.float32)]
    with SplitWriter(tmp_path, "test", 2, 4, 5, native=True) as writer:
        for i, native in enumerate(natives):
            writer.write(i, np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.float32), f"f{i}", native_depth=native)
    split = load_split(tmp_path, "test")
    assert len(split.native) == 2 and split.native.shape(1) == (6, 13)
    for i, native in enumerate(natives):
        np.testing.assert_array_equal(split.native[i], native)
    with SplitWriter(tmp_path, "train", 1, 4, 5) as writer:
        writer.write(0, np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.float32), "t")
    assert load_split(tmp_path, "train").native is None
    with pytest.raises(ValueError, match="native_depth must be given"):
        with SplitWriter(tmp_path, "val", 1, 4, 5, native=True) as writer:
            writer.write(0, np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.float32), "v")
    (tmp_path / "test" / "native_index.npy").unlink()
    with pytest.raises(ValueError, match="native_index.npy"):
        load_split(tmp_path, "test")
