"""Tiny datasets in DKO's on-disk format for the stage-1 tests."""

import numpy as np
import pytest

from dko.data.format import SplitWriter, write_meta


def write_row_dataset(root, height=32, width=64, counts=None, seed=0):
    """A dataset whose depth depends on the row only: depth[r] = 2 + r metres (row 0 invalid), with noisy
    images whose brightness follows the row, so a CNN can learn it and the row-mean predictor is exact."""
    counts = counts or {"train": 6, "val": 2, "test": 3}
    rng = np.random.default_rng(seed)
    rows = 2.0 + np.arange(height, dtype=np.float32)
    depth = np.repeat(rows[:, None], width, axis=1)
    depth[0] = 0.0
    for split, n in counts.items():
        with SplitWriter(root, split, n, height, width) as w:
            for i in range(n):
                base = np.linspace(40, 200, height)[:, None, None]
                img = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
                w.write(i, img, depth, f"{split}_{i}")
    write_meta(root, source="test", protocol="synthetic", height=height, width=width, min_depth_m=1.0,
               max_depth_m=80.0, counts=counts)
    return root


@pytest.fixture
def row_dataset(tmp_path):
    return write_row_dataset(tmp_path / "data")
