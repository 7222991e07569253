"""NYU Depth v2 reader: the labeled ``.mat`` and the standard split -> :mod:`dko.data.format`.

Expected input layout (``cfg.data.root``)::

    <root>/nyu_depth_v2_labeled.mat   MATLAB v7.3 (HDF5). In MATLAB ``images`` is 480x640x3x1449 uint8 and
                                      ``depths`` 480x640x1449 float32 metres (in-painted, dense; any float type
                                      is read). MATLAB stores column-major, so h5py presents every array
                                      with its axes reversed: ``images`` (N, 3, W, H) and ``depths``
                                      (N, W, H). Image n is therefore ``images[n].transpose(2, 1, 0)``
                                      (H, W, 3) and depth n is ``depths[n].T``.
    <root>/splits.mat                 the standard split (Eigen et al. 2014): ``trainNdxs`` (795 indices) and
                                      ``testNdxs`` (654), 1-based MATLAB indices into the 1449 labeled frames.
                                      MATLAB v5 (read with scipy.io.loadmat) or v7.3 (read with h5py).

The official split is never invented: without ``splits.mat`` a ValueError names the missing file.
Splits written: ``val`` = the last ``data.n_val`` train indices (in file order; null -> 100),
``train`` = the first ``data.n_train`` of the remaining train indices, ``test`` = the first ``data.n_test`` test
indices (null = all).

Resizing to ``(data.height, data.width)``: images with Pillow's anti-aliased bilinear resampling; depth with masked
area averaging (box filter): the mean of the *valid* source samples under each target pixel, 0 where fewer than half
of the covered source area is valid, so invalid zeros are never averaged into valid depths. Depths are stored raw
in metres (0 = invalid); caps and the Eigen crop (defined on the 480x640 original, recorded in ``meta.json`` as
``original_size``) are applied by the metrics (protocol ``nyu``). The test split also keeps its depth maps at the
native 480x640 (``native_*.npy``, :mod:`dko.data.format`), where the evaluation scores upsampled predictions.
Images are stored as their sRGB codes (``meta.json`` ``image_encoding: srgb``); with ``data.linear_light`` the
network and the optics see them decoded to linear light (:func:`dko.data.format.input_decoding`). The conversion runs in one process (it is bound
by reading the HDF5 file); ``data.workers`` is not used.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from dko.config import Config
from dko.data.kitti import resize_rgb

log = logging.getLogger(__name__)

LABELED_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
DEFAULT_N_VAL = 100
MIN_VALID_COVERAGE = 0.5


def read_split_indices(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``trainNdxs`` / ``testNdxs`` from ``splits.mat`` (v5 or v7.3); returns 0-based int64 index arrays."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"NYUv2 split file '{path}' does not exist (the standard split is required, "
                         "it is not reconstructed)")
    out = {}
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                for key in ("trainNdxs", "testNdxs"):
                    if key not in f:
                        raise ValueError(f"NYUv2 split file '{path}' has no variable '{key}'")
                    out[key] = np.asarray(f[key][()])
        else:
            from scipy.io import loadmat

            mat = loadmat(path)
            for key in ("trainNdxs", "testNdxs"):
                if key not in mat:
                    raise ValueError(f"NYUv2 split file '{path}' has no variable '{key}'")
                out[key] = np.asarray(mat[key])
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"NYUv2 split file '{path}' is corrupt or not a .mat file: {exc}") from exc
    except (OSError, NotImplementedError, TypeError, KeyError) as exc:
        raise ValueError(f"NYUv2 split file '{path}' is corrupt or not a .mat file: {exc}") from exc
    result = []
    for key in ("trainNdxs", "testNdxs"):
        raw = out[key].reshape(-1)
        if raw.size == 0 or not np.all(np.isfinite(raw.astype(np.float64))) or np.any(raw != np.round(raw)):
            raise ValueError(f"NYUv2 split file '{path}': '{key}' must hold integer frame indices")
        idx = raw.astype(np.int64)
        if idx.min() < 1:
            raise ValueError(f"NYUv2 split file '{path}': '{key}' holds index {idx.min()} (MATLAB indices are 1-based)")
        result.append(idx - 1)
    return result[0], result[1]


def resize_dense_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Masked area resize of a dense depth map.

    Args:
        depth: float (h, w) metres; 0 or non-finite = invalid.
        height, width: target size.
    Returns:
        float32 (height, width): per target pixel the area-weighted mean of the valid source depths it covers,
        0 where less than ``MIN_VALID_COVERAGE`` of the covered area is valid.
    """
    from PIL import Image

    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape == (height, width):
        return np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    valid = (np.isfinite(depth) & (depth > 0)).astype(np.float32)
    weighted = np.where(valid > 0, depth, 0).astype(np.float32)
    box = Image.Resampling.BOX
    num = np.asarray(Image.fromarray(weighted).resize((width, height), box), dtype=np.float32)
    den = np.asarray(Image.fromarray(valid).resize((width, height), box), dtype=np.float32)
    ok = den >= MIN_VALID_COVERAGE
    out = np.zeros((height, width), np.float32)
    out[ok] = num[ok] / den[ok]
    return out


