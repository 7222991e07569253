"""KITTI reader: raw camera images + the official annotated depth maps -> :mod:`dko.data.format`.

Expected input layout (``cfg.data.root``)::

    <root>/<date>/<date>_drive_XXXX_sync/image_02/data/<frame:010d>.png      left colour camera
    <root>/<date>/<date>_drive_XXXX_sync/image_03/data/<frame:010d>.png      right colour camera
        (``.jpg`` is accepted as well: Monodepth2 users often convert the PNGs to JPEG)
    <gt_dir>/{train,val}/<date>_drive_XXXX_sync/proj_depth/groundtruth/image_0{2,3}/<frame:010d>.png
        the official annotated depth maps (KITTI depth benchmark) as ``data_depth_annotated.zip`` unpacks them
        (``train/`` and ``val/`` at its top): ``gt_dir`` is ``data.gt_dir``, default ``<root>/data_depth_annotated``;
        uint16 PNG of the same size as the image, depth = value / 256 metres, 0 = no ground truth
    <root>/<date>/<date>_drive_XXXX_sync/proj_depth/groundtruth/image_0{2,3}/<frame:010d>.png
        or the same maps moved inside each raw drive folder (Monodepth2's convention)
    <root>/<date>/<date>_drive_XXXX_sync/velodyne_points/data/<frame:010d>.bin    raw Velodyne scans (float32 x y z r)
    <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt                    the day's calibration
    <splits_dir>/<train_split>/{train,val}_files.txt      default <root>/splits/eigen_zhou (Monodepth2's splits/ folder)
    <splits_dir>/<test_split>/test_files.txt              default <root>/splits/eigen or .../eigen_benchmark
    <splits_dir>/<test_split>/gt_depths.npz               optional: Monodepth2's export_gt_depth.py output
        split lists in Monodepth2 format, one frame a line: ``<date>/<drive_folder> <frame> <l|r>``,
        e.g. ``2011_09_26/2011_09_26_drive_0002_sync 0000000069 l`` (``l`` = image_02, ``r`` = image_03; frame
        numbers zero-padded or not, as ``eigen`` and ``eigen_zhou`` ship them). A split is a name inside
        ``data.splits_dir`` (default ``<root>/splits``) or a path (:func:`split_folder`).

Ground truth (``data.protocol``, ``data.train_gt``):

* ``velodyne``: the raw scan projected into the frame's camera exactly as the ``eigen`` protocol does
  (:mod:`dko.data.velodyne`); frames without a scan are skipped;
* ``annotated``: the depth benchmark's map, looked up in ``<gt_dir>/train``, then ``<gt_dir>/val`` (the benchmark
  assigns each drive to one of them; Eigen's split lists ignore that assignment), then inside its drive folder
  (:func:`gt_candidates`); frames without one (there are such frames in the Eigen test split) are skipped;
* the test split uses the protocol's ground truth (``eigen``: Velodyne, ``eigen_benchmark``: annotated), read from
  the test split folder's ``gt_depths.npz`` when it holds one (one map per line of ``test_files.txt``, in order),
  else built as above; training and validation use ``data.train_gt`` (null = the protocol's).

Skipped lines are logged and counted in ``meta.json`` (``missing_gt``). ``data.n_<split>`` keeps the first N usable
lines (null = all). The test split also keeps every frame's ground truth at its native size (``native_*.npy``,
:mod:`dko.data.format`): the evaluation upsamples predictions to it and applies the protocol there.

Resizing to ``(data.height, data.width)``:

* images: Pillow's bilinear resampling, which widens its triangle kernel by the reduction factor, i.e. proper
  anti-aliasing when shrinking (uint8 in, uint8 out);
* sparse ground truth: **no depth is invented**. Every valid source sample is assigned to the target pixel whose
  footprint contains its centre; a target pixel takes the value of the valid sample whose centre lies *nearest to
  the target pixel's centre* (ties: the smaller depth, i.e. the nearer surface), and 0 where no valid sample falls in
  it. Output values are therefore always measured LiDAR depths; with an unchanged size the map is copied exactly.

Depths are stored raw (metres; 0 = invalid): the depth caps ``data.min_depth_m`` / ``data.max_depth_m`` and the
Garg crop are applied by the metrics (protocol ``eigen`` or ``eigen_benchmark``, :mod:`dko.metrics`), not here.
Images are stored as their sRGB codes (``meta.json`` ``image_encoding: srgb``); with ``data.linear_light`` the
network and the optics see them decoded to linear light (:func:`dko.data.format.input_decoding`). Frames are
converted in ``data.workers`` processes; the output does not depend on the worker count.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dko.config import Config

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
SPLITS_FOLDER = "splits"        # default data.splits_dir, inside data.root
GT_DEPTHS_NPZ = "gt_depths.npz"
CAMERA = {"l": "image_02", "r": "image_03"}
DEPTH_SCALE = 256.0        # annotated depth PNG: metres = value / 256
GT_SUBSETS = ("train", "val")
GT_FOLDER = "data_depth_annotated"  # default data.gt_dir, inside data.root
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class KittiFrame:
    """One line of a split file. ``folder`` is ``<date>/<drive>_sync``; ``side`` is ``l`` or ``r``."""

    folder: str
    frame: int
    side: str
    source: str        # "<split file>:<line number>" for error messages

    @property
    def drive(self) -> str:
        return Path(self.folder).name

    @property
    def camera(self) -> str:
        return CAMERA[self.side]

    @property
    def name(self) -> str:
        return f"{self.drive}/{self.camera}/{self.frame:010d}"


def read_split_file(path: Path) -> list[KittiFrame]:
    """Parse a Monodepth2 split list (``<date>/<drive> <frame> <l|r>`` per line; blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"KITTI split file '{path}' does not exist")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"KITTI split file '{path}' cannot be read: {exc}") from exc
    frames = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{number}"
        if len(parts) != 3 or parts[2] not in CAMERA or not parts[1].isdigit():
            raise ValueError(f"KITTI split file '{path}' line {number}: expected '<date>/<drive> <frame> <l|r>', "
                             f"got '{line.strip()}'")
        frames.append(KittiFrame(folder=parts[0].strip("/"), frame=int(parts[1]), side=parts[2], source=where))
    if not frames:
        raise ValueError(f"KITTI split file '{path}' lists no frames")
    return frames


