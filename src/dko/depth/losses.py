"""Supervised depth loss: scale-invariant log error (Eigen et al. 2014) over all output scales."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def scale_invariant_log_loss(pred_m: torch.Tensor, gt_m: torch.Tensor, valid: torch.Tensor,
                             si_lambda: float = 0.85) -> torch.Tensor:
    """Mean over images of ``mean(d^2) - si_lambda * mean(d)^2``, d = ln(pred) - ln(gt) on valid pixels.

    Args:
        pred_m: (B, 1, H, W) predicted depth in metres (> 0).
        gt_m: (B, 1, H, W) ground-truth depth in metres.
        valid: (B, 1, H, W) bool mask of pixels that count.
        si_lambda: 1 = invariant to a global scale of each prediction; 0 = plain squared log error.
    Returns:
        Scalar tensor; images without valid pixels contribute 0. Zero for a perfect prediction.
    """
    if pred_m.shape != gt_m.shape or valid.shape != gt_m.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred_m.shape)}, gt {tuple(gt_m.shape)}, mask {tuple(valid.shape)}")
    if not 0.0 <= si_lambda <= 1.0:
        raise ValueError(f"train.si_lambda must be within [0, 1] (got {si_lambda})")
    mask = valid.to(pred_m.dtype)
    safe_gt = torch.where(valid, gt_m, torch.ones_like(gt_m))
    d = (torch.log(pred_m) - torch.log(safe_gt)) * mask
    dims = tuple(range(1, pred_m.ndim))
    n = mask.sum(dim=dims)
    has = n > 0
    n = n.clamp(min=1.0)
    mean_d = d.sum(dim=dims) / n
    mean_d2 = (d * d).sum(dim=dims) / n
    per_image = (mean_d2 - si_lambda * mean_d * mean_d) * has.to(pred_m.dtype)
    return per_image.sum() / has.sum().clamp(min=1)


def multiscale_depth_loss(disps: dict, gt_m: torch.Tensor, valid: torch.Tensor,
                          disp_to_depth: Callable[[torch.Tensor], torch.Tensor], si_lambda: float = 0.85
                          ) -> torch.Tensor:
    """Average of :func:`scale_invariant_log_loss` over the decoder's scales, each disparity bilinearly
    upsampled to full resolution before conversion to depth (Monodepth2 practice).

    Args:
        disps: ``{("disp", s): (B, 1, h_s, w_s)}`` sigmoid outputs.
        gt_m, valid: (B, 1, H, W) ground truth in metres and its validity mask.
        disp_to_depth: maps a sigmoid disparity to depth in metres.
    """
    keys = sorted(k for k in disps if k[0] == "disp")
    if not keys:
        raise ValueError("no disparity outputs to supervise")
    total = gt_m.new_zeros(())
    for key in keys:
        disp = disps[key]
        if disp.shape[-2:] != gt_m.shape[-2:]:
            disp = F.interpolate(disp, size=gt_m.shape[-2:], mode="bilinear", align_corners=False)
        total = total + scale_invariant_log_loss(disp_to_depth(disp), gt_m, valid, si_lambda)
    return total / len(keys)


def kernel_roughness(weight: torch.Tensor) -> torch.Tensor:
    """Relative roughness of conv kernels: mean over kernels of ``sum(dW/dx^2 + dW/dy^2) / sum(W^2)``.

    Finite differences between neighbouring taps of each (out, in) kernel, normalised by the kernel's
    energy, so the value does not depend on the weights' scale: about 4 for white-noise kernels, 0 for
    constant ones, ~0.3 for a kernel smoothed by a Gaussian of sigma 1 tap.

    Args:
        weight: float (K, C, k, k) convolution weights.
    Returns:
        scalar tensor (differentiable in ``weight``).
    """
    if weight.ndim != 4 or weight.shape[-1] < 2 or weight.shape[-2] < 2:
        raise ValueError(f"kernel_roughness needs (K, C, k, k) weights with k >= 2, got {tuple(weight.shape)}")
    dx = (weight[..., :, 1:] - weight[..., :, :-1]).square().sum(dim=(-2, -1))
    dy = (weight[..., 1:, :] - weight[..., :-1, :]).square().sum(dim=(-2, -1))
    energy = weight.square().sum(dim=(-2, -1)).clamp_min(torch.finfo(weight.dtype).tiny)
    return ((dx + dy) / energy).mean()