def _open_labeled(path: Path):
    import h5py

    if not path.is_file():
        raise ValueError(f"NYUv2 file '{path}' does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"NYUv2 file '{path}' is corrupt or not a MATLAB v7.3 (HDF5) file: {exc}") from exc
    for key in ("images", "depths"):
        if key not in f:
            f.close()
            raise ValueError(f"NYUv2 file '{path}' has no dataset '{key}'")
    images, depths = f["images"], f["depths"]
    if images.ndim != 4 or images.shape[1] != 3 or depths.ndim != 3 or depths.shape != (images.shape[0],) + images.shape[2:]:
        f.close()
        raise ValueError(f"NYUv2 file '{path}': expected 'images' (N, 3, W, H) and 'depths' (N, W, H) as h5py "
                         f"presents MATLAB arrays, got {images.shape} and {depths.shape}")
    return f


def prepare_nyu(cfg: Config, out_dir: Path) -> dict:
    """Convert the NYUv2 labeled set (layout in the module docstring) into ``out_dir`` (:mod:`dko.data.format`).

    Uses ``cfg.data.{root, height, width, n_train, n_val, n_test, min_depth_m, max_depth_m}``.
    Returns a summary: ``n_<split>``, ``valid_fraction_<split>`` (share of valid depth pixels after resizing) and
    ``convert_s``. Raises ValueError naming the file for a missing / corrupt ``.mat`` or split file, and for split
    indices outside the labeled set.
    """
    from tqdm import tqdm

    from dko.data.format import SplitWriter, write_meta

    data = cfg.data
    if data.root is None:
        raise ValueError("config key 'data.root' is required for data.source=nyu")
    root = Path(data.root)
    if not root.is_dir():
        raise ValueError(f"config key 'data.root': NYUv2 folder '{root}' does not exist")
    labeled, split_file = root / LABELED_FILE, root / SPLITS_FILE
    H, W = int(data.height), int(data.width)
    train_idx, test_idx = read_split_indices(split_file)
    n_val = DEFAULT_N_VAL if data.n_val is None else int(data.n_val)
    if n_val >= train_idx.size:
        raise ValueError(f"config key 'data.n_val' = {n_val} leaves no training frame: '{split_file}' lists "
                         f"{train_idx.size} train indices")
    plan = {"train": train_idx[:-n_val], "val": train_idx[-n_val:], "test": test_idx}
    for split, limit in (("train", data.n_train), ("test", data.n_test)):
        if limit is not None:
            plan[split] = plan[split][:limit]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)

    start = time.perf_counter()
    valid_fraction = {}
    with _open_labeled(labeled) as f:
        images, depths = f["images"], f["depths"]
        n_frames = images.shape[0]
        original = (int(images.shape[3]), int(images.shape[2]))          # (H, W) of the MATLAB arrays
        for key, idx in (("trainNdxs", train_idx), ("testNdxs", test_idx)):
            if idx.max() >= n_frames:
                raise ValueError(f"NYUv2 split file '{split_file}': '{key}' holds index {idx.max() + 1} but "
                                 f"'{labeled}' has only {n_frames} frames")
        for split, idx in plan.items():
            valid = 0
            native = split == "test"
            with SplitWriter(out_dir, split, len(idx), H, W, native=native) as writer:
                for i, n in enumerate(tqdm(idx, desc=f"nyu {split}", leave=False)):
                    try:
                        image = np.asarray(images[n]).transpose(2, 1, 0)         # (3, W, H) -> (H, W, 3)
                        depth = np.asarray(depths[n], dtype=np.float32).T      # (W, H) -> (H, W)
                    except OSError as exc:
                        raise ValueError(f"NYUv2 file '{labeled}': frame {n + 1} cannot be read: {exc}") from exc
                    if image.dtype != np.uint8:
                        image = np.clip(image, 0, 255).astype(np.uint8)
                    small = resize_dense_depth(depth, H, W)
                    writer.write(i, resize_rgb(image, H, W), small, f"nyu-labeled-{n + 1:04d}",
                                 native_depth=np.where(np.isfinite(depth) & (depth > 0), depth, 0) if native else None)
                    depth = small
                    valid += int(np.count_nonzero(depth))
            valid_fraction[split] = valid / (len(idx) * H * W)
    elapsed = time.perf_counter() - start

    counts = {split: int(len(idx)) for split, idx in plan.items()}
    write_meta(out_dir, source="nyu", protocol="nyu", height=H, width=W, min_depth_m=data.min_depth_m,
               max_depth_m=data.max_depth_m, counts=counts, dataset_root=str(root), labeled_file=str(labeled),
               split_file=str(split_file), original_size=list(original), labeled_frames=int(n_frames),
               split_sizes={"train": int(train_idx.size), "test": int(test_idx.size)},
               val_from="last n_val indices of trainNdxs",
               depth_kind="in-painted Kinect depth (m), dense; 0 = invalid",
               depth_resize=f"masked area mean of valid samples; 0 where valid coverage < {MIN_VALID_COVERAGE}",
               image_resize="Pillow bilinear, anti-aliased", color="sRGB (camera)", image_encoding="srgb",
               linear_light=bool(data.linear_light),
               ground_truth={"train": "in-painted Kinect depth", "val": "in-painted Kinect depth",
                             "test": "in-painted Kinect depth, native 480x640"},
               evaluation="test split scored at the native 480x640 ground truth (predictions upsampled as "
                          "disparity, bilinear), Eigen crop, depth in (min_depth_m, max_depth_m)")
    summary: dict = {f"n_{k}": v for k, v in counts.items()}
    summary.update({f"valid_fraction_{k}": v for k, v in valid_fraction.items()})
    summary.update(convert_s=elapsed)
    log.info("NYUv2: %s frames converted in %.1f s", counts, elapsed)
    return summary