def image_path(root: Path, frame: KittiFrame) -> Path:
    """The raw image file of ``frame`` (.png, else .jpg/.jpeg); ValueError naming the file when none exists."""
    base = Path(root) / frame.folder / frame.camera / "data" / f"{frame.frame:010d}"
    for ext in IMAGE_EXTENSIONS:
        candidate = base.with_suffix(ext)
        if candidate.is_file():
            return candidate
    raise ValueError(f"KITTI image '{base.with_suffix('.png')}' (or .jpg) does not exist (listed in {frame.source})")


def gt_candidates(root: Path, frame: KittiFrame, gt_dir: Path | None = None) -> list[Path]:
    """Where the annotated depth map of ``frame`` may lie, in search order: the devkit unpack
    (``<gt_dir>/{train,val}/<drive>/proj_depth/groundtruth/<camera>/<frame>.png``, ``gt_dir`` default
    ``<root>/data_depth_annotated``), then Monodepth2's in-drive layout (``<root>/<date>/<drive>/proj_depth/...``)."""
    gt_dir = Path(gt_dir) if gt_dir is not None else Path(root) / GT_FOLDER
    inside = Path("proj_depth") / "groundtruth" / frame.camera / f"{frame.frame:010d}.png"
    return [gt_dir / subset / frame.drive / inside for subset in GT_SUBSETS] + [Path(root) / frame.folder / inside]


def gt_path(root: Path, frame: KittiFrame, gt_dir: Path | None = None) -> Path | None:
    """The first of :func:`gt_candidates` that exists, or None."""
    return next((p for p in gt_candidates(root, frame, gt_dir) if p.is_file()), None)


def read_rgb(path: Path) -> np.ndarray:
    """Read an 8-bit colour image as uint8 (H, W, 3); ValueError naming the file if it is not a readable image."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                if img.mode in ("I;16", "I;16B", "I", "F"):
                    raise ValueError(f"image '{path}' is not an 8-bit colour image (mode {img.mode})")
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as exc:       # PIL: UnidentifiedImageError / truncated file
        raise ValueError(f"image '{path}' is corrupt or not an image: {exc}") from exc


def read_depth_png(path: Path) -> np.ndarray:
    """Read a KITTI annotated depth PNG (uint16, value / 256 m, 0 = invalid) as float32 (H, W) metres."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            raw = np.asarray(img)
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"depth map '{path}' is corrupt or not an image: {exc}") from exc
    if mode not in ("I;16", "I;16B", "I;16L", "I") or raw.ndim != 2:
        raise ValueError(f"depth map '{path}' is not a 16-bit single-channel PNG (mode {mode})")
    if raw.dtype != np.uint16:
        if raw.min() < 0 or raw.max() > 65535:
            raise ValueError(f"depth map '{path}' has values outside the uint16 range")
        raw = raw.astype(np.uint16)
    return raw.astype(np.float32) / np.float32(DEPTH_SCALE)   # exact: 16 + 8 bits fit the float32 mantissa


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 (h, w, 3) to (height, width, 3) with anti-aliased bilinear resampling (Pillow)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image, dtype=np.uint8)
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8).copy()


