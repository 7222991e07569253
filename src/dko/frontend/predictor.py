"""The opto-electronic depth predictor: a DepthNet whose normalisation + conv1 is a realised front end.

* :class:`OptoFront` - replaces ``DepthNet.front`` by the :class:`~dko.frontend.layer.OptoConv1` of a
  ``frontend.npz`` (optionally with sensor noise, optionally with depth-layered image formation).
* :class:`OptoPredictor` / :func:`build_opto_predictor` - the predictor the evaluation calls: any DepthNet
  checkpoint with any ``frontend.npz`` (DKO's or an E2E variant's), with or without noise, layered or not.
  The models ``dko``, ``dko_noisy``, ``dko_layered``, ``e2e_<variant>`` and ``e2e_<variant>_noisy`` are all
  this builder with other inputs and flags; which model uses which is the caller's table, not this module's.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dko.data.format import DECODINGS, batch_to_tensors, input_decoding
from dko.depth.checkpoint import load_depthnet
from dko.frontend.file import load_frontend
from dko.frontend.layer import OptoConv1, nearest_distance_index
from dko.optics.sensor import SensorModel

__all__ = ["OptoFront", "OptoPredictor", "build_opto_predictor"]

log = logging.getLogger(__name__)


class OptoFront(nn.Module):
    """Replaces a DepthNet's normalisation + conv1 (``DepthNet.front``) by an :class:`OptoConv1`.

    Args:
        layer: the opto-electronic conv1.
        noise: add sensor noise (``layer.sensor``) with a seeded generator.
        layered: depth-layered image formation; set :attr:`depth_m` (B, H, W) before each forward.
        seed: seed of the noise generator (reset by :meth:`reset_noise`).
    """

    def __init__(self, layer: OptoConv1, *, noise: bool = False, layered: bool = False, seed: int = 0):
        super().__init__()
        if noise and layer.sensor is None:
            raise ValueError("noise=True needs a sensor model on the opto layer")
        self.layer = layer
        self.noise = bool(noise)
        self.layered = bool(layered)
        self.seed = int(seed)
        self.depth_m: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.reset_noise()

    def reset_noise(self) -> None:
        dev = self.layer.psfs.device
        self.generator = torch.Generator(device=dev).manual_seed(self.seed) if self.noise else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        depth = None
        if self.layered:
            if self.depth_m is None:
                raise ValueError("depth-layered image formation needs OptoFront.depth_m (B, H, W) set before forward")
            depth = self.depth_m.to(images.device)
        if depth is not None and not self.noise and self.layer.psfs.shape[0] > 1 \
                and not self.layer.spatially_varying:  # the fused form holds one PSF per element
            return self._layered_fused(images, depth)
        # without noise or depth layers the layer is linear: one dense conv (same result, faster)
        return self.layer(images, depth, noise=self.noise, generator=self.generator,
                          fused=not self.noise and not self.layered)

    def _layered_fused(self, images: torch.Tensor, depth_m: torch.Tensor) -> torch.Tensor:
        """Noise-free depth-layered forward as one dense conv per depth layer (the layer is linear without
        noise): the same image formation as :meth:`OptoConv1.sensor_images` + :meth:`OptoConv1.combine`."""
        layer = self.layer
        b, _, h, w = images.shape
        if depth_m.shape != (b, h, w):
            raise ValueError(f"depth_m must be (B, H, W) = {(b, h, w)}, got {tuple(depth_m.shape)}")
        pads = layer._pads(h, w)
        if min(pads) < 0:
            raise ValueError("depth-layered forward needs a PSF window of at least the kernel size")
        xp = layer._pad_raw(images)
        dp = F.pad(depth_m[:, None].to(torch.float64), pads, mode="replicate")[:, 0]
        index = nearest_distance_index(dp, layer.object_distances_m)
        out = None
        for d in range(layer.psfs.shape[0]):
            mask = (index == d)
            if not bool(mask.any()):
                continue
            y = F.conv2d(xp * mask[:, None].to(xp.dtype), layer.effective_weight(d), stride=layer.stride)
            out = y if out is None else out + y
        return out + layer.bias[None, :, None, None]


class _FeatureStats:
    """Accumulates conv1 feature fidelity and depth agreement with the electronic teacher."""

    def __init__(self):
        self.diff2 = self.ref2 = 0.0
        self.abs_rel_sum = self.delta1_sum = 0.0
        self.n_px = 0

    def result(self) -> dict:
        if self.n_px == 0:
            return {}
        return {"conv1_feature_rel_l2": math.sqrt(self.diff2 / max(self.ref2, 1e-300)),
                "teacher_abs_rel": self.abs_rel_sum / self.n_px, "teacher_delta1": self.delta1_sum / self.n_px}


class OptoPredictor:
    """Predictor (uint8 images (B, H, W, 3) [, depth (B, H, W)] -> depth (B, H, W) metres) of a DepthNet
    with an :class:`OptoFront`; with a teacher it also accumulates :meth:`extra_metrics`.

    ``decoding`` (:func:`dko.data.format.input_decoding` of the dataset): how the uint8 codes become the
    irradiance the optical layer convolves (``"srgb"``: decoded to linear light; ``"none"``: code / 255); the
    teacher gets the same input.
    """

    def __init__(self, model, front: OptoFront, device: Any = "cpu", teacher=None, *, decoding: str):
        if decoding not in DECODINGS:
            raise ValueError(f"unknown image decoding {decoding!r} (expected one of {DECODINGS})")
        self.decoding = decoding
        self.model = model.to(device).eval()
        self.model.front = front.to(device)
        self.front = front
        self.device = device
        self.teacher = teacher.to(device).eval() if teacher is not None else None
        self.needs_depth = front.layered
        self.stats = _FeatureStats()
        self._collect = True

    def __call__(self, images: np.ndarray, depth_m: np.ndarray | None = None) -> np.ndarray:
        images = np.array(images)
        img, _ = batch_to_tensors(images, np.zeros(images.shape[:3], np.float32), self.decoding)
        img = img.to(self.device)
        if self.front.layered:
            if depth_m is None:
                raise ValueError("the depth-layered predictor needs the ground-truth depth of the images")
            d = torch.as_tensor(np.asarray(depth_m, dtype=np.float32), device=self.device)
            # invalid (0) / out-of-range depth: the far end of the range (sky)
            d = torch.where(d > 0, d, torch.full_like(d, float(self.model.max_depth_m)))
            self.front.depth_m = d
        with torch.no_grad():
            depth = self.model.predict_depth(img)
            if self.teacher is not None and self._collect:
                # with noise this is a fresh draw, statistically the same as the one behind ``depth``
                feat = self.model.conv1_features(img)
                ref = self.teacher.conv1_features(img)
                self.stats.diff2 += float((feat.double() - ref.double()).square().sum())
                self.stats.ref2 += float(ref.double().square().sum())
                t_depth = self.teacher.predict_depth(img).double()
                rel = (depth.double() - t_depth).abs() / t_depth
                self.stats.abs_rel_sum += float(rel.sum())
                ratio = torch.maximum(depth.double() / t_depth, t_depth / depth.double())
                self.stats.delta1_sum += float((ratio < 1.25).double().sum())
                self.stats.n_px += int(t_depth.numel())
        return depth[:, 0].float().cpu().numpy()

    def extra_metrics(self) -> dict:
        """conv1 feature rel. L2 (vs the teacher's conv1 on the same images, over all evaluated images) and
        depth agreement with the teacher (AbsRel and delta<1.25 of this model's depth vs the teacher's, all pixels)."""
        self._collect = False
        return self.stats.result()


def build_opto_predictor(ctx, *, noise: bool, layered: bool) -> OptoPredictor:
    """Predictor of ``ctx.inputs["model"]`` (a DepthNet checkpoint) with conv1 replaced by the front end in
    ``ctx.inputs["frontend"]`` (frontend.npz); sensor noise from ``ctx.cfg.sensor`` when ``noise``; depth-layered
    image formation when ``layered``. With ``ctx.inputs["teacher"]`` (the electronic stage-1 model) it also
    reports conv1 feature fidelity and depth agreement with the teacher (:meth:`OptoPredictor.extra_metrics`)."""
    for key in ("model", "frontend"):
        if key not in ctx.inputs:
            raise ValueError(f"an opto-electronic model needs the input '{key}' (got {sorted(ctx.inputs)})")
    decoding = input_decoding(ctx.meta)  # the optics sees linear irradiance: decode sRGB codes first
    model, _ = load_depthnet(ctx.inputs["model"], ctx.device)
    fe = load_frontend(ctx.inputs["frontend"])
    conv, bank = model.conv1, fe.bank
    if (bank.n_out, bank.n_in, bank.kernel_size) != (conv.out_channels, conv.in_channels, conv.kernel_size[0]) \
            or (bank.stride, bank.padding) != (conv.stride[0], conv.padding[0]):
        raise ValueError(f"front end '{ctx.inputs['frontend']}' ({bank.n_out}x{bank.n_in}x{bank.kernel_size}, "
                         f"stride {bank.stride}) "
                         f"does not fit conv1 of '{ctx.inputs['model']}' ({conv.out_channels}x{conv.in_channels}x"
                         f"{conv.kernel_size[0]}, stride {conv.stride[0]})")
    if layered and fe.psfs.shape[0] < 2:
        log.warning("depth-layered evaluation with PSFs at a single object distance: identical to noise-free")
    sensor = SensorModel.from_config(ctx.cfg.sensor) if noise else None
    front = OptoFront(fe.opto_layer(sensor, ctx.device), noise=noise, layered=layered, seed=int(ctx.cfg.seed))
    teacher = None
    if "teacher" in ctx.inputs:
        teacher, _ = load_depthnet(ctx.inputs["teacher"], ctx.device)
    return OptoPredictor(model, front, ctx.device, teacher, decoding=decoding)
