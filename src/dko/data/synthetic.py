"""Embedded synthetic street scenes: procedural 3D layouts ray-cast with exact per-pixel depth.

Each image is a small driving-like world rendered by vectorised numpy ray casting:

* a pinhole camera (KITTI-like focal length, ``f = 0.58 W`` pixels) 1.45-1.75 m above a ground plane,
  with small random pitch / roll / yaw and a lateral position inside the road;
* a road (asphalt, dashed lane lines, solid edge lines) between raised sidewalks (kerbs), grass
  beyond; sometimes a T-junction closes the street with buildings across it;
* buildings / walls along both sides at random setbacks, lengths and heights, with gaps that show
  farther rows, trees, or the sky; open sides with trees, poles and low walls;
* box-shaped objects on the ground: parked and moving cars (body, cabin, dark underbody), vans,
  poles, pillars, crates, billboards, at random positions, sizes and yaw angles.

Surfaces are textured in world coordinates (tiles of fixed size in metres, so texture frequency
grows with distance: the texture gradient) from procedural textures (noise, stripes, bricks,
paving, windows) and images that scikit-image ships (``brick``, ``grass``, ``gravel``,
``camera``, ``coffee``, ``chelsea``, ``astronaut``, ``rocket``, ``hubble_deep_field``), mip-mapped
by pixel footprint. Shading: Lambert with a directional sun, ray-cast shadows of every box,
ambient light, mild distance haze. Sky and distant skyline are drawn but carry no depth.

Depth is the z-depth along the optical axis in metres (like KITTI), exact by construction: the
camera rays are ``d = R (x_n, y_n, 1)`` so the ray parameter of the first hit *is* the z-depth.
Pixels whose first hit is farther than ``max_depth_m`` (sky, far ground, far buildings) or nearer
than ``min_depth_m`` are invalid (depth 0).

Determinism: the random stream of image ``index`` of split ``split`` is
``numpy.random.SeedSequence(seed, spawn_key=(split_code, index))``, so an image does not depend on
the number of worker processes, on the order of generation, or on the other split sizes.
Images are uint8 RGB *linear* intensities (no display gamma), as a sensor would record them.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
FOCAL_REL = 0.58          # focal length / image width (KITTI: 721 px / 1242 px)
TEX_RES = 128             # base resolution of every texture tile (pixels)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_CORNER_SIGNS = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=float)


# ============================================================================ textures
@dataclass
class TextureBank:
    """Mip-mapped albedo tiles. ``pyramids[k][l]``: float32 (TEX_RES / 2**l, TEX_RES / 2**l, 3), linear."""

    names: list[str]
    pyramids: list[list[np.ndarray]]

    def index(self, name: str) -> int:
        return self.names.index(name)


_BANK: TextureBank | None = None


def _srgb_to_linear(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0.0, 1.0)
    return np.where(img <= 0.04045, img / 12.92, ((img + 0.055) / 1.055) ** 2.4)


def _periodic_noise(rng: np.random.Generator, res: int, beta: float = 2.0, fmin: float = 1.0) -> np.ndarray:
    """Tileable fractal noise (res, res) in [0, 1]: random spectrum with power ~ 1/f**beta."""
    fx = np.fft.fftfreq(res) * res
    freq = np.sqrt(fx[:, None] ** 2 + fx[None, :] ** 2)
    amp = np.where(freq >= fmin, np.maximum(freq, 1e-6) ** (-beta / 2.0), 0.0)
    spec = amp * (rng.normal(size=(res, res)) + 1j * rng.normal(size=(res, res)))
    noise = np.real(np.fft.ifft2(spec))
    noise -= noise.min()
    return noise / max(noise.max(), 1e-12)


def _resize(img: np.ndarray, res: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(img, (res, res), order=1, anti_aliasing=True, mode="wrap").astype(np.float32)


def _as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _skimage_image(name: str) -> np.ndarray:
    """An image shipped with scikit-image (no network) as float (H, W, 3) in [0, 1], sRGB-encoded."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    img = img / 255.0 if img.max() > 1.0 else img
    if img.ndim == 2:
        img = _as_rgb(img)
    return img[..., :3]


def _square_crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    return img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def _build_bank() -> TextureBank:
    """All textures, deterministic (fixed generator seed), built once per process."""
    rng = np.random.default_rng(20251102)
    r = TEX_RES
    yy, xx = np.mgrid[0:r, 0:r] / r
    tex: dict[str, np.ndarray] = {}

    gravel = _resize(_skimage_image("gravel"), r)[..., 0]
    grass = _resize(_skimage_image("grass"), r)[..., 0]
    brick = _resize(_skimage_image("brick"), r)[..., 0]
    fine = _periodic_noise(rng, r, beta=1.2)
    coarse = _periodic_noise(rng, r, beta=3.0)

    # ground: asphalt (albedo ~0.1-0.2 after tint), paint, paving slabs, grass, dirt
    tex["asphalt"] = _as_rgb(0.55 + 0.35 * (gravel - gravel.mean()) + 0.25 * (coarse - 0.5))
    tex["paint"] = _as_rgb(0.85 + 0.15 * (fine - 0.5))
    slab = ((xx * 4) % 1.0 > 0.06) & ((yy * 4) % 1.0 > 0.06)
    tex["paving"] = _as_rgb(np.where(slab, 0.75 + 0.2 * (gravel - 0.5), 0.35) + 0.1 * (coarse - 0.5))
    tex["grass"] = np.stack([0.45 * grass + 0.1, 0.9 * grass + 0.15, 0.3 * grass + 0.05], axis=2) * (0.8 + 0.4 * coarse[..., None])
    # facades
    tex["brick"] = _as_rgb(0.35 + 0.75 * brick)
    tex["concrete"] = _as_rgb(0.7 + 0.25 * (fine - 0.5) + 0.3 * (coarse - 0.5))
    win = (xx > 0.22) & (xx < 0.78) & (yy > 0.18) & (yy < 0.78)
    frame = (xx > 0.18) & (xx < 0.82) & (yy > 0.14) & (yy < 0.82) & ~win
    glass = 0.08 + 0.25 * (1.0 - yy) * (0.7 + 0.3 * coarse)
    mullion = win & ((np.abs(xx - 0.5) < 0.015) | (np.abs(yy - 0.45) < 0.015))
    facade = 0.8 + 0.15 * (fine - 0.5)
    facade = np.where(win, glass, facade)
    facade = np.where(frame | mullion, 0.95, facade)
    tex["windows"] = _as_rgb(facade)
    tex["windows_brick"] = _as_rgb(np.where(win | frame | mullion, facade, 0.35 + 0.75 * brick))
    tex["stripes"] = _as_rgb(0.6 + 0.3 * np.sin(2 * np.pi * 8 * xx) ** 2 + 0.1 * (fine - 0.5))
    planks = 0.55 + 0.2 * np.sin(2 * np.pi * (24 * xx + 3 * coarse)) + 0.15 * (fine - 0.5)
    planks = np.where((yy * 5) % 1.0 < 0.05, 0.2, planks)
    tex["wood"] = np.stack([planks, 0.75 * planks, 0.5 * planks], axis=2)
    # vehicles
    tex["paint_car"] = _as_rgb(0.85 + 0.1 * (coarse - 0.5) + 0.05 * (fine - 0.5))
    side_window = (yy < 0.75) & (yy > 0.1) & (xx > 0.06) & (xx < 0.94) & (np.abs(xx - 0.5) > 0.02)
    tex["cabin"] = _as_rgb(np.where(side_window, 0.06 + 0.2 * (1 - yy), 0.85))
    tex["tyre"] = _as_rgb(0.08 + 0.05 * fine)
    tex["leaves"] = np.stack([0.25 * grass + 0.05, 0.55 * grass + 0.1, 0.15 * grass + 0.03], axis=2) * (0.6 + 0.8 * coarse[..., None])
    # photographs (posters, billboards, murals, crate prints)
    photos = ["camera", "coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field"]
    for name in photos:
        tex[f"photo_{name}"] = _resize(_square_crop(_skimage_image(name)), r)

    names, pyramids = [], []
    for name, img in tex.items():
        lin = _srgb_to_linear(np.asarray(img, dtype=np.float64)).astype(np.float32)
        levels = [lin]
        while levels[-1].shape[0] > 1:
            a = levels[-1]
            levels.append(0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]))
        names.append(name)
        pyramids.append(levels)
    return TextureBank(names=names, pyramids=pyramids)