def resize_sparse_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a sparse depth map without inventing values (see the module docstring).

    Args:
        depth: float (h, w) metres, 0 (or non-finite) = invalid.
        height, width: target size.
    Returns:
        float32 (height, width): per target pixel the valid source sample nearest to its centre (ties: smaller
        depth), 0 where no valid source sample's centre falls inside the target pixel.
    """
    depth = np.asarray(depth, dtype=np.float32)
    h, w = depth.shape
    out = np.zeros((height, width), np.float32)
    rows, cols = np.nonzero(np.isfinite(depth) & (depth > 0))
    if rows.size == 0:
        return out
    values = depth[rows, cols]
    sy, sx = height / h, width / w
    ty = np.minimum(np.floor((rows + 0.5) * sy).astype(np.int64), height - 1)
    tx = np.minimum(np.floor((cols + 0.5) * sx).astype(np.int64), width - 1)
    cy = (ty + 0.5) / sy - 0.5           # target pixel centres in source pixel coordinates
    cx = (tx + 0.5) / sx - 0.5
    dist2 = (rows - cy) ** 2 + (cols - cx) ** 2
    target = ty * width + tx
    order = np.lexsort((values, dist2, target))          # by target, then distance, then depth
    target_sorted = target[order]
    first = np.ones(order.size, bool)
    first[1:] = target_sorted[1:] != target_sorted[:-1]
    winners = order[first]
    out.reshape(-1)[target[winners]] = values[winners]
    return out


def split_folder(value: str, splits_dir: Path, key: str) -> Path:
    """The folder of split ``value`` (config key ``data.<key>``): ``<splits_dir>/<value>`` if that is a folder, else
    ``value`` as a path; ValueError naming both places when neither exists."""
    named = Path(splits_dir) / value
    if named.is_dir():
        return named
    if Path(value).is_dir():
        return Path(value)
    raise ValueError(f"config key 'data.{key}': KITTI split '{value}' is neither a folder in '{splits_dir}' "
                     f"(data.splits_dir) nor a folder path (looked for '{named}' and '{value}')")


def gt_places(root: Path, frame: KittiFrame, kind: str, gt_dir: Path | None) -> list[Path]:
    """Every file that may hold ``frame``'s ground truth of ``kind`` (``annotated`` or ``velodyne``)."""
    from dko.data.velodyne import velodyne_path

    if kind == "velodyne":
        return [velodyne_path(root, frame.folder, frame.frame)]
    return gt_candidates(root, frame, gt_dir)


def gt_source(root: Path, frame: KittiFrame, kind: str, gt_dir: Path | None) -> tuple | None:
    """What a conversion worker reads for ``frame``'s ground truth: ``("png", path)``, ``("velodyne", root, folder,
    frame, camera)``, or None when the frame has none of ``kind``."""
    if kind == "velodyne":
        place = gt_places(root, frame, kind, gt_dir)[0]
        return ("velodyne", str(root), frame.folder, frame.frame, frame.camera) if place.is_file() else None
    found = gt_path(root, frame, gt_dir)
    return ("png", str(found)) if found is not None else None


def read_gt(source: tuple) -> np.ndarray:
    """float32 (h, w) metres of a :func:`gt_source` (or ``("array", map)`` from a gt_depths.npz), 0 = none."""
    from dko.data.velodyne import velodyne_depth_map

    kind = source[0]
    if kind == "png":
        return read_depth_png(Path(source[1]))
    if kind == "velodyne":
        return velodyne_depth_map(Path(source[1]), source[2], source[3], source[4])
    return np.asarray(source[1], dtype=np.float32)


