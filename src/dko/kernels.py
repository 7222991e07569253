"""Kernel extraction: stage-1 DepthNet checkpoint -> conv1 kernel bank file (DESIGN.md section 3).

The bank is :class:`dko.opto_layer.KernelBank` (normalisation folded, kernels split into
non-negative parts, targets rotated 180 deg). On disk it is a ``.pt`` file holding
``{"format": BANK_FORMAT, "bank": KernelBank.state_dict() on CPU, "info": {...}}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from dko.io import atomic_path
from dko.opto_layer import KernelBank, build_kernel_bank

__all__ = ["BANK_FORMAT", "extract_kernel_bank", "save_kernel_bank", "load_kernel_bank", "plot_kernel_bank",
           "shards"]

log = logging.getLogger(__name__)
BANK_FORMAT = "dko.kernelbank/1"


def extract_kernel_bank(model, wavelengths_m: Sequence[float], *, eps: float = 0.0) -> KernelBank:
    """Kernel bank of a :class:`dko.depth.model.DepthNet`'s conv1 (float32, CPU).

    Args:
        model: DepthNet (``model.conv1`` (nn.Conv2d), ``norm_mean``, ``norm_std``).
        wavelengths_m: one wavelength per input channel, metres.
        eps: parts with gain <= eps are dropped.
    """
    conv = model.conv1
    weight = conv.weight.detach().to("cpu", torch.float32)
    bias = None if conv.bias is None else conv.bias.detach().to("cpu", torch.float32)
    return build_kernel_bank(weight, model.norm_mean, model.norm_std, list(wavelengths_m), bias=bias,
                             stride=int(conv.stride[0]), padding=int(conv.padding[0]), eps=eps)


def save_kernel_bank(bank: KernelBank, path: str | Path, **info) -> Path:
    """Write ``bank`` (moved to CPU) atomically to ``path`` (.pt); ``info``: JSON-like extras."""
    path = Path(path)
    state = {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
             for k, v in bank.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": BANK_FORMAT, "bank": state, "info": dict(info)}, tmp)
    return path


def load_kernel_bank(path: str | Path, device: str | torch.device = "cpu") -> tuple[KernelBank, dict]:
    """Read a file written by :func:`save_kernel_bank`; returns ``(bank on device, info)``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"kernel bank file '{path}' does not exist (run extract_kernels)")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != BANK_FORMAT:
        raise ValueError(f"kernel bank file '{path}' is not a {BANK_FORMAT} file")
    return KernelBank(**payload["bank"]).to(device), dict(payload.get("info", {}))


def shards(bank: KernelBank, shard_size: int) -> list[torch.Tensor]:
    """Element indices grouped by blocks of ``shard_size`` output channels (ascending, disjoint, covering).

    Returns a list of long tensors; shard s holds the elements whose output channel is in
    ``[s * shard_size, (s + 1) * shard_size)``; empty shards are kept so the count is
    ``ceil(n_out / shard_size)`` (it depends only on the network width).
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"dko.shard_size must be a positive integer, got {shard_size!r}")
    n = -(-bank.n_out // shard_size)
    idx = torch.arange(bank.n_elements)
    return [idx[(bank.out_channel.cpu() // shard_size) == s] for s in range(n)]


def plot_kernel_bank(bank: KernelBank, path: str | Path) -> Path:
    """Figure: signed folded kernels (rows = output channels, cols = input channels) and their +/- parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = bank.folded_weight().detach().cpu().float()
    k_out, c_in = w.shape[:2]
    fig, axes = plt.subplots(k_out, 3 * c_in, figsize=(1.1 * 3 * c_in, 1.1 * k_out + 0.6), squeeze=False)
    vmax = float(w.abs().max()) or 1.0
    for k in range(k_out):
        for c in range(c_in):
            kern = w[k, c]
            panels = (kern, kern.clamp(min=0), (-kern).clamp(min=0))
            cmaps = ("RdBu_r", "Reds", "Blues")
            for j, (img, cm) in enumerate(zip(panels, cmaps)):
                ax = axes[k, 3 * c + j]
                ax.imshow(img.numpy(), cmap=cm, vmin=-vmax if j == 0 else 0, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(f"c{c} {('W', 'W+', 'W-')[j]}", fontsize=7)
    fig.suptitle(f"conv1 folded kernels ({bank.n_elements} optical elements)", fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