def texture_bank() -> TextureBank:
    """The process-wide texture bank (built on first use, ~0.5 s)."""
    global _BANK
    if _BANK is None:
        _BANK = _build_bank()
    return _BANK


# ============================================================================ scene description
@dataclass
class Camera:
    """Pinhole camera. ``x_m``: lateral position; ``height_m`` above the ground; angles in radians
    (pitch > 0 looks down, yaw > 0 turns right, roll > 0 turns the image clockwise)."""

    height_m: float = 1.6
    x_m: float = 0.0
    pitch_rad: float = 0.0
    yaw_rad: float = 0.0
    roll_rad: float = 0.0
    focal_rel: float = FOCAL_REL

    def rotation(self) -> np.ndarray:
        """3x3 matrix taking camera coordinates (x right, y down, z forward) to world (X right, Y up, Z forward)."""
        flip = np.diag([1.0, -1.0, 1.0])
        cp, sp = math.cos(self.pitch_rad), math.sin(self.pitch_rad)
        rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        cy, sy = math.cos(self.yaw_rad), math.sin(self.yaw_rad)
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        cr, sr = math.cos(self.roll_rad), math.sin(self.roll_rad)
        rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return ry @ rx @ rz @ flip

    def origin(self) -> np.ndarray:
        return np.array([self.x_m, self.height_m, 0.0])


@dataclass
class Box:
    """A box standing in the world. ``center``/``half`` in metres (world X, Y up, Z), ``yaw_rad`` about Y.

    Side faces use texture ``side_tex`` with tiles ``side_tile_m`` (u, v) metres and colour ``side_tint``;
    top/bottom faces use the ``top_*`` equivalents. ``v`` on side faces counts metres up from the box base.
    """

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw_rad: float = 0.0
    side_tex: str = "concrete"
    side_tile_m: tuple[float, float] = (2.0, 2.0)
    side_tint: tuple[float, float, float] = (0.7, 0.7, 0.7)
    top_tex: str = "concrete"
    top_tile_m: tuple[float, float] = (2.0, 2.0)
    top_tint: tuple[float, float, float] = (0.5, 0.5, 0.5)
    casts_shadow: bool = True

    def rotation(self) -> np.ndarray:
        c, s = math.cos(self.yaw_rad), math.sin(self.yaw_rad)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    def corners(self) -> np.ndarray:
        """(8, 3) world coordinates of the corners (corner k has signs given by the bits of k)."""
        return np.asarray(self.center) + (_CORNER_SIGNS * np.asarray(self.half)) @ self.rotation().T

    def contains(self, point: np.ndarray, margin_m: float = 0.0) -> bool:
        local = self.rotation().T @ (np.asarray(point, dtype=float) - np.asarray(self.center))
        return bool(np.all(np.abs(local) <= np.asarray(self.half) + margin_m))


@dataclass
class Scene:
    """Everything needed to render one image (see :func:`render`)."""

    camera: Camera = field(default_factory=Camera)
    boxes: list[Box] = field(default_factory=list)
    road_half_m: float = 5.0
    lane_width_m: float = 3.3
    dash_period_m: float = 9.0
    dash_duty: float = 0.45
    marking_width_m: float = 0.14
    cross_road_z_m: tuple[float, float] | None = None    # (z0, z1) of a crossing road band, or None
    verge_tex: str = "grass"
    verge_tint: tuple[float, float, float] = (0.8, 0.8, 0.8)
    road_tint: tuple[float, float, float] = (0.35, 0.35, 0.36)
    sun_dir: tuple[float, float, float] = (0.3, 0.8, -0.5)          # towards the sun (normalised in render)
    sun_rgb: tuple[float, float, float] = (1.0, 0.95, 0.85)
    ambient_rgb: tuple[float, float, float] = (0.35, 0.38, 0.45)
    haze_m: float = 400.0
    haze_rgb: tuple[float, float, float] = (0.6, 0.65, 0.75)
    sky_zenith_rgb: tuple[float, float, float] = (0.15, 0.3, 0.7)
    sky_horizon_rgb: tuple[float, float, float] = (0.65, 0.72, 0.85)
    cloud_amount: float = 0.3
    skyline: tuple[tuple[float, float], ...] = ()      # (azimuth edge rad, elevation rad) blocks of far skyline
    exposure: float = 1.0
    noise_seed: int = 0


# ============================================================================ random layouts
_CAR_COLOURS = [(0.85, 0.85, 0.85), (0.55, 0.56, 0.58), (0.05, 0.05, 0.06), (0.6, 0.05, 0.04),
                (0.05, 0.12, 0.45), (0.06, 0.25, 0.1), (0.8, 0.6, 0.05), (0.3, 0.2, 0.12), (0.75, 0.75, 0.8)]
