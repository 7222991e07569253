"""KITTI Eigen-protocol ground truth: raw Velodyne scans projected into a camera, and Monodepth2's ``gt_depths.npz``.

The Eigen test split is evaluated (Eigen et al. 2014; Monodepth2's ``eigen`` split) against depth maps made by
projecting the *raw* Velodyne scan of each frame into the image, exactly as Monodepth2's ``export_gt_depth.py``
does with ``generate_depth_map(calib_dir, velo_file, cam=2, vel_depth=True)``. This module reproduces that
projection and reads the ``gt_depths.npz`` the script writes.

Input layout (KITTI raw)::

    <root>/<date>/calib_cam_to_cam.txt      S_rect_02 (width height), R_rect_00 (3x3), P_rect_02 / P_rect_03 (3x4)
    <root>/<date>/calib_velo_to_cam.txt     R (3x3), T (3): Velodyne -> camera-0 (unrectified) coordinates
    <root>/<date>/<date>_drive_XXXX_sync/velodyne_points/data/<frame:010d>.bin
        float32 little-endian, 4 values a point: x (forward), y (left), z (up) in metres, reflectance

Calibration files are text lines ``key: v1 v2 ...``; numeric values are read as float64 arrays (matrices
row-major), others (``calib_time: 09-Jan-2012 13:57:47``) are kept as strings.

Projection (:func:`velodyne_projection`, :func:`project_velodyne`):

* ``P_velo2im = P_rect_0{2|3} @ R_cam2rect @ velo2cam`` (3x4), where ``velo2cam = [[R | T], [0 0 0 1]]`` and
  ``R_cam2rect`` is the 4x4 identity with ``R_rect_00`` in its top-left 3x3 block;
* image size ``(h, w)`` = ``S_rect_02`` reversed, for either camera (as Monodepth2 does);
* every point with Velodyne ``x >= 0`` is projected as ``[x, y, z, 1]``: ``p = P_velo2im @ point``,
  ``u = p0 / p2``, ``v = p1 / p2``; pixel column ``round(u) - 1``, row ``round(v) - 1`` (numpy rounding, half to
  even; the ``- 1`` follows KITTI's 1-based MATLAB devkit); points outside ``0 <= col < w``, ``0 <= row < h``
  are dropped (so is a point whose ``u`` or ``v`` is not finite). Like Monodepth2, points with ``x >= 0`` but
  behind the camera plane (``p2 < 0``, only possible within ~0.3 m of the sensor) are not filtered further;
* the depth of a point is its Velodyne ``x`` (``vel_depth=True``), **not** the camera ``z``; where several points
  fall on one pixel the smallest depth wins; pixels without a point are 0; negative depths are set to 0.

Difference to Monodepth2: its ``sub2ind`` helper computes ``row * (w - 1) + col - 1``, so pixel ``(r, w - 1)``
and pixel ``(r + 1, 0)`` share an index and the pixel of the first such point receives the minimum over the
points of both. Here every pixel takes the minimum over its own points. The difference is confined to the first
and the last image column, which the Garg crop (columns ``int(0.03594771 * w)`` to ``int(0.96405229 * w)``,
e.g. 44..1197 of 1242) excludes, so the Eigen metrics are unaffected.

Monodepth2's ``export_gt_depth.py --split eigen`` always projects into camera 2 (``image_02``), whatever the side
letter of the ``test_files.txt`` line (all Eigen test lines are ``l``). It stores one float32 map per line of
``test_files.txt`` with ``np.savez_compressed(path, data=np.array(maps))``: a float32 (N, h, w) array when all
maps share one size, otherwise (the real Eigen file, several image sizes) a 1-D object array of (h, w) float32
arrays, which needs pickle to load (:func:`read_gt_depths_npz`). Depth in metres, 0 = no ground truth.
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

CAM_TO_CAM = "calib_cam_to_cam.txt"
VELO_TO_CAM = "calib_velo_to_cam.txt"
CAMERAS = ("image_02", "image_03")


def read_calib_file(path: str | Path) -> dict[str, np.ndarray | str]:
    """Read a KITTI calibration text file (``key: v1 v2 ...`` a line).

    Returns ``{key: value}``: numeric values as 1-D float64 arrays (matrices row-major, flattened; an empty
    value gives an empty array), anything else (e.g. ``calib_time: 09-Jan-2012 13:57:47``) as the stripped
    string. Blank lines are skipped; a repeated key keeps its last value.
    Raises ValueError naming the file when it is missing or a non-blank line has no ``:``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"KITTI calibration file not found: {path}")
    data: dict[str, np.ndarray | str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if ":" not in line:
                raise ValueError(f"{path}: line {lineno} has no 'key: value' separator ':': {line.strip()!r}")
            key, value = line.split(":", 1)
            key, value = key.strip(), value.strip()
            try:
                data[key] = np.array([float(x) for x in value.split()], dtype=np.float64)
            except ValueError:
                data[key] = value
    return data


def read_velodyne_points(path: str | Path) -> np.ndarray:
    """Read a KITTI Velodyne scan ``.bin``: float32 (N, 4) array of x (forward), y (left), z (up) in metres and
    reflectance. Raises ValueError naming the file when it is missing or its size is not a multiple of 16 bytes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Velodyne scan not found: {path}")
    size = path.stat().st_size
    if size % 16:
        raise ValueError(f"{path}: size {size} bytes is not a multiple of 16 (4 float32 values a point)")
    return np.fromfile(path, dtype="<f4").astype(np.float32, copy=False).reshape(-1, 4)


def _numeric(calib: dict[str, np.ndarray | str], path: Path, key: str, count: int) -> np.ndarray:
    value = calib.get(key)
    if value is None:
        raise ValueError(f"{path}: required key {key!r} is missing")
    if isinstance(value, str):
        raise ValueError(f"{path}: key {key!r} must hold {count} numbers, got {value!r}")
    if value.size != count:
        raise ValueError(f"{path}: key {key!r} must hold {count} numbers, got {value.size}")
    return value


def _check_camera(camera: str) -> None:
    if camera not in CAMERAS:
        raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")


def velodyne_projection(calib_dir: str | Path, camera: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The Velodyne -> image projection of one KITTI recording date.

    ``calib_dir`` is ``<root>/<date>`` (holding ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt``);
    ``camera`` is ``"image_02"`` (left colour) or ``"image_03"`` (right colour).
    Returns ``(P_velo2im, (h, w))``: float64 (3, 4) matrix ``P_rect_0X @ R_cam2rect @ velo2cam`` mapping
    homogeneous Velodyne points (metres) to homogeneous pixel coordinates, and the image size in pixels from
    ``S_rect_02`` (for both cameras, as Monodepth2). Raises ValueError naming the file (and key) when a file is
    missing, a required key is missing or has the wrong number of values, or ``S_rect_02`` is not two positive
    integers.
    """
    _check_camera(camera)
    calib_dir = Path(calib_dir)
    cam_path, velo_path = calib_dir / CAM_TO_CAM, calib_dir / VELO_TO_CAM
    cam2cam, velo2cam_calib = read_calib_file(cam_path), read_calib_file(velo_path)

    velo2cam = np.eye(4)
    velo2cam[:3, :3] = _numeric(velo2cam_calib, velo_path, "R", 9).reshape(3, 3)
    velo2cam[:3, 3] = _numeric(velo2cam_calib, velo_path, "T", 3)
    cam2rect = np.eye(4)
    cam2rect[:3, :3] = _numeric(cam2cam, cam_path, "R_rect_00", 9).reshape(3, 3)
    p_key = f"P_rect_{camera[-2:]}"
    p_rect = _numeric(cam2cam, cam_path, p_key, 12).reshape(3, 4)
    size = _numeric(cam2cam, cam_path, "S_rect_02", 2)
    if not (np.all(size >= 1) and np.all(size == np.round(size))):
        raise ValueError(f"{cam_path}: key 'S_rect_02' must be two positive integers (width height), got {size}")
    shape = (int(size[1]), int(size[0]))
    return p_rect @ cam2rect @ velo2cam, shape


def project_velodyne(points: np.ndarray, P_velo2im: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Project a Velodyne scan into a sparse depth map (the Eigen-protocol rule of the module docstring).

    ``points``: (N, 4) (x, y, z, reflectance; reflectance ignored) or (N, 3) array in Velodyne coordinates,
    metres; the projection is computed in float64. ``P_velo2im``: (3, 4) matrix from :func:`velodyne_projection`.
    ``shape``: image size ``(h, w)`` in pixels. Returns a float32 (h, w) depth map in metres: per pixel the smallest
    Velodyne forward distance ``x`` of the points landing on it, 0 where none does.
    Raises ValueError for arrays of the wrong shape.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] not in (3, 4):
        raise ValueError(f"points must be an (N, 3) or (N, 4) array, got shape {points.shape}")
    P = np.asarray(P_velo2im, dtype=np.float64)
    if P.shape != (3, 4):
        raise ValueError(f"P_velo2im must be a (3, 4) matrix, got shape {P.shape}")
    if len(shape) != 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise ValueError(f"shape must be (h, w) with positive sizes, got {shape}")
    h, w = int(shape[0]), int(shape[1])

    xyz = points[:, :3]
    xyz = xyz[xyz[:, 0] >= 0]
    depth_m = xyz[:, 0].astype(np.float32)
    p = xyz.astype(np.float64) @ P[:, :3].T + P[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        col = np.round(p[:, 0] / p[:, 2]) - 1
        row = np.round(p[:, 1] / p[:, 2]) - 1
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)  # NaN compares False: dropped
    flat = row[inside].astype(np.int64) * w + col[inside].astype(np.int64)

    out = np.full(h * w, np.inf, dtype=np.float32)
    np.minimum.at(out, flat, depth_m[inside])
    hit = np.zeros(h * w, dtype=bool)
    hit[flat] = True
    out[~hit] = 0.0
    out[out < 0] = 0.0
    return out.reshape(h, w)


def _split_folder(folder: str) -> tuple[str, str]:
    parts = PurePosixPath(str(folder).replace("\\", "/")).parts
    if len(parts) != 2:
        raise ValueError(f"folder must be '<date>/<date>_drive_XXXX_sync' (as in the split lists), got {folder!r}")
    return parts[0], parts[1]


def velodyne_path(root: str | Path, folder: str, frame: int) -> Path:
    """Path of the Velodyne scan ``<root>/<folder>/velodyne_points/data/<frame:010d>.bin`` of one frame.

    ``folder`` is a split-list folder ``<date>/<date>_drive_XXXX_sync``; ``frame`` a non-negative frame index.
    Only builds the path (no existence check). Raises ValueError for a malformed folder or frame."""
    date, drive = _split_folder(folder)
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 0:
        raise ValueError(f"frame must be a non-negative integer, got {frame!r}")
    return Path(root) / date / drive / "velodyne_points" / "data" / f"{int(frame):010d}.bin"


def velodyne_depth_map(root: str | Path, folder: str, frame: int, camera: str = "image_02") -> np.ndarray:
    """Eigen-protocol ground truth of one frame: its raw Velodyne scan projected into ``camera``.

    ``root``: KITTI raw root; ``folder``: ``<date>/<date>_drive_XXXX_sync``; ``frame``: frame index; ``camera``:
    ``"image_02"`` or ``"image_03"`` (Monodepth2's ``gt_depths.npz`` uses ``"image_02"`` for every line).
    The calibration is read from ``<root>/<date>``. Returns a float32 (h, w) depth map in metres, 0 = none
    (h, w from ``S_rect_02``). Raises ValueError naming the missing ``.bin`` or calibration file.
    """
    _check_camera(camera)
    date, _ = _split_folder(folder)
    bin_path = velodyne_path(root, folder, frame)
    if not bin_path.is_file():
        raise ValueError(f"Velodyne scan not found: {bin_path}")
    P_velo2im, shape = velodyne_projection(Path(root) / date, camera)
    return project_velodyne(read_velodyne_points(bin_path), P_velo2im, shape)


def read_gt_depths_npz(path: str | Path, expected_count: int | None = None) -> list[np.ndarray]:
    """Read Monodepth2's ``gt_depths.npz`` (``export_gt_depth.py``): one depth map per line of ``test_files.txt``.

    Accepts both forms of the ``data`` entry: a numeric (N, h, w) array, or a 1-D object array of (h, w) arrays
    (maps of different sizes; loaded with pickle enabled, so only read files you trust). Returns a list of N
    float32 (h, w) arrays in metres, 0 = no ground truth, in file order. With ``expected_count`` the number of
    maps must equal it. Raises ValueError naming the file when it is missing, not a readable ``.npz`` archive,
    has no ``data`` entry, holds a wrong number of maps, or holds a map that is not a numeric 2-D array.
    """
    path = Path(path)
    if expected_count is not None and (
        isinstance(expected_count, bool) or not isinstance(expected_count, (int, np.integer)) or expected_count < 0
    ):
        raise ValueError(f"expected_count must be a non-negative integer or None, got {expected_count!r}")
    if not path.is_file():
        raise ValueError(f"ground-truth depth file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz archive (expected np.savez_compressed output with a 'data' entry)")
    try:
        with np.load(path, allow_pickle=True) as npz:
            files = list(npz.files)
            data = npz["data"] if "data" in files else None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: cannot read: {e}") from e
    if data is None:
        raise ValueError(f"{path}: no 'data' entry (entries: {sorted(files)})")

    if data.dtype == object:
        if data.ndim != 1:
            raise ValueError(f"{path}: object 'data' must be 1-D (one depth map an entry), got shape {data.shape}")
        entries = list(data)
    else:
        if data.ndim != 3:
            raise ValueError(f"{path}: 'data' must be (N, h, w) depth maps, got shape {data.shape}")
        entries = list(data)
    if expected_count is not None and len(entries) != expected_count:
        raise ValueError(
            f"{path}: holds {len(entries)} depth maps, expected {expected_count} "
            "(entries align one-to-one with the lines of test_files.txt)"
        )
    maps = []
    for i, m in enumerate(entries):
        if not isinstance(m, np.ndarray) or m.ndim != 2 or not (
            np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)
        ):
            desc = f"shape {m.shape}, dtype {m.dtype}" if isinstance(m, np.ndarray) else type(m).__name__
            raise ValueError(f"{path}: depth map {i} is not a numeric 2-D (h, w) array ({desc})")
        maps.append(np.ascontiguousarray(m, dtype=np.float32))
    return maps
