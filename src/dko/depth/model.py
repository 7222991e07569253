"""DepthNet: input normalisation + ResNet encoder + Monodepth2 disparity decoder.

The first convolution is the layer the optics realises. ``DepthNet.conv1_features(x)`` computes
``conv1((x - norm_mean) / norm_std)`` from RAW images in [0, 1]; setting ``DepthNet.front`` to any
module mapping raw (B, 3, H, W) images in [0, 1] to conv1-shaped features replaces normalisation + conv1
(e.g. an optical layer with the normalisation folded in). ``forward_from_conv1(y)`` runs the rest.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dko.depth.decoder import MONODEPTH2_DECODER_CHANNELS, DepthDecoder
from dko.depth.resnet import ResnetEncoder
from dko.runtime import apply_cpu_convolution_backend


def disp_to_depth(disp: torch.Tensor, min_depth_m: float, max_depth_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid output in (0, 1) -> (scaled disparity in 1/m, depth in m), depth within [min_depth_m, max_depth_m].

    scaled = 1/max + (1/min - 1/max) * disp; depth = 1 / scaled (Monodepth2).
    """
    min_disp, max_disp = 1.0 / max_depth_m, 1.0 / min_depth_m
    scaled = min_disp + (max_disp - min_disp) * disp
    return scaled, 1.0 / scaled


MONODEPTH2_DEPTH_RANGE_M = (0.1, 100.0)
"""Monodepth2's disparity-to-depth range (its ``--min_depth`` / ``--max_depth`` defaults): what its weights output."""


REAL_SOURCES = ("kitti", "nyu")


def network_depth_range(net, dataset_range_m: tuple[float, float], source: str = "synthetic") -> tuple[float, float]:
    """(min, max) metres of a new network's output: ``network.depth_range_m``, else Monodepth2's range when it starts
    from Monodepth2 weights (``network.pretrained_dir``) or learns real data (``source`` kitti / nyu, whose evaluation
    range starts at 1 mm: a disparity range of 1000 1/m would waste the sigmoid), else the dataset's range
    (``dataset_range_m``, meta.json)."""
    if net.depth_range_m is not None:
        return float(net.depth_range_m[0]), float(net.depth_range_m[1])
    if net.pretrained_dir is not None or source in REAL_SOURCES:
        return MONODEPTH2_DEPTH_RANGE_M
    return float(dataset_range_m[0]), float(dataset_range_m[1])


class DepthNet(nn.Module):
    """Monocular depth network.

    Args:
        blocks_per_stage, base_width, conv1_kernel: encoder layout (see :class:`dko.depth.resnet.ResNet`).
        norm_mean, norm_std: input normalisation of raw [0, 1] images.
        min_depth_m, max_depth_m: disparity-to-depth range in metres.
        decoder_channels: 5 decoder widths (Monodepth2: 16, 32, 64, 128, 256).
        scales: disparity output scales.
    ``forward(images)``: images float (B, 3, H, W) in [0, 1] -> ``{("disp", s): (B, 1, H/2**s, W/2**s)}``.
    """

    def __init__(self, blocks_per_stage: Sequence[int] = (2, 2, 2, 2), base_width: int = 64, conv1_kernel: int = 7,
                 norm_mean: float = 0.45, norm_std: float = 0.225, min_depth_m: float = 0.1,
                 max_depth_m: float = 100.0, decoder_channels: Sequence[int] = MONODEPTH2_DECODER_CHANNELS,
                 scales: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if norm_std <= 0:
            raise ValueError(f"network.norm_std must be positive (got {norm_std})")
        if not (0 < min_depth_m < max_depth_m):
            raise ValueError(f"need 0 < min_depth_m < max_depth_m (got {min_depth_m}, {max_depth_m})")
        self.encoder = ResnetEncoder(blocks_per_stage, base_width, conv1_kernel)
        self.decoder = DepthDecoder(self.encoder.num_ch_enc, decoder_channels, scales)
        self.norm_mean, self.norm_std = float(norm_mean), float(norm_std)
        self.min_depth_m, self.max_depth_m = float(min_depth_m), float(max_depth_m)
        self.front: nn.Module | None = None
        self.arch = dict(blocks_per_stage=[int(b) for b in blocks_per_stage], base_width=int(base_width),
                         conv1_kernel=int(conv1_kernel), norm_mean=self.norm_mean, norm_std=self.norm_std,
                         min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m,
                         decoder_channels=[int(c) for c in decoder_channels], scales=[int(s) for s in scales])

    @classmethod
    def from_config(cls, net, dataset_range_m: tuple[float, float], source: str = "synthetic") -> "DepthNet":
        """Build from a :class:`dko.config.NetworkConfig`; depth range: :func:`network_depth_range`."""
        lo, hi = network_depth_range(net, dataset_range_m, source)
        return cls(blocks_per_stage=net.blocks_per_stage, base_width=net.base_width, conv1_kernel=net.conv1_kernel,
                   norm_mean=net.norm_mean, norm_std=net.norm_std, min_depth_m=lo, max_depth_m=hi,
                   decoder_channels=net.decoder_channels)

    @property
    def conv1(self) -> nn.Conv2d:
        """The first convolution (weights K x 3 x k x k, stride 2, padding k//2, no bias)."""
        return self.encoder.encoder.conv1

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.norm_mean) / self.norm_std

    def conv1_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (B, 3, H, W) in [0, 1] -> conv1 output (B, K, ceil(H/2), ceil(W/2)); uses ``front`` if set."""
        if self.front is not None:
            return self.front(images)
        return self.conv1(self.normalise(images))

    def forward_from_conv1(self, y: torch.Tensor) -> dict[tuple, torch.Tensor]:
        """conv1-shaped features -> multi-scale disparities."""
        apply_cpu_convolution_backend()  # before any backward through this graph: see dko.runtime
        return self.decoder(self.encoder.forward_from_conv1(y))

    def forward(self, images: torch.Tensor) -> dict[tuple, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DepthNet expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.forward_from_conv1(self.conv1_features(images))

    def depth_from_disp(self, disp: torch.Tensor) -> torch.Tensor:
        return disp_to_depth(disp, self.min_depth_m, self.max_depth_m)[1]

    @torch.no_grad()
    def predict_depth(self, images: torch.Tensor) -> torch.Tensor:
        """Depth (B, 1, H, W) in metres from raw images (B, 3, H, W) in [0, 1] (scale 0, resized to the input)."""
        disp = self.forward(images)[("disp", 0)]
        if disp.shape[-2:] != images.shape[-2:]:
            disp = F.interpolate(disp, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.depth_from_disp(disp)


def build_from_arch(arch: dict) -> DepthNet:
    """Rebuild a :class:`DepthNet` from its ``arch`` dict (as saved in ``model.pt``)."""
    return DepthNet(**arch)