def _convert(job: tuple) -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray | None]:
    """Worker: (image file, ground-truth source, height, width, keep native) -> resized uint8 image, resized float32
    depth, original (h, w), and the native-size depth when asked for."""
    img_file, gt, height, width, native = job
    image = read_rgb(Path(img_file))
    depth = read_gt(gt)
    if depth.shape != image.shape[:2]:
        where = gt[1] if gt[0] == "png" else f"{gt[0]} ground truth"
        raise ValueError(f"depth map '{where}' is {depth.shape[1]}x{depth.shape[0]} but image '{img_file}' is "
                         f"{image.shape[1]}x{image.shape[0]}")
    return (resize_rgb(image, height, width), resize_sparse_depth(depth, height, width), image.shape[:2],
            depth if native else None)


def _pool_context():
    import multiprocessing

    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


@dataclass
class SplitPlan:
    """What one split converts: ``frames`` with their image file and ground-truth source, where the list came from,
    which ground truth it uses and the lines skipped without one."""

    list_file: Path
    gt_kind: str
    gt_from: str
    lines: int
    frames: list[tuple[KittiFrame, Path, tuple]]
    missing: int


def _split_lists(data, root: Path) -> dict[str, tuple[Path, str]]:
    """Per split: its list file and the ground truth it uses (``annotated`` / ``velodyne``)."""
    splits_dir = Path(data.splits_dir) if data.splits_dir is not None else root / SPLITS_FOLDER
    train_folder = split_folder(data.train_split, splits_dir, "train_split")
    test_folder = split_folder(data.test_split, splits_dir, "test_split")
    test_gt = {"eigen": "velodyne", "eigen_benchmark": "annotated"}[data.protocol]
    return {"train": (train_folder / "train_files.txt", data.train_gt),
            "val": (train_folder / "val_files.txt", data.train_gt),
            "test": (test_folder / "test_files.txt", test_gt)}


def _plan_split(split: str, list_file: Path, gt_kind: str, limit: int | None, root: Path,
                gt_dir: Path | None) -> SplitPlan:
    """Select the first ``limit`` usable lines of ``list_file`` (all when None)."""
    from dko.data.velodyne import read_gt_depths_npz

    frames = read_split_file(list_file)
    npz = list_file.parent / GT_DEPTHS_NPZ if split == "test" else None
    stored = read_gt_depths_npz(npz, len(frames)) if npz is not None and npz.is_file() else None
    chosen, skipped = [], []
    for i, frame in enumerate(frames):
        if limit is not None and len(chosen) >= limit:
            break
        source = ("array", stored[i]) if stored is not None else gt_source(root, frame, gt_kind, gt_dir)
        if source is None:
            skipped.append(frame)
            continue
        chosen.append((frame, image_path(root, frame), source))
    for frame in skipped[:5]:
        log.warning("KITTI %s: no %s ground truth for %s (%s); skipped", split, gt_kind, frame.name, frame.source)
    if len(skipped) > 5:
        log.warning("KITTI %s: %d more frames without %s ground truth skipped", split, len(skipped) - 5, gt_kind)
    if not chosen:
        looked = "\n  ".join(str(p) for p in gt_places(root, frames[0], gt_kind, gt_dir))
        hint = ("the devkit's data_depth_annotated unpacked with train/ and val/ at its top: point config key "
                f"'data.gt_dir' at it, default <data.root>/{GT_FOLDER}; or Monodepth2's layout inside each drive "
                "folder" if gt_kind == "annotated" else
                "the raw drives' velodyne_points/data/*.bin (or a gt_depths.npz in the test split folder)")
        raise ValueError(f"KITTI split file '{list_file}': none of its {len(frames)} frames has {gt_kind} ground "
                         f"truth. For its first frame I looked for:\n  {looked}\n({hint})")
    if limit is not None and len(chosen) < limit:
        log.warning("KITTI %s: only %d usable frames (data.n_%s = %d)", split, len(chosen), split, limit)
    elif limit is not None:
        log.warning("KITTI %s: data.n_%s = %d keeps the first %d of %d lines of %s (null = the whole split)",
                    split, split, limit, limit, len(frames), list_file)
    gt_from = str(npz) if stored is not None else gt_kind
    return SplitPlan(list_file=list_file, gt_kind=gt_kind, gt_from=gt_from, lines=len(frames), frames=chosen,
                     missing=len(skipped))


