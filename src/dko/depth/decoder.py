"""Monodepth2's multi-scale disparity decoder, parameter names as in its ``depth.pth``.

Layers are created in the order ("upconv", 4, 0), ("upconv", 4, 1), ("upconv", 3, 0), ...,
("upconv", 0, 1), then ("dispconv", 0..3), and stored in ``self.decoder`` (a ModuleList), so the
state_dict keys are ``decoder.0.conv.conv.weight`` ... ``decoder.9.conv.conv.bias`` (ConvBlock =
reflection-padded 3x3 conv + ELU) and ``decoder.10.conv.weight`` ... ``decoder.13.conv.bias``
(dispconv = reflection-padded 3x3 conv), exactly as Monodepth2's DepthDecoder.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MONODEPTH2_DECODER_CHANNELS = (16, 32, 64, 128, 256)


class Conv3x3(nn.Module):
    """Reflection pad by 1 (replicate for maps 1 pixel high or wide), then a 3x3 convolution with bias
    (keys ``conv.weight`` / ``conv.bias``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(int(in_channels), int(out_channels), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 2:  # reflection needs 2 pixels (tiny inputs: stride-32 maps of 1 pixel)
            return self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    """Conv3x3 followed by ELU (keys ``conv.conv.weight`` / ``conv.conv.bias``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.nonlin = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv(x))


class DepthDecoder(nn.Module):
    """Upconvolutions with skip connections; sigmoid disparity at scales 0..3 (1, 1/2, 1/4, 1/8 of the input).

    Args:
        num_ch_enc: channels of the 5 encoder features.
        num_ch_dec: channels of the 5 decoder levels (Monodepth2: 16, 32, 64, 128, 256).
        scales: output scales.
    ``forward(features)`` returns ``{("disp", s): (B, 1, H / 2**s, W / 2**s) in (0, 1)}`` for an input of
    H x W divisible by 32 (otherwise skip features set the sizes and scale 0 is 2x the conv1 output).
    """

    def __init__(self, num_ch_enc: Sequence[int], num_ch_dec: Sequence[int] = MONODEPTH2_DECODER_CHANNELS,
                 scales: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if len(num_ch_enc) != 5 or len(num_ch_dec) != 5:
            raise ValueError(f"decoder needs 5 encoder and 5 decoder channel counts (got {num_ch_enc}, {num_ch_dec})")
        if any(s not in range(4) for s in scales):
            raise ValueError(f"decoder scales must be within 0..3 (got {list(scales)})")
        self.num_ch_enc = [int(c) for c in num_ch_enc]
        self.num_ch_dec = [int(c) for c in num_ch_dec]
        self.scales = tuple(int(s) for s in scales)
        self.index: dict[tuple, int] = {}
        layers: list[nn.Module] = []
        for i in range(4, -1, -1):
            c_in = self.num_ch_enc[-1] if i == 4 else self.num_ch_dec[i + 1]
            self.index[("upconv", i, 0)] = len(layers)
            layers.append(ConvBlock(c_in, self.num_ch_dec[i]))
            c_in = self.num_ch_dec[i] + (self.num_ch_enc[i - 1] if i > 0 else 0)
            self.index[("upconv", i, 1)] = len(layers)
            layers.append(ConvBlock(c_in, self.num_ch_dec[i]))
        for s in self.scales:
            self.index[("dispconv", s)] = len(layers)
            layers.append(Conv3x3(self.num_ch_dec[s], 1))
        self.decoder = nn.ModuleList(layers)

    def layer(self, key: tuple) -> nn.Module:
        return self.decoder[self.index[key]]

    def forward(self, features: Sequence[torch.Tensor]) -> dict[tuple, torch.Tensor]:
        outputs = {}
        x = features[-1]
        for i in range(4, -1, -1):
            x = self.layer(("upconv", i, 0))(x)
            if i > 0:
                skip = features[i - 1]
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
                x = torch.cat([x, skip], 1)
            else:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.layer(("upconv", i, 1))(x)
            if i in self.scales:
                outputs[("disp", i)] = torch.sigmoid(self.layer(("dispconv", i))(x))
        return outputs
