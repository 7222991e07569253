"""The one on-disk dataset format that every source (synthetic, KITTI, NYUv2) is converted to.

Layout of a prepared dataset folder ``<results>/<experiment>/data/``::

    meta.json              format_version, source, protocol, height, width, min_depth_m,
                           max_depth_m, counts per split, source-specific provenance
    <split>/images.npy     uint8, shape (N, H, W, 3), RGB 0..255 codes; meta.json image_encoding says
                           whether they are linear or sRGB (see :func:`input_decoding`)
    <split>/depth.npy      float32, shape (N, H, W), metres; 0 marks an invalid pixel
                           (sky, no LiDAR return, beyond max_depth_m)
    <split>/names.txt      N lines, one identifier per image (source file or scene seed)
    <split>/native_*.npy   optional (real data, test split): the ground truth at each frame's own size, which the
                           evaluation scores at (predictions upsampled, :func:`dko.metrics.upsample_prediction`):
                           native_shapes int64 (N, 2) rows, columns; native_offsets int64 (N + 1,);
                           native_index int32 (M,) row-major pixel index within its frame and native_depth
                           float32 (M,) metres of the frames' valid pixels, frame i in [offsets[i], offsets[i+1])

with ``<split>`` in ``train``, ``val``, ``test``. Arrays are plain ``.npy`` files so large datasets
are memory-mapped instead of loaded. Each split is written into a temporary folder and renamed
into place when complete, so a killed job never leaves a half-written split that looks finished.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from dko.io import read_json, write_json

FORMAT_VERSION = 1
NATIVE_FILES = ("native_shapes.npy", "native_offsets.npy", "native_index.npy", "native_depth.npy")
SPLITS = ("train", "val", "test")
PROTOCOLS = ("synthetic", "eigen", "eigen_benchmark", "nyu")


class SplitWriter:
    """Write one split image by image into memory-mapped arrays, then publish it atomically.

    Args:
        root: dataset folder (``.../data``).
        split: ``train``, ``val`` or ``test``.
        count: number of images N.
        height, width: image size in pixels.
        native: also store each frame's ground truth at its own size (``write(..., native_depth=...)``).
    Use as a context manager; ``write(i, image, depth, name)`` fills slot ``i``.
    """

    def __init__(self, root: str | Path, split: str, count: int, height: int, width: int, native: bool = False):
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' (expected one of {SPLITS})")
        if count < 1:
            raise ValueError(f"split '{split}' must contain at least one image (got {count})")
        self.final_dir = Path(root) / split
        self.tmp_dir = Path(root) / f".{split}.partial"
        self.count, self.height, self.width = count, height, width
        self.names: list[str | None] = [None] * count
        self.native: list[tuple[tuple[int, int], np.ndarray, np.ndarray] | None] | None = [None] * count if native else None

    def __enter__(self) -> "SplitWriter":
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        shape = (self.count, self.height, self.width)
        self.images = np.lib.format.open_memmap(self.tmp_dir / "images.npy", mode="w+", dtype=np.uint8, shape=shape + (3,))
        self.depth = np.lib.format.open_memmap(self.tmp_dir / "depth.npy", mode="w+", dtype=np.float32, shape=shape)
        return self

    def write(self, index: int, image: np.ndarray, depth: np.ndarray, name: str,
              native_depth: np.ndarray | None = None) -> None:
        """Store image ``index``: ``image`` uint8 (H, W, 3), ``depth`` float (H, W) metres, 0 = invalid;
        ``native_depth`` float (h, w) metres at the frame's own size (required when the writer is ``native``)."""
        if (native_depth is None) != (self.native is None):
            raise ValueError(f"image '{name}': native_depth must be given exactly when the split stores native ground "
                             "truth")
        if native_depth is not None:
            native_depth = np.asarray(native_depth, dtype=np.float32)
            if native_depth.ndim != 2 or not np.all(np.isfinite(native_depth)) or np.any(native_depth < 0):
                raise ValueError(f"native depth '{name}': expected a finite (h, w) map >= 0, got shape "
                                 f"{native_depth.shape}")
            flat = native_depth.reshape(-1)
            where = np.flatnonzero(flat > 0)
            self.native[index] = (native_depth.shape, where.astype(np.int32), flat[where])
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
        if self.native is not None:
            self._save_native()
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)
        os.replace(self.tmp_dir, self.final_dir)


    def _save_native(self) -> None:
        shapes = np.asarray([shape for shape, _, _ in self.native], dtype=np.int64).reshape(-1, 2)
        sizes = np.asarray([idx.size for _, idx, _ in self.native], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        index = np.concatenate([idx for _, idx, _ in self.native]).astype(np.int32)
        values = np.concatenate([val for _, _, val in self.native]).astype(np.float32)
        for name, array in zip(NATIVE_FILES, (shapes, offsets, index, values)):
            np.save(self.tmp_dir / name, array)


class NativeDepth:
    """The ground truth of a split at each frame's own size (``native_*.npy``, see the module docstring).

    ``native[i]`` is frame i's float32 (h, w) depth map in metres, 0 = no ground truth; ``shape(i)`` its (h, w).
    """

    def __init__(self, shapes: np.ndarray, offsets: np.ndarray, index: np.ndarray, values: np.ndarray):
        self.shapes, self.offsets, self.index, self.values = shapes, offsets, index, values

    def __len__(self) -> int:
        return len(self.shapes)

    def shape(self, i: int) -> tuple[int, int]:
        return int(self.shapes[i][0]), int(self.shapes[i][1])

    def __getitem__(self, i: int) -> np.ndarray:
        h, w = self.shape(i)
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        out = np.zeros(h * w, np.float32)
        out[np.asarray(self.index[lo:hi])] = np.asarray(self.values[lo:hi])
        return out.reshape(h, w)


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
    native: NativeDepth | None = None

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
    native = None
    present = [(folder / name).is_file() for name in NATIVE_FILES]
    if any(present):
        if not all(present):
            missing = [name for name, ok in zip(NATIVE_FILES, present) if not ok]
            raise ValueError(f"dataset split '{folder}' lacks {missing} of its native ground truth; {rebuild_hint(root)}")
        native = NativeDepth(*(_load_array(folder / name, root, mmap) for name in NATIVE_FILES))
        if len(native) != len(names) or len(native.offsets) != len(names) + 1 or native.offsets[-1] != len(native.index):
            raise ValueError(f"dataset split '{folder}': its native ground truth does not match its {len(names)} "
                             f"frames; {rebuild_hint(root)}")
    return Split(images=images, depth=depth, names=names, native=native)


IMAGE_ENCODINGS = ("linear", "srgb")
DECODINGS = ("none", "srgb")


def input_decoding(meta: Mapping) -> str:
    """How a dataset's stored uint8 codes become the network's / optics' input: ``"srgb"`` (decode sRGB codes to
    linear light, :func:`dko.data.color.srgb_to_linear`) when ``meta["image_encoding"]`` is ``"srgb"`` and
    ``meta["linear_light"]`` is true, else ``"none"`` (code / 255).

    A missing ``image_encoding`` means ``"linear"`` (datasets written before the key: synthetic, or converted
    without decoding); a missing ``linear_light`` means true. Raises ValueError for another ``image_encoding`` or a
    non-boolean ``linear_light``.
    """
    encoding = meta.get("image_encoding", "linear")
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"meta.json image_encoding {encoding!r} is unknown (expected one of {IMAGE_ENCODINGS})")
    linear_light = meta.get("linear_light", True)
    if not isinstance(linear_light, bool):
        raise ValueError(f"meta.json linear_light must be true or false, got {linear_light!r}")
    return "srgb" if encoding == "srgb" and linear_light else "none"


def batch_to_tensors(images: np.ndarray, depth: np.ndarray, decoding: str):
    """uint8 (B, H, W, 3) + float (B, H, W) -> float32 tensors (B, 3, H, W) in [0, 1] and (B, 1, H, W) metres.

    ``decoding`` (:func:`input_decoding` of the dataset): ``"none"`` gives code / 255, ``"srgb"`` the linear light
    of sRGB codes (:data:`dko.data.color.SRGB_TO_LINEAR_LUT`).
    """
    import torch

    if decoding == "none":
        img = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    elif decoding == "srgb":
        from dko.data.color import srgb_to_linear

        img = torch.from_numpy(srgb_to_linear(np.asarray(images))).permute(0, 3, 1, 2)
    else:
        raise ValueError(f"unknown image decoding {decoding!r} (expected one of {DECODINGS})")
    dep = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).unsqueeze(1)
    return img, dep


def select(split: Split, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Copy the given images / depths out of a (memory-mapped) split."""
    idx = np.asarray(indices)
    return np.asarray(split.images[idx]), np.asarray(split.depth[idx])