def prepare_kitti(cfg: Config, out_dir: Path) -> dict:
    """Convert KITTI (layout in the module docstring) into the dataset folder ``out_dir`` (:mod:`dko.data.format`).

    Uses ``cfg.data.{root, protocol, splits_dir, train_split, test_split, train_gt, gt_dir, linear_light, height,
    width, n_train, n_val, n_test, min_depth_m, max_depth_m, workers}``.
    Returns a summary: ``n_<split>`` (frames written), ``missing_gt_<split>`` (split lines skipped for lack of
    ground truth), ``valid_fraction_<split>`` (share of pixels with ground truth after resizing),
    ``convert_s`` and ``workers``. Raises ValueError naming the file for a missing root / split file / image or a
    corrupt file, and when a split has no usable frame.
    """
    from tqdm import tqdm

    from dko.data.format import SplitWriter, write_meta

    data = cfg.data
    if data.root is None:
        raise ValueError("config key 'data.root' is required for data.source=kitti")
    root = Path(data.root)
    if not root.is_dir():
        raise ValueError(f"config key 'data.root': KITTI folder '{root}' does not exist")
    gt_dir = Path(data.gt_dir) if data.gt_dir is not None else None
    if gt_dir is not None and not gt_dir.is_dir():
        raise ValueError(f"config key 'data.gt_dir': KITTI annotated-depth folder '{gt_dir}' does not exist")
    H, W = int(data.height), int(data.width)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)     # meta.json marks a complete dataset: drop a stale one

    plan = {split: _plan_split(split, list_file, kind, getattr(data, f"n_{split}"), root, gt_dir)
            for split, (list_file, kind) in _split_lists(data, root).items()}

    start = time.perf_counter()
    total = sum(len(p.frames) for p in plan.values())
    workers = max(1, min(int(data.workers), os.cpu_count() or 1, total))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) if workers > 1 else None
    sizes: Counter = Counter()
    valid_fraction: dict[str, float] = {}
    try:
        for split, p in plan.items():
            native = split == "test"
            jobs = [(str(img), gt, H, W, native) for _, img, gt in p.frames]
            results = pool.map(_convert, jobs, chunksize=4) if pool else map(_convert, jobs)
            valid = 0
            with SplitWriter(out_dir, split, len(jobs), H, W, native=native) as writer:
                for i, (result, (frame, _, _)) in enumerate(tqdm(zip(results, p.frames), total=len(jobs),
                                                                   desc=f"kitti {split}", leave=False)):
                    image, depth, size, native_depth = result
                    writer.write(i, image, depth, frame.name, native_depth=native_depth)
                    sizes[f"{size[0]}x{size[1]}"] += 1
                    valid += int(np.count_nonzero(depth))
            valid_fraction[split] = valid / (len(jobs) * H * W)
    finally:
        if pool:
            pool.shutdown()
    elapsed = time.perf_counter() - start

    counts = {split: len(p.frames) for split, p in plan.items()}
    missing = {split: p.missing for split, p in plan.items()}
    common_h, common_w = (int(v) for v in sizes.most_common(1)[0][0].split("x"))
    write_meta(out_dir, source="kitti", protocol=data.protocol, height=H, width=W, min_depth_m=data.min_depth_m,
               max_depth_m=data.max_depth_m, counts=counts, dataset_root=str(root),
               split_files={k: str(p.list_file) for k, p in plan.items()},
               split_lines={k: p.lines for k, p in plan.items()}, missing_gt=missing,
               ground_truth={k: p.gt_kind for k, p in plan.items()},
               ground_truth_from={k: p.gt_from for k, p in plan.items()},
               original_size=[common_h, common_w], original_sizes=dict(sorted(sizes.items())),
               depth_kind={"annotated": "KITTI depth benchmark maps (value / 256 m), sparse; 0 = no ground truth",
                           "velodyne": "raw Velodyne scan projected into the camera (depth = Velodyne x, m), as "
                                       "Monodepth2's export_gt_depth.py; 0 = no point"},
               depth_resize="nearest valid source sample to the target pixel centre (ties: smaller depth); "
                            "0 where none",
               evaluation=f"test split scored at each frame's native ground truth (predictions upsampled as "
                          f"disparity, bilinear), protocol {data.protocol}",
               image_resize="Pillow bilinear, anti-aliased", color="sRGB (camera PNG)", image_encoding="srgb",
               linear_light=bool(data.linear_light))
    summary: dict = {f"n_{k}": v for k, v in counts.items()}
    summary.update({f"missing_gt_{k}": v for k, v in missing.items()})
    summary.update({f"valid_fraction_{k}": v for k, v in valid_fraction.items()})
    summary.update(convert_s=elapsed, workers=workers)
    log.info("KITTI (%s): %s frames converted in %.1f s (%d workers); skipped without ground truth: %s",
             data.protocol, counts, elapsed, workers, missing)
    return summary
