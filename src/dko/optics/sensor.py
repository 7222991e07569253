"""Sensor noise: Poisson shot noise, Gaussian read noise, quantisation (DESIGN.md section 3).

Signal convention: a sensor image ``signal`` is in units of the raw input intensity (0..1) times the
PSF, so a uniform white scene seen through a lossless element gives 1. Signal 1 corresponds to
``exposure * full_well_e`` photo-electrons. The measurement, returned in the same units, is

    electrons = Poisson(exposure * full_well_e * signal) + Normal(0, read_noise_e^2)
    code      = round(clip(electrons / full_well_e, 0, 1) * (2^bit_depth - 1))
    measured  = code / (2^bit_depth - 1) / exposure

Differentiable form (``differentiable=True``, for training): the Poisson draw is replaced by its
Gaussian approximation ``n + sqrt(n) * N(0, 1)`` (reparameterised, so gradients flow through the
mean), clipping by a clamp, and rounding by a straight-through estimator (forward: rounded,
backward: identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["SensorModel", "apply_sensor_noise", "straight_through_round"]


@dataclass(frozen=True)
class SensorModel:
    """Sensor parameters (see the module docstring).

    Attributes:
        full_well_e: full-well capacity, electrons.
        read_noise_e: read-noise standard deviation, electrons.
        bit_depth: ADC bits.
        exposure: fraction of the full well reached by signal 1.
    """

    full_well_e: float = 10000.0
    read_noise_e: float = 2.0
    bit_depth: int = 10
    exposure: float = 1.0

    def __post_init__(self):
        if not (self.full_well_e > 0 and math.isfinite(self.full_well_e)):
            raise ValueError(f"sensor.full_well_e must be positive, got {self.full_well_e!r}")
        if not (self.read_noise_e >= 0 and math.isfinite(self.read_noise_e)):
            raise ValueError(f"sensor.read_noise_e must be >= 0, got {self.read_noise_e!r}")
        if not isinstance(self.bit_depth, int) or not 1 <= self.bit_depth <= 24:
            raise ValueError(f"sensor.bit_depth must be an integer in 1..24, got {self.bit_depth!r}")
        if not 0 < self.exposure <= 1:
            raise ValueError(f"sensor.exposure must be in (0, 1], got {self.exposure!r}")

    @classmethod
    def from_config(cls, sensor: Any) -> "SensorModel":
        """From a :class:`dko.config.SensorConfig` (or any object with the same attributes)."""
        return cls(full_well_e=float(sensor.full_well_e), read_noise_e=float(sensor.read_noise_e),
                   bit_depth=int(sensor.bit_depth), exposure=float(sensor.exposure))

    @property
    def levels(self) -> int:
        """Largest ADC code, 2^bit_depth - 1."""
        return 2**self.bit_depth - 1

    def __call__(self, signal: torch.Tensor, generator: torch.Generator | None = None, *,
                 differentiable: bool = False) -> torch.Tensor:
        return apply_sensor_noise(signal, self, generator, differentiable=differentiable)


def straight_through_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def apply_sensor_noise(signal: torch.Tensor, sensor: SensorModel, generator: torch.Generator | None = None, *,
                       differentiable: bool = False) -> torch.Tensor:
    """Simulate one noisy, quantised measurement of ``signal``.

    Args:
        signal: real tensor (any shape), noise-free sensor image in input-intensity units (>= 0).
        sensor: noise parameters.
        generator: torch.Generator on ``signal``'s device for reproducible draws (None = global RNG).
        differentiable: Gaussian approximation + straight-through quantisation (gradients flow to
            ``signal``); otherwise exact Poisson sampling (no gradient).
    Returns:
        Tensor like ``signal``: the measurement in the same units.
    """
    if not isinstance(signal, torch.Tensor) or signal.is_complex():
        raise TypeError("signal must be a real torch.Tensor")
    scale = sensor.exposure * sensor.full_well_e  # electrons per unit signal
    mean_e = torch.clamp(signal, min=0.0) * scale
    if differentiable:
        noise = torch.randn(signal.shape, generator=generator, device=signal.device, dtype=signal.dtype)
        electrons = mean_e + torch.sqrt(mean_e + 1e-12) * noise
    else:
        with torch.no_grad():
            electrons = torch.poisson(mean_e.detach(), generator=generator)
    if sensor.read_noise_e > 0:
        read = torch.randn(signal.shape, generator=generator, device=signal.device, dtype=signal.dtype)
        electrons = electrons + sensor.read_noise_e * read
    fraction = torch.clamp(electrons / sensor.full_well_e, 0.0, 1.0)
    scaled = fraction * sensor.levels
    code = straight_through_round(scaled) if differentiable else torch.round(scaled)
    return code / sensor.levels / sensor.exposure
