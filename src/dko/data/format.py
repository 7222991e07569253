"""The one on-disk dataset format that every source (synthetic, KITTI, NYUv2) is converted to.

Layout of a prepared dataset folder ``<results>/<experiment>/data/``::

    meta.json              format_version, source, protocol, height, width, min_depth_m,
                           max_depth_m, counts per split, source-specific provenance
    <split>/images.npy     uint8, shape (N, H, W, 3), RGB, linear 0..255 sensor values
    <split>/depth.npy      float32, shape (N, H, W), metres; 0 marks an invalid pixel
                           (sky, no LiDAR return, beyond max_depth_m)
    <split>/names.txt      N lines, one identifier per image (source file or scene seed)

with ``<split>`` in ``train``, ``val``, ``test``. Arrays are plain ``.npy`` files so large datasets
are memory-mapped instead of loaded. Each split is written into a temporary folder and renamed
into place when complete, so a killed job never leaves a half-written split that looks finished.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dko.io import read_json, write_json

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
PROTOCOLS = ("synthetic", "kitti", "nyu")


class SplitWriter:
    """Write one split image by image into memory-mapped arrays, then publish it atomically.

    Args:
        root: dataset folder (``.../data``).
        split: ``train``, ``val`` or ``test``.
        count: number of images N.
        height, width: image size in pixels.
    Use as a context manager; ``write(i, image, depth, name)`` fills slot ``i``.
    """

    def __init__(self, root: str | Path, split: str, count: int, height: int, width: int):
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' (expected one of {SPLITS})")
        if count < 1:
            raise ValueError(f"split '{split}' must contain at least one image (got {count})")
        self.final_dir = Path(root) / split
        self.tmp_dir = Path(root) / f".{split}.partial"
        self.count, self.height, self.width = count, height, width
        self.names: list[str | None] = [None] * count

    def __enter__(self) -> "SplitWriter":
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        shape = (self.count, self.height, self.width)
        self.images = np.lib.format.open_memmap(self.tmp_dir / "images.npy", mode="w+", dtype=np.uint8, shape=shape + (3,))
        self.depth = np.lib.format.open_memmap(self.tmp_dir / "depth.npy", mode="w+", dtype=np.float32, shape=shape)
        return self

    def write(self, index: int, image: np.ndarray, depth: np.ndarray, name: str) -> None:
        """Store image ``index``: ``image`` uint8 (H, W, 3), ``depth`` float (H, W) metres, 0 = invalid."""
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"image '{name}': expected uint8 {(self.height, self.width, 3)}, got {image.dtype} {image.shape}")
        if depth.shape != (self.height, self.width):
            raise ValueError(f"depth '{name}': expected shape {(self.height, self.width)}, got {depth.shape}")
        if not np.all(np.isfinite(depth)) or np.any(depth < 0):
            raise ValueError(f"depth '{name}': values must be finite and >= 0 (0 = invalid)")
        self.images[index] = image
        self.depth[index] = depth.astype(np.float32)
        self.names[index] = str(name)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            del self.images, self.depth
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            return
        missing = [i for i, n in enumerate(self.names) if n is None]
        if missing:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            raise ValueError(f"split '{self.final_dir.name}': images {missing[:5]} were never written")
        self.images.flush()
        self.depth.flush()
        del self.images, self.depth
        (self.tmp_dir / "names.txt").write_text("\n".join(self.names) + "\n")
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)
        os.replace(self.tmp_dir, self.final_dir)


def write_meta(root: str | Path, *, source: str, protocol: str, height: int, width: int, min_depth_m: float,
               max_depth_m: float, counts: dict[str, int], **provenance) -> None:
    """Write ``meta.json`` (last, after all splits, so its presence marks a complete dataset)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol '{protocol}' (expected one of {PROTOCOLS})")
    meta = dict(format_version=FORMAT_VERSION, source=source, protocol=protocol, height=height, width=width,
                min_depth_m=float(min_depth_m), max_depth_m=float(max_depth_m), counts=counts, **provenance)
    write_json(Path(root) / "meta.json", meta)


@dataclass
class Split:
    """A loaded split. ``images`` uint8 (N, H, W, 3); ``depth`` float32 (N, H, W) metres, 0 invalid."""

    images: np.ndarray
    depth: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def read_meta(root: str | Path) -> dict:
    """Read and check ``meta.json`` of a prepared dataset folder."""
    meta = read_json(Path(root) / "meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"dataset '{root}': format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    return meta


def rebuild_hint(root: str | Path) -> str:
    """How to rebuild a damaged dataset folder: a plain rerun does not, since its ``meta.json`` is present."""
    return (f"rebuild the dataset: delete the folder '{root}' and run the pipeline again "
            "(`make run CONFIG=<your config>`), or run "
            "`snakemake --forcerun prepare_dataset --configfile <your config>` (either way the jobs that use it rerun)")


def _load_array(path: Path, root: str | Path, mmap: bool) -> np.ndarray:
    """``np.load`` of one array of a split, with an error naming the file and how to rebuild it."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"dataset file '{path}' is corrupt or truncated ({exc}); {rebuild_hint(root)}") from exc


def load_split(root: str | Path, split: str, mmap: bool = True) -> Split:
    """Open one split of a prepared dataset folder (memory-mapped by default)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (expected one of {SPLITS})")
    folder = Path(root) / split
    for name in ("images.npy", "depth.npy", "names.txt"):
        if not (folder / name).is_file():
            raise ValueError(f"dataset file '{folder / name}' is missing; {rebuild_hint(root)}")
    images = _load_array(folder / "images.npy", root, mmap)
    depth = _load_array(folder / "depth.npy", root, mmap)
    names = (folder / "names.txt").read_text().splitlines()
    if not (len(images) == len(depth) == len(names)):
        raise ValueError(f"dataset split '{folder}': {len(images)} images, {len(depth)} depth maps, "
                         f"{len(names)} names; {rebuild_hint(root)}")
    return Split(images=images, depth=depth, names=names)


def batch_to_tensors(images: np.ndarray, depth: np.ndarray):
    """uint8 (B, H, W, 3) + float (B, H, W) -> float32 tensors (B, 3, H, W) in [0, 1] and (B, 1, H, W) metres."""
    import torch

    img = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    dep = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).unsqueeze(1)
    return img, dep


def select(split: Split, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Copy the given images / depths out of a (memory-mapped) split."""
    idx = np.asarray(indices)
    return np.asarray(split.images[idx]), np.asarray(split.depth[idx])