_WALL_COLOURS = [(0.8, 0.75, 0.62), (0.6, 0.6, 0.6), (0.75, 0.45, 0.35), (0.9, 0.88, 0.85), (0.55, 0.6, 0.7),
                 (0.8, 0.7, 0.5), (0.45, 0.4, 0.38), (0.7, 0.8, 0.75)]
_FACADES = ["windows", "windows", "windows_brick", "brick", "concrete", "stripes", "windows"]
_PHOTOS = ["photo_camera", "photo_coffee", "photo_chelsea", "photo_astronaut", "photo_rocket", "photo_hubble_deep_field"]


def _tint(rng: np.random.Generator, palette, jitter: float = 0.08) -> tuple[float, float, float]:
    base = np.asarray(palette[rng.integers(len(palette))], dtype=float)
    return tuple(np.clip(base * (1.0 + jitter * rng.normal(size=3)), 0.02, 1.0).tolist())


def _car(rng: np.random.Generator, x: float, z: float, yaw: float, kind: str = "car") -> list[Box]:
    """A car / van as three boxes: dark underbody (wheels), painted body, cabin with windows."""
    colour = _tint(rng, _CAR_COLOURS)
    if kind == "van":
        length, width = rng.uniform(4.8, 6.5), rng.uniform(1.9, 2.3)
        body_h, cabin_h, cabin_frac = rng.uniform(1.6, 2.4), 0.0, 0.0
    else:
        length, width = rng.uniform(3.6, 4.8), rng.uniform(1.6, 1.9)
        body_h, cabin_h, cabin_frac = rng.uniform(0.55, 0.8), rng.uniform(0.45, 0.65), rng.uniform(0.45, 0.6)
    under = 0.32
    c, s = math.cos(yaw), math.sin(yaw)
    boxes = [Box(center=(x, under / 2, z), half=(width / 2 - 0.12, under / 2, length / 2 - 0.35), yaw_rad=yaw,
                 side_tex="tyre", side_tint=(0.5, 0.5, 0.5), top_tex="tyre", top_tint=(0.5, 0.5, 0.5)),
             Box(center=(x, under + body_h / 2, z), half=(width / 2, body_h / 2, length / 2), yaw_rad=yaw,
                 side_tex="paint_car", side_tile_m=(length, 1.0), side_tint=colour,
                 top_tex="paint_car", top_tile_m=(3.0, 3.0), top_tint=colour)]
    if kind == "van":
        boxes[1].side_tex, boxes[1].side_tile_m = ("cabin", (length / 2.0, body_h * 1.25)) if rng.random() < 0.4 \
            else ("paint_car", (length, 1.0))
    if cabin_h > 0:
        shift = rng.uniform(-0.15, 0.05) * length
        boxes.append(Box(center=(x + s * shift, under + body_h + cabin_h / 2, z + c * shift),
                         half=(width / 2 - 0.08, cabin_h / 2, cabin_frac * length / 2), yaw_rad=yaw,
                         side_tex="cabin", side_tile_m=(cabin_frac * length, cabin_h * 1.05), side_tint=colour,
                         top_tex="paint_car", top_tile_m=(3.0, 3.0), top_tint=colour))
    return boxes


