"""ResNet encoder with basic blocks (no torchvision), parameter names as in Monodepth2's ``encoder.pth``.

``ResnetEncoder.encoder`` holds the torchvision-style ResNet trunk, so ``ResnetEncoder.state_dict()``
has keys ``encoder.conv1.weight``, ``encoder.bn1.*``, ``encoder.layer1.0.conv1.weight``,
``encoder.layer2.0.downsample.0.weight``, ... exactly as Monodepth2 saves them (Monodepth2's file also
carries ``encoder.fc.*`` of the unused ImageNet classifier and ``height`` / ``width`` / ``use_stereo``;
see :mod:`dko.depth.checkpoint`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN and a residual connection (1x1 conv + BN shortcut when the shape changes)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk: conv1 (k x k, stride 2, padding k//2, no bias), BN, ReLU, 3x3/2 max-pool, 4 stages.

    Args:
        blocks_per_stage: basic blocks per stage ((2, 2, 2, 2) = ResNet-18).
        base_width: channels of conv1 and stage 1; stage s has ``base_width * 2**(s-1)`` channels.
        conv1_kernel: odd kernel size k of conv1.
        in_channels: input channels (3 for RGB).
    """

    def __init__(self, blocks_per_stage: Sequence[int] = (2, 2, 2, 2), base_width: int = 64, conv1_kernel: int = 7,
                 in_channels: int = 3):
        super().__init__()
        if len(blocks_per_stage) != 4 or any(int(b) < 1 for b in blocks_per_stage):
            raise ValueError(f"network.blocks_per_stage must be 4 positive integers (got {list(blocks_per_stage)})")
        if conv1_kernel < 1 or conv1_kernel % 2 == 0:
            raise ValueError(f"network.conv1_kernel must be odd and positive (got {conv1_kernel})")
        if base_width < 1:
            raise ValueError(f"network.base_width must be positive (got {base_width})")
        self.conv1 = nn.Conv2d(in_channels, base_width, conv1_kernel, stride=2, padding=conv1_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = [base_width * 2**s for s in range(4)]
        in_ch = base_width
        for s, (width, n_blocks) in enumerate(zip(widths, blocks_per_stage)):
            stride = 1 if s == 0 else 2
            blocks = [BasicBlock(in_ch, width, stride)] + [BasicBlock(width, width) for _ in range(int(n_blocks) - 1)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            in_ch = width
        self.widths = widths
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class ResnetEncoder(nn.Module):
    """Monodepth2's encoder: returns 5 feature maps at strides 2, 4, 8, 16, 32.

    ``forward`` takes an already normalised image; :class:`dko.depth.model.DepthNet` owns the input
    normalisation so that the optical front end can replace normalisation + conv1 together.
    ``num_ch_enc``: channels of the 5 features ``[w, w, 2w, 4w, 8w]``.
    """

    def __init__(self, blocks_per_stage: Sequence[int] = (2, 2, 2, 2), base_width: int = 64, conv1_kernel: int = 7):
        super().__init__()
        self.encoder = ResNet(blocks_per_stage, base_width, conv1_kernel)
        self.num_ch_enc = [base_width] + list(self.encoder.widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, H, W) normalised image -> features."""
        return self.forward_from_conv1(self.encoder.conv1(x))

    def forward_from_conv1(self, y: torch.Tensor) -> list[torch.Tensor]:
        """y: (B, w, ceil(H/2), ceil(W/2)) output of conv1 (or of an optical layer realising it) -> 5 features."""
        e = self.encoder
        f0 = e.relu(e.bn1(y))
        f1 = e.layer1(e.maxpool(f0))
        f2 = e.layer2(f1)
        f3 = e.layer3(f2)
        f4 = e.layer4(f3)
        return [f0, f1, f2, f3, f4]
