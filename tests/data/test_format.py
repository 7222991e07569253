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