def _building_row(rng: np.random.Generator, side: int, x_inner: float, z0: float, z1: float, setback: tuple[float, float],
                  height: tuple[float, float], p_gap: float) -> list[Box]:
    """Buildings along one side of the street between z0 and z1 (side -1 left, +1 right)."""
    boxes, z = [], z0
    while z < z1:
        length = rng.uniform(6.0, 32.0)
        if rng.random() < p_gap:
            z += rng.uniform(3.0, 22.0)
            continue
        x_face = x_inner + side * rng.uniform(*setback)
        thick = rng.uniform(8.0, 20.0)
        h = rng.uniform(*height)
        tex = _FACADES[rng.integers(len(_FACADES))]
        tile = (rng.uniform(2.5, 4.0), rng.uniform(2.8, 3.6)) if "windows" in tex else (rng.uniform(1.5, 3.5),) * 2
        if rng.random() < 0.05:       # a mural
            tex, tile = _PHOTOS[rng.integers(len(_PHOTOS))], (length, h)
        boxes.append(Box(center=(x_face + side * thick / 2, h / 2, z + length / 2), half=(thick / 2, h / 2, length / 2),
                         side_tex=tex, side_tile_m=tile, side_tint=_tint(rng, _WALL_COLOURS),
                         top_tex="concrete", top_tile_m=(4.0, 4.0), top_tint=(0.4, 0.4, 0.4)))
        z += length + (rng.uniform(0.0, 2.0) if rng.random() < 0.5 else 0.0)
    return boxes


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one random street scene from ``rng``."""
    sc = Scene()
    sc.noise_seed = int(rng.integers(2**31))
    sc.road_half_m = float(rng.uniform(4.5, 9.0))
    n_lanes = max(2, int(round(2 * sc.road_half_m / 3.3)))
    sc.lane_width_m = 2 * sc.road_half_m / n_lanes
    sc.dash_period_m, sc.dash_duty = float(rng.uniform(6, 14)), float(rng.uniform(0.3, 0.6))
    sc.road_tint = tuple((rng.uniform(0.25, 0.45) * np.array([1.0, 1.0, 1.03])).tolist())
    rh = sc.road_half_m
    sw = float(rng.uniform(1.5, 4.5))
    kerb = float(rng.uniform(0.1, 0.2))
    cam = sc.camera
    cam.height_m = float(rng.uniform(1.45, 1.75))
    cam.pitch_rad = float(np.deg2rad(np.clip(rng.normal(0.0, 1.5), -3.5, 3.5)))
    cam.roll_rad = float(np.deg2rad(rng.uniform(-1.5, 1.5)))
    cam.yaw_rad = float(np.deg2rad(np.clip(rng.normal(0.0, 6.0), -15, 15)))
    cam.x_m = float(rng.uniform(-rh + 2.9, rh - 2.9))

    junction = rng.random() < 0.35
    z_end = 220.0             # where the side streets (sidewalks, facades) end
    z_open = 220.0            # where the open road ends (the far kerb of a crossing street)
    boxes: list[Box] = []
    if junction:
        cross_w = float(rng.uniform(7.0, 14.0))
        d = float(rng.uniform(12.0 + 2 * sw + cross_w, 110.0))     # the side streets reach >= 12 m ahead
        sc.cross_road_z_m = (d - sw - cross_w, d - sw)
        z_open = d - sw
        z_end = d - sw - cross_w - sw
        boxes.append(Box(center=(0.0, kerb / 2, d - sw / 2), half=(120.0, kerb / 2, sw / 2), side_tex="concrete",
                         side_tile_m=(1.0, 1.0), top_tex="paving", top_tile_m=(2.0, 2.0), top_tint=(0.6, 0.58, 0.55)))
        for side in (-1, 1):     # facades across the street, with gaps
            row = _building_row(rng, 1, 0.0, 0.0, 140.0, (0.0, 3.0), (4.0, 28.0), 0.25)
            for b in row:        # a row along +Z turned by 90 degrees: facades face the camera at Z >= d
                cx, cy_, cz = b.center
                hx, hy, hz = b.half
                boxes.append(Box(center=(side * cz, cy_, d + cx), half=(hz, hy, hx),
                                 side_tex=b.side_tex, side_tile_m=b.side_tile_m, side_tint=b.side_tint,
                                 top_tex=b.top_tex, top_tile_m=b.top_tile_m, top_tint=b.top_tint))
    for side in (-1, 1):
        x_kerb = side * rh
        boxes.append(Box(center=(x_kerb + side * sw / 2, kerb / 2, (z_end - 30.0) / 2),
                         half=(sw / 2, kerb / 2, (z_end + 30.0) / 2), side_tex="concrete", side_tile_m=(1.0, 1.0),
                         side_tint=(0.7, 0.7, 0.68), top_tex="paving", top_tile_m=(2.0, 2.0),
                         top_tint=tuple((rng.uniform(0.45, 0.75) * np.array([1.0, 0.97, 0.93])).tolist())))
        x_in = x_kerb + side * sw
        if rng.random() < 0.2:      # open side: trees and low walls
            z = -20.0
            while z < z_end:
                z += rng.uniform(5.0, 18.0)
                x = x_in + side * rng.uniform(0.5, 6.0)
                trunk_h, crown = rng.uniform(1.8, 3.5), rng.uniform(1.5, 3.5)
                boxes.append(Box(center=(x, trunk_h / 2, z), half=(0.18, trunk_h / 2, 0.18), side_tex="wood",
                                 side_tile_m=(0.6, 1.5), side_tint=(0.4, 0.3, 0.25)))
                boxes.append(Box(center=(x, trunk_h + crown * 0.5, z), half=(crown / 2, crown * 0.5, crown / 2),
                                 yaw_rad=float(rng.uniform(0, np.pi / 2)), side_tex="leaves", side_tile_m=(1.5, 1.5),
                                 side_tint=(0.9, 0.9, 0.9), top_tex="leaves", top_tile_m=(1.5, 1.5), top_tint=(1, 1, 1)))
            if rng.random() < 0.6:      # low garden walls: a building row flattened to 20 cm x 0.8-2.5 m
                for b in _building_row(rng, side, x_in + side * 7.0, -20.0, z_end, (0.0, 0.5), (1.0, 2.0), 0.3):
                    h = float(rng.uniform(0.8, 2.5))
                    boxes.append(Box(center=(b.center[0], h / 2, b.center[2]), half=(0.2, h / 2, b.half[2]),
                                     side_tex="brick", side_tile_m=(1.5, 1.5), side_tint=_tint(rng, _WALL_COLOURS)))
            boxes += _building_row(rng, side, x_in, -20.0, z_end, (25.0, 60.0), (6.0, 30.0), 0.4)
        else:
            boxes += _building_row(rng, side, x_in, -20.0, z_end, (0.0, 6.0), (3.0, 26.0), float(rng.uniform(0.1, 0.4)))
            if rng.random() < 0.7:      # a second, taller row seen through the gaps
                boxes += _building_row(rng, side, x_in, -20.0, z_end, (16.0, 40.0), (8.0, 40.0), 0.2)
        # poles and street furniture on the sidewalk
        z = float(rng.uniform(-10.0, 10.0))
        spacing = rng.uniform(8.0, 25.0)
        while z < z_end and rng.random() < 0.9:
            w, h = rng.uniform(0.12, 0.3), rng.uniform(3.0, 7.5)
            boxes.append(Box(center=(x_kerb + side * rng.uniform(0.3, 0.8), h / 2, z), half=(w / 2, h / 2, w / 2),
                             side_tex="stripes" if rng.random() < 0.3 else "concrete", side_tile_m=(0.5, 1.0),
                             side_tint=_tint(rng, _WALL_COLOURS)))
            z += spacing * rng.uniform(0.8, 1.2)
        if rng.random() < 0.35:         # billboard on two posts
            z = float(rng.uniform(8.0, min(60.0, max(z_end, 9.0))))
            bw, bh, lift = rng.uniform(2.5, 5.0), rng.uniform(1.5, 3.0), rng.uniform(1.0, 3.5)
            x = x_in - side * 0.5
            boxes.append(Box(center=(x, lift + bh / 2, z), half=(0.1, bh / 2, bw / 2), side_tex=_PHOTOS[rng.integers(len(_PHOTOS))],
                             side_tile_m=(bw, bh), side_tint=(0.95, 0.95, 0.95)))
            for dz in (-bw / 3, bw / 3):
                boxes.append(Box(center=(x, lift / 2, z + dz), half=(0.08, lift / 2, 0.08), side_tint=(0.3, 0.3, 0.3)))
    # parked cars along both kerbs; ``spots`` keeps ground footprints (x, z, half x, half z) to avoid overlaps
    spots: list[tuple[float, float, float, float]] = []

    def free(x: float, z: float, hx: float, hz: float) -> bool:
        return all(abs(x - xs) > hx + hxs + 0.2 or abs(z - zs) > hz + hzs + 0.3 for xs, zs, hxs, hzs in spots)

    for side in (-1, 1):
        z = float(rng.uniform(-8.0, 4.0))
        fill = rng.uniform(0.3, 0.95)
        while z < min(z_end, 95.0):
            if rng.random() < fill:
                kind = "van" if rng.random() < 0.15 else "car"
                x = side * (rh - 1.1 - rng.uniform(0.0, 0.3))
                boxes += _car(rng, x, z + 3.0, float(rng.normal(0, 0.04)), kind)
                spots.append((x, z + 3.0, 1.15, 3.3))
                z += rng.uniform(5.0, 7.5)
            else:
                z += rng.uniform(2.0, 15.0)
    # traffic in the lanes
    n_lanes = int(round(2 * rh / sc.lane_width_m))
    for _ in range(int(rng.integers(0, 6))):
        lane = int(rng.integers(1, n_lanes - 1)) if n_lanes > 2 else int(rng.integers(0, n_lanes))
        x = -rh + (lane + 0.5) * sc.lane_width_m + rng.normal(0, 0.2)
        z = float(rng.uniform(6.0, min(80.0, z_open - 3.0)))
        if free(x, z, 1.2, 3.3):
            boxes += _car(rng, x, z, float(rng.normal(0, 0.08)), "van" if rng.random() < 0.2 else "car")
            spots.append((x, z, 1.2, 3.3))
    # loose objects: crates, pillars, blocks, anywhere on road or sidewalk
    for _ in range(int(rng.integers(2, 12))):
        x = float(rng.uniform(-rh - sw, rh + sw))
        z = float(rng.uniform(3.0, min(60.0, z_open - 1.0)))
        base = kerb if abs(x) > rh else 0.0
        if rng.random() < 0.3:     # pillar
            w, h = rng.uniform(0.3, 1.0), rng.uniform(1.5, 6.0)
            half = (w / 2, h / 2, w / 2)
            tex, tile = ("stripes", (0.5, 1.0)) if rng.random() < 0.5 else ("concrete", (1.0, 1.0))
        else:                      # crate / block
            s = rng.uniform(0.4, 1.6)
            half = (s / 2 * rng.uniform(0.7, 1.3), s / 2, s / 2 * rng.uniform(0.7, 1.3))
            tex, tile = ("wood", (s, s)) if rng.random() < 0.5 else (_PHOTOS[rng.integers(len(_PHOTOS))], (2 * half[0], s))
        radius = math.hypot(half[0], half[2])        # any yaw fits in this square
        if not free(x, z, radius, radius):
            continue
        spots.append((x, z, radius, radius))
        boxes.append(Box(center=(x, base + half[1], z), half=half, yaw_rad=float(rng.uniform(0, np.pi / 2)),
                         side_tex=tex, side_tile_m=tile, side_tint=_tint(rng, _WALL_COLOURS), top_tex=tex, top_tile_m=tile,
                         top_tint=_tint(rng, _WALL_COLOURS)))
    origin = cam.origin()
    sc.boxes = [b for b in boxes if not b.contains(origin, margin_m=0.6)]

    # light, sky, haze, sensor
    elev, azim = np.deg2rad(rng.uniform(15.0, 65.0)), rng.uniform(-np.pi, np.pi)
    sc.sun_dir = (float(np.cos(elev) * np.sin(azim)), float(np.sin(elev)), float(np.cos(elev) * np.cos(azim)))
    warm = rng.uniform(0.0, 0.15)
    sun = rng.uniform(0.8, 1.2)
    sc.sun_rgb = tuple((sun * np.array([1.0, 0.97 - warm / 2, 0.92 - warm])).tolist())
    amb = rng.uniform(0.2, 0.4)
    sc.ambient_rgb = tuple((amb * np.array([0.9, 0.95, 1.1])).tolist())
    sc.haze_m = float(rng.uniform(250.0, 900.0))
    sc.cloud_amount = float(rng.uniform(0.0, 0.8))
    blue = rng.uniform(0.0, 1.0)
    sc.sky_zenith_rgb = tuple(((1 - blue) * np.array([0.45, 0.5, 0.6]) + blue * np.array([0.1, 0.25, 0.7])).tolist())
    sc.sky_horizon_rgb = tuple((np.array([0.7, 0.75, 0.85]) * rng.uniform(0.8, 1.1)).tolist())
    sc.haze_rgb = tuple((0.5 * np.asarray(sc.sky_horizon_rgb) + 0.5 * np.asarray(sc.ambient_rgb) * 2.0).tolist())
    edges = np.sort(rng.uniform(-np.pi, np.pi, size=int(rng.integers(10, 40))))
    sc.skyline = tuple((float(e), float(np.deg2rad(rng.uniform(0.0, 3.0)) * (rng.random() < 0.8))) for e in edges)
    sc.verge_tex = "grass" if rng.random() < 0.7 else "paving"
    sc.exposure = float(rng.uniform(0.8, 1.1))
    return sc


# ============================================================================ ray casting
def camera_rays(camera: Camera, height: int, width: int) -> np.ndarray:
    """World ray directions (3, H, W), float64, scaled so that the ray parameter equals the z-depth.

    Pixel (row i, column j) looks through the point ((j + 0.5 - W/2) / f, (i + 0.5 - H/2) / f, 1) in
    camera coordinates, with f = ``camera.focal_rel * W`` pixels.
    """
    f = camera.focal_rel * width
    xn = (np.arange(width) + 0.5 - width / 2) / f
    yn = (np.arange(height) + 0.5 - height / 2) / f
    dcam = np.stack([np.broadcast_to(xn[None, :], (height, width)), np.broadcast_to(yn[:, None], (height, width)),
                     np.ones((height, width))])
    return np.einsum("ij,jhw->ihw", camera.rotation(), dcam)


def _slab(origin_l: np.ndarray, d_l: np.ndarray, half: np.ndarray):
    """Ray / axis-aligned box (centred at 0, half sizes ``half``) slab test.

    ``origin_l`` (3,) or (3, ...) and ``d_l`` (3, ...) in box coordinates. Returns (t_near, t_far, axis of the
    entry face); hit where t_near <= t_far."""
    shape = (3,) + (1,) * (d_l.ndim - 1)
    o = origin_l.reshape(shape) if origin_l.ndim == 1 else origin_l
    h = half.reshape(shape)
    d = np.where(np.abs(d_l) < 1e-12, 1e-12, d_l)
    inv = 1.0 / d
    t1 = (-h - o) * inv
    t2 = (h - o) * inv
    tn = np.minimum(t1, t2)
    tf = np.maximum(t1, t2)
    axis = np.argmax(tn, axis=0)
    return np.max(tn, axis=0), np.min(tf, axis=0), axis


_BOX_EDGES = np.array([(k, k ^ bit) for k in range(8) for bit in (1, 2, 4) if k < k ^ bit])   # pairs of corners


def _footprint(corners: np.ndarray, cam_rot: np.ndarray, origin: np.ndarray, f: float, height: int, width: int):
    """Pixel rectangle (r0, r1, c0, c1) that may see the box with ``corners`` (8, 3) (world, ordered as
    :meth:`Box.corners`), or None when it is entirely behind the camera or outside the image."""
    pc = (corners - origin) @ cam_rot                     # camera coordinates (x right, y down, z fwd)
    near = 1e-2
    z = pc[:, 2]
    if np.all(z <= near):
        return None
    if np.any(z <= near):
        # clip the 12 edges at the plane z = near: the part in front projects within the corners in front
        # plus the edge crossings (corner k and k ^ bit differ in one coordinate)
        a, b = _BOX_EDGES[:, 0], _BOX_EDGES[:, 1]
        za, zb = z[a], z[b]
        cross = (za - near) * (zb - near) < 0
        s = (near - za[cross]) / (zb[cross] - za[cross])
        pts = pc[a[cross]] + s[:, None] * (pc[b[cross]] - pc[a[cross]])
        pc = np.concatenate([pc[z > near], pts])
        z = np.maximum(pc[:, 2], near)
    u = pc[:, 0] / z * f + width / 2
    v = pc[:, 1] / z * f + height / 2
    c0, c1 = int(max(0, np.floor(u.min() - 0.5))), int(min(width, np.ceil(u.max() + 0.5)))
    r0, r1 = int(max(0, np.floor(v.min() - 0.5))), int(min(height, np.ceil(v.max() + 0.5)))
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _ground(scene: Scene, point: np.ndarray, bank: TextureBank):
    """Texture id, tint (..., 3) and (u, v) tile coordinates of ground points (world X, Z in ``point``)."""
    x, z = point[0], point[2]
    xr = x
    road = np.abs(xr) <= scene.road_half_m
    if scene.cross_road_z_m is not None:
        road |= (z >= scene.cross_road_z_m[0]) & (z <= scene.cross_road_z_m[1])
    tex = np.where(road, bank.index("asphalt"), bank.index(scene.verge_tex))
    tint = np.where(road[..., None], np.asarray(scene.road_tint), np.asarray(scene.verge_tint))
    tile = np.where(road, 3.0, 2.0)
    # lane markings: solid edge lines, dashed lane dividers, along Z inside the straight road
    hw = scene.marking_width_m / 2
    along = np.abs(xr) <= scene.road_half_m
    if scene.cross_road_z_m is not None:
        along &= z < scene.cross_road_z_m[0]
    edge = along & (np.abs(np.abs(xr) - (scene.road_half_m - 0.35)) < hw)
    k = np.round((xr + scene.road_half_m) / scene.lane_width_m)
    lane_line = (np.abs(xr + scene.road_half_m - k * scene.lane_width_m) < hw) & (k > 0.5) & (k < 2 * scene.road_half_m / scene.lane_width_m - 0.5)
    dashed = lane_line & (np.mod(z, scene.dash_period_m) < scene.dash_duty * scene.dash_period_m) & along
    paint = edge | dashed
    tex = np.where(paint, bank.index("paint"), tex)
    tint = np.where(paint[..., None], np.array([0.8, 0.8, 0.75]), tint)
    return tex, tint, x / tile, z / tile, tile


def render(scene: Scene, height: int, width: int, min_depth_m: float = 1.0, max_depth_m: float = 80.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast ``scene``. Returns image uint8 (H, W, 3) linear RGB and depth float32 (H, W) in metres
    (z-depth along the optical axis; 0 where the first hit is beyond ``max_depth_m``, nearer than
    ``min_depth_m``, or in the sky)."""
    bank = texture_bank()
    cam = scene.camera
    f = cam.focal_rel * width
    rot = cam.rotation()
    origin = cam.origin()
    d = camera_rays(cam, height, width)                            # (3, H, W)
    H, W = height, width
    tbuf = np.full((H, W), np.inf)
    owner = np.full((H, W), -1, dtype=np.int32)                    # index of the box seen, -1 = ground / sky

    # ground plane Y = 0 (the camera is above it)
    down = d[1] < -1e-9
    tbuf[down] = -origin[1] / d[1][down]

    # boxes: nearest hit per pixel, each box tested only inside its projected rectangle
    nb = len(scene.boxes)
    centers = np.array([b.center for b in scene.boxes], dtype=float).reshape(nb, 3)
    halves = np.array([b.half for b in scene.boxes], dtype=float).reshape(nb, 3)
    yaws = np.array([b.yaw_rad for b in scene.boxes], dtype=float)
    rots = np.array([b.rotation() for b in scene.boxes], dtype=float).reshape(nb, 3, 3)
    corners = centers[:, None, :] + np.einsum("kj,bj,bij->bki", _CORNER_SIGNS, halves, rots)     # (B, 8, 3)
    for k in range(nb):
        rect = _footprint(corners[k], rot, origin, f, H, W)
        if rect is None:
            continue
        r0, r1, c0, c1 = rect
        br = rots[k]
        o_l = br.T @ (origin - centers[k])
        d_l = d[:, r0:r1, c0:c1] if yaws[k] == 0.0 else np.einsum("ji,jhw->ihw", br, d[:, r0:r1, c0:c1])
        tn, tf, _ = _slab(o_l, d_l, halves[k])
        sub = tbuf[r0:r1, c0:c1]
        hit = (tn <= tf) & (tn > 1e-6) & (tn < sub)
        sub[hit] = tn[hit]
        owner[r0:r1, c0:c1][hit] = k

    hit = np.isfinite(tbuf)
    point = origin[:, None, None] + np.where(hit, tbuf, 0.0)[None] * d
    # ground surfaces
    tex, tint, uu, vv, tile = _ground(scene, point, bank)
    tex = np.where(hit, tex, -1)
    nrm = np.zeros((3, H, W))
    nrm[1] = 1.0
    # box surfaces (deferred: only the visible hit of each pixel): face from the local hit point
    br_, bc_ = np.nonzero(owner >= 0)
    if br_.size:
        own = owner[br_, bc_]
        cos, sin = np.cos(yaws[own]), np.sin(yaws[own])                 # box rotation about Y (Box.rotation)
        rel = point[:, br_, bc_] - centers[own].T
        p_l = np.stack([cos * rel[0] - sin * rel[2], rel[1], sin * rel[0] + cos * rel[2]], axis=1)   # (n, 3) local
        half = halves[own]
        ax = np.argmax(np.abs(p_l) / half, axis=1)
        n_idx = np.arange(own.size)
        n_l = np.zeros_like(p_l)
        n_l[n_idx, ax] = np.sign(p_l[n_idx, ax])
        side = ax != 1
        u = np.where(ax == 0, p_l[:, 2], p_l[:, 0])
        v = np.where(side, p_l[:, 1] + half[:, 1], p_l[:, 2])
        side_tile = np.array([b.side_tile_m for b in scene.boxes], dtype=float).reshape(nb, 2)[own]
        top_tile = np.array([b.top_tile_m for b in scene.boxes], dtype=float).reshape(nb, 2)[own]
        tl = np.where(side[:, None], side_tile, top_tile)
        side_tex = np.array([bank.index(b.side_tex) for b in scene.boxes])[own]
        top_tex = np.array([bank.index(b.top_tex) for b in scene.boxes])[own]
        side_tint = np.array([b.side_tint for b in scene.boxes], dtype=float).reshape(nb, 3)[own]
        top_tint = np.array([b.top_tint for b in scene.boxes], dtype=float).reshape(nb, 3)[own]
        tex[br_, bc_] = np.where(side, side_tex, top_tex)
        uu[br_, bc_] = u / tl[:, 0]
        vv[br_, bc_] = v / tl[:, 1]
        tile[br_, bc_] = tl.mean(axis=1)
        tint[br_, bc_] = np.where(side[:, None], side_tint, top_tint)
        nrm[:, br_, bc_] = np.stack([cos * n_l[:, 0] + sin * n_l[:, 2], n_l[:, 1], -sin * n_l[:, 0] + cos * n_l[:, 2]])

    # --- shading: albedo from mip-mapped textures
    dnorm = np.sqrt(np.sum(d * d, axis=0))
    dist = np.where(hit, tbuf, 0.0) * dnorm                       # Euclidean distance (m)
    cosang = np.abs(np.sum(nrm * d, axis=0)) / dnorm
    footprint = dist / f / np.sqrt(np.maximum(cosang, 0.05))
    level = np.clip(np.round(np.log2(np.maximum(footprint / (tile / TEX_RES), 1e-6))), 0, int(math.log2(TEX_RES))).astype(np.int32)
    albedo = np.zeros((H, W, 3))
    hr, hc = np.nonzero(hit)
    key = tex[hr, hc] * 16 + level[hr, hc]
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    bounds = np.flatnonzero(np.diff(key_sorted)) + 1
    for grp in (np.split(order, bounds) if order.size else []):
        k = key[grp[0]]
        img = bank.pyramids[k // 16][k % 16]
        r = img.shape[0]
        rr, cc = hr[grp], hc[grp]
        col = np.floor(np.mod(uu[rr, cc], 1.0) * r).astype(np.int64) % r
        row = np.floor((1.0 - np.mod(vv[rr, cc], 1.0)) * r).astype(np.int64) % r
        albedo[rr, cc] = img[row, col]
    albedo *= tint

    # --- direct sun with ray-cast shadows, plus ambient
    sun = np.asarray(scene.sun_dir, dtype=float)
    sun /= np.linalg.norm(sun)
    lambert = np.maximum(np.einsum("i,ihw->hw", sun, nrm), 0.0) * hit
    lit_r, lit_c = np.nonzero(lambert > 0)
    pts = point[:, lit_r, lit_c] + 1e-4 * nrm[:, lit_r, lit_c]
    shadow = np.zeros(lit_r.size, dtype=bool)
    by_x = np.argsort(pts[0], kind="stable")                       # points sorted by X: each box scans a slice
    xs = pts[0, by_x]
    for k, box in enumerate(scene.boxes):
        if not box.casts_shadow or pts.shape[1] == 0:
            continue
        cn = corners[k]
        ymax = cn[:, 1].max()
        reach = ymax / max(sun[1], 1e-3)                             # surfaces are at Y >= 0
        lo = cn.min(axis=0) - np.maximum(0.0, sun * reach)
        hi = cn.max(axis=0) - np.minimum(0.0, sun * reach)
        sel = by_x[np.searchsorted(xs, lo[0]):np.searchsorted(xs, hi[0], side="right")]
        cand = sel[(pts[1, sel] < ymax) & (pts[2, sel] >= lo[2]) & (pts[2, sel] <= hi[2]) & ~shadow[sel]]
        if cand.size == 0:
            continue
        br = rots[k]
        o_l = br.T @ (pts[:, cand] - centers[k][:, None])
        d_l = np.broadcast_to((br.T @ sun)[:, None], o_l.shape)
        tn, tf, _ = _slab(o_l, d_l, halves[k])
        shadow[cand[(np.maximum(tn, 0.0) <= tf) & (tf > 1e-6)]] = True
    direct = lambert.copy()
    direct[lit_r[shadow], lit_c[shadow]] = 0.0
    light = np.asarray(scene.ambient_rgb) * (0.75 + 0.25 * np.abs(nrm[1]))[..., None] + direct[..., None] * np.asarray(scene.sun_rgb)
    colour = albedo * light

    # --- haze
    a = np.exp(-dist / scene.haze_m)[..., None]
    colour = colour * a + np.asarray(scene.haze_rgb) * (1.0 - a)

    # --- sky with clouds and a far skyline (no depth)
    sky = ~hit
    if sky.any():
        dn = d[:, sky] / dnorm[sky]
        elev = np.arcsin(np.clip(dn[1], -1, 1))
        az = np.arctan2(dn[0], dn[2])
        g = np.clip(elev / np.deg2rad(25.0), 0.0, 1.0) ** 0.6
        sky_col = (1 - g)[:, None] * np.asarray(scene.sky_horizon_rgb) + g[:, None] * np.asarray(scene.sky_zenith_rgb)
        clouds = _periodic_noise(np.random.default_rng(scene.noise_seed), 128, beta=2.6)
        ci = np.floor(np.mod(az / (2 * np.pi) * 6.0, 1.0) * 128).astype(int) % 128
        cr = np.floor(np.mod(np.tan(np.clip(elev, 0.0, 1.3)) * 1.5, 1.0) * 128).astype(int) % 128
        cl = np.clip((clouds[cr, ci] - (1.0 - scene.cloud_amount)) * 3.0, 0.0, 1.0)[:, None]
        sky_col = sky_col * (1 - cl) + cl * np.array([0.9, 0.9, 0.92])
        if scene.skyline:
            edges = np.array([e for e, _ in scene.skyline])
            heights = np.array([h for _, h in scene.skyline])
            block = np.searchsorted(edges, az) % len(edges)
            far = elev < heights[block]
            sky_col[far] = 0.7 * np.asarray(scene.haze_rgb) + 0.3 * np.asarray(scene.ambient_rgb)
        colour[sky] = sky_col

    image = np.clip(colour * scene.exposure, 0.0, 1.0)
    image = np.round(image * 255.0).astype(np.uint8)
    depth = np.where(hit, tbuf, 0.0)
    depth = np.where((depth >= min_depth_m) & (depth <= max_depth_m), depth, 0.0).astype(np.float32)
    return image, depth


def scene_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The random stream of image ``index`` of ``split`` (independent of worker count and split sizes)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split '{split}' (expected one of {tuple(SPLIT_CODES)})")
    return np.random.SeedSequence(int(seed), spawn_key=(SPLIT_CODES[split], int(index)))


def render_scene(rng_seed: int | np.random.SeedSequence, height: int, width: int, min_depth_m: float = 1.0,
                 max_depth_m: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """Sample and render one random scene.

    Args:
        rng_seed: integer seed or ``numpy.random.SeedSequence`` (see :func:`scene_seed`).
        height, width: image size in pixels (any size >= 1).
        min_depth_m, max_depth_m: valid depth range; depths outside are set to 0 (invalid).
    Returns:
        image uint8 (H, W, 3) linear RGB, depth float32 (H, W) metres (z-depth, 0 = invalid).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive (got height={height}, width={width})")
    if not 0 < min_depth_m < max_depth_m:
        raise ValueError(f"need 0 < min_depth_m < max_depth_m (got {min_depth_m}, {max_depth_m})")
    rng = np.random.default_rng(rng_seed)
    return render(sample_scene(rng), height, width, min_depth_m, max_depth_m)


# ============================================================================ dataset
def _render_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    seed, split, start, stop, height, width, min_d, max_d = args
    n = stop - start
    images = np.empty((n, height, width, 3), dtype=np.uint8)
    depths = np.empty((n, height, width), dtype=np.float32)
    for k in range(n):
        images[k], depths[k] = render_scene(scene_seed(seed, split, start + k), height, width, min_d, max_d)
    return images, depths


def baseline_abs_rel(train_depth: np.ndarray, test_depth: np.ndarray) -> dict[str, float]:
    """AbsRel of two trivial predictors fitted on ``train_depth`` and scored on ``test_depth`` (valid pixels only).

    ``mean``: one constant, the mean of all valid training depths. ``row_mean``: per image row, the mean
    valid training depth of that row (what perspective alone predicts); rows without valid training
    pixels fall back to the global mean. Arrays: float (N, H, W) metres, 0 = invalid.
    """
    train = np.asarray(train_depth, dtype=np.float64)
    test = np.asarray(test_depth, dtype=np.float64)
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"train and test depth shapes differ: {train.shape} vs {test.shape}")
    valid_tr = train > 0
    if not valid_tr.any():
        raise ValueError("training depth has no valid pixel")
    mean = train[valid_tr].mean()
    cnt = valid_tr.sum(axis=(0, 2))
    row = np.where(cnt > 0, (train * valid_tr).sum(axis=(0, 2)) / np.maximum(cnt, 1), mean)
    valid = test > 0
    gt = test[valid]
    pred_row = np.broadcast_to(row[None, :, None], test.shape)[valid]
    return {"mean": float(np.mean(np.abs(mean - gt) / gt)), "row_mean": float(np.mean(np.abs(pred_row - gt) / gt))}


def _pool_context():
    # fork: the workers inherit the texture bank and never re-run the caller's __main__ (a Snakemake script
    # has no __main__ guard, which "spawn" / "forkserver" would execute again in every worker).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def prepare_synthetic(cfg, out_dir: str | Path) -> dict:
    """Generate the synthetic dataset described by ``cfg.data`` into ``out_dir`` (see :mod:`dko.data.format`).

    Uses ``cfg.seed``, ``cfg.data.{height, width, n_train, n_val, n_test, min_depth_m, max_depth_m, workers}``.
    Returns a summary: image counts, ``generate_s`` (wall seconds), ``images_per_s``, ``valid_fraction``,
    depth percentiles of valid pixels (``depth_p05_m``, ``depth_p50_m``, ``depth_p95_m``) and the AbsRel of the
    trivial mean / row-mean predictors (``baseline_mean_absrel``, ``baseline_rowmean_absrel``, train -> test).
    """
    from tqdm import tqdm

    from dko.data.format import SplitWriter, load_split, write_meta

    data = cfg.data
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLIT_CODES:
        n = getattr(data, f"n_{split}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"config key 'data.n_{split}' must be a positive integer for synthetic data (got {n!r})")
        counts[split] = n
    H, W = int(data.height), int(data.width)
    (out_dir / "meta.json").unlink(missing_ok=True)     # meta.json marks a complete dataset: drop a stale one first
    start = time.perf_counter()
    texture_bank()                      # build once; forked workers inherit it
    workers = min(int(data.workers), os.cpu_count() or 1, sum(counts.values()))
    chunk = 8
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) if workers > 1 else None
    try:
        for split, n in counts.items():
            jobs = [(int(cfg.seed), split, s, min(s + chunk, n), H, W, float(data.min_depth_m), float(data.max_depth_m))
                    for s in range(0, n, chunk)]
            results = pool.map(_render_chunk, jobs) if pool else map(_render_chunk, jobs)
            with SplitWriter(out_dir, split, n, H, W) as writer, tqdm(total=n, desc=f"synthetic {split}", leave=False) as bar:
                for job, (images, depths) in zip(jobs, results):
                    for k in range(images.shape[0]):
                        i = job[2] + k
                        writer.write(i, images[k], depths[k], f"{split}-{i:05d}-seed{cfg.seed}")
                    bar.update(images.shape[0])
    finally:
        if pool:
            pool.shutdown()
    elapsed = time.perf_counter() - start
    write_meta(out_dir, source="synthetic", protocol="synthetic", height=H, width=W, min_depth_m=data.min_depth_m,
               max_depth_m=data.max_depth_m, counts=counts, seed=int(cfg.seed), generator_version=GENERATOR_VERSION,
               focal_px=FOCAL_REL * W, depth_kind="z-depth along the optical axis (m)", color="linear RGB",
               image_encoding="linear", linear_light=True,
               ground_truth={split: "rendered z-depth" for split in counts})

    train = load_split(out_dir, "train").depth
    test = load_split(out_dir, "test").depth
    valid = test[test > 0]
    base = baseline_abs_rel(train, test)
    summary = {f"n_{k}": v for k, v in counts.items()}
    summary.update(generate_s=elapsed, images_per_s=sum(counts.values()) / max(elapsed, 1e-9), workers=workers,
                   valid_fraction=float(valid.size / test.size), depth_p05_m=float(np.percentile(valid, 5)),
                   depth_p50_m=float(np.percentile(valid, 50)), depth_p95_m=float(np.percentile(valid, 95)),
                   baseline_mean_absrel=base["mean"], baseline_rowmean_absrel=base["row_mean"])
    log.info("synthetic dataset: %s images in %.1f s (%d workers), valid %.2f, baseline AbsRel mean %.3f row-mean %.3f",
             sum(counts.values()), elapsed, workers, summary["valid_fraction"], base["mean"], base["row_mean"])
    return summary
