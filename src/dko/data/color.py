"""sRGB transfer function (IEC 61966-2-1): decoding stored 8-bit sRGB codes to linear light and back.

Camera images (KITTI, NYUv2) store sRGB-encoded codes; DKO's optics convolves linear irradiance, so the
network that the optics realises is trained and evaluated on linear light. Decoding of a code ``c`` in
0..255, with ``v = c / 255``::

    linear = v / 12.92                      if v <= 0.04045
    linear = ((v + 0.055) / 1.055) ** 2.4   otherwise

:data:`SRGB_TO_LINEAR_LUT` holds this for all 256 codes (computed in float64, stored float32).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SRGB_TO_LINEAR_LUT", "srgb_to_linear", "linear_to_srgb"]

_KNEE_ENCODED = 0.04045            # encoded value where the linear segment ends
_KNEE_LINEAR = _KNEE_ENCODED / 12.92  # the same point in linear light (0.0031308...)


def _decode(v: np.ndarray) -> np.ndarray:
    """Exact sRGB decoding of encoded values ``v`` in [0, 1] (float64 in, float64 out)."""
    return np.where(v <= _KNEE_ENCODED, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


SRGB_TO_LINEAR_LUT: np.ndarray = _decode(np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
"""float32 (256,): linear light in [0, 1] of each 8-bit sRGB code (index = code)."""
SRGB_TO_LINEAR_LUT.setflags(write=False)


def srgb_to_linear(codes: np.ndarray) -> np.ndarray:
    """Decode 8-bit sRGB codes to linear light.

    Args:
        codes: uint8 array, any shape, sRGB codes 0..255.
    Returns:
        float32 array of the same shape, linear light in [0, 1] (0 -> 0, 255 -> 1).
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise ValueError(f"srgb_to_linear expects uint8 codes, got dtype {codes.dtype}")
    return SRGB_TO_LINEAR_LUT[codes]


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Encode linear light to sRGB (the inverse of the decoding; for tests and plots).

    Args:
        linear: float array, any shape, linear light in [0, 1] (values outside are clipped).
    Returns:
        float64 array of the same shape, encoded values in [0, 1] (multiply by 255 for codes).
    """
    x = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= _KNEE_LINEAR, x * 12.92, 1.055 * x ** (1.0 / 2.4) - 0.055)
