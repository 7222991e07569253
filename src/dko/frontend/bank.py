"""The kernel bank: a trained conv1 as optical elements, and its file (DESIGN.md section 3).

Kernels -> optics (:func:`build_kernel_bank`)
---------------------------------------------
conv1 computes ``y_k = sum_c W[k, c] * ((x_c - mu_c) / sigma_c) + b_k`` (``*`` = conv2d, a
correlation) on the normalised input. Optics sees the raw intensity ``x``, so the normalisation is
folded: ``W'[k, c] = W[k, c] / sigma_c`` and ``b'_k = b_k - sum_c mu_c sum(W'[k, c])``. The electronic
layer zero-pads the *normalised* input, i.e. pads the raw input with ``mu_c``; the optical layer
pads the raw input with ``mu_c`` too (:attr:`KernelBank.pad_value`), which makes the two identical
at the borders as well. Each kernel is split ``W' = W+ - W-`` (``W+- = max(+-W', 0)``); every
non-zero part becomes one optical element with target PSF ``rot180(W+- / sum(W+-))`` (optics
convolves, conv2d correlates) and electronic gain ``g = sum(W+-)``. Element e reads input channel
``in_channel[e]`` at ``wavelength_m[e] = wavelengths_m[in_channel[e]]``.

A bank with other values (calibrated gains, a trained bias, other targets) is :meth:`KernelBank.replace`,
a bank of some of the elements :meth:`KernelBank.subset`: no code rebuilds a bank field by field.

The file (:func:`save_kernel_bank` / :func:`load_kernel_bank`) is a ``.pt`` holding
``{"format": BANK_FORMAT, "bank": KernelBank.state_dict() on CPU, "info": {...}}``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch

from dko.io import atomic_path, check_format

__all__ = ["BANK_FORMAT", "KernelBank", "build_kernel_bank", "extract_kernel_bank", "save_kernel_bank",
           "load_kernel_bank", "plot_kernel_bank", "shards"]

log = logging.getLogger(__name__)
BANK_FORMAT = "dko.kernelbank/1"
_PER_ELEMENT = ("targets", "gains", "sign", "out_channel", "in_channel", "wavelength_m")
_KEEP_DTYPE = ("out_channel", "in_channel", "wavelength_m")


@dataclass(frozen=True)
class KernelBank:
    """The optical elements realising one conv1 (tensors on one device; E elements, K outputs, C inputs).

    Attributes:
        targets: float (E, k, k) target PSFs (non-negative, each summing to 1, already rotated 180 deg).
        gains: float (E,) electronic gains g = sum(W+-).
        sign: float (E,) +1 / -1.
        out_channel: long (E,) output channel k of each element.
        in_channel: long (E,) input channel c of each element.
        wavelength_m: float64 (E,) wavelength of each element, metres.
        bias: float (K,) folded bias b'.
        pad_value: float (C,) raw-input value used for padding (= the normalisation mean mu_c).
        stride: conv stride (int).
        padding: conv padding (int).
        n_out: K.
        n_in: C.
    """

    targets: torch.Tensor
    gains: torch.Tensor
    sign: torch.Tensor
    out_channel: torch.Tensor
    in_channel: torch.Tensor
    wavelength_m: torch.Tensor
    bias: torch.Tensor
    pad_value: torch.Tensor
    stride: int
    padding: int
    n_out: int
    n_in: int

    @property
    def n_elements(self) -> int:
        return int(self.targets.shape[0])

    @property
    def kernel_size(self) -> int:
        return int(self.targets.shape[-1])

    def folded_weight(self) -> torch.Tensor:
        """The folded conv weight W' (K, C, k, k) reconstructed from the elements."""
        k = self.kernel_size
        w = torch.zeros(self.n_out, self.n_in, k, k, dtype=self.targets.dtype, device=self.targets.device)
        parts = torch.flip(self.targets, dims=(-2, -1)) * (self.sign * self.gains)[:, None, None]
        w.index_put_((self.out_channel, self.in_channel), parts, accumulate=True)
        return w

    def replace(self, **changes) -> "KernelBank":
        """This bank with the fields ``changes`` replaced (the tensors are used as given, not copied).

        E.g. ``bank.replace(gains=calibrated)`` or ``bank.replace(gains=g, bias=b)``. Raises TypeError for an
        unknown field and ValueError when the result is inconsistent (a per-element field whose length is not
        the number of elements, a bias that is not (n_out,), a pad value that is not (n_in,)).
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"KernelBank has no field(s) {unknown}")
        out = dataclasses.replace(self, **changes)
        out._check_shapes()
        return out

    def subset(self, index: torch.Tensor | Sequence[int]) -> "KernelBank":
        """The elements ``index`` (long (E_s,) or ints, in that order) of this bank: same conv geometry, bias
        and channel counts."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.targets.device).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_elements):
            raise ValueError(f"element index out of range for a bank of {self.n_elements} elements")
        return self.replace(**{name: getattr(self, name)[idx] for name in _PER_ELEMENT})

    def _check_shapes(self) -> None:
        e = self.n_elements
        for name in _PER_ELEMENT[1:]:
            if tuple(getattr(self, name).shape) != (e,):
                raise ValueError(f"KernelBank.{name} must have shape ({e},) (one value per element), "
                                 f"got {tuple(getattr(self, name).shape)}")
        for name, n in (("bias", self.n_out), ("pad_value", self.n_in)):
            if tuple(getattr(self, name).shape) != (n,):
                raise ValueError(f"KernelBank.{name} must have shape ({n},), got {tuple(getattr(self, name).shape)}")

    def to(self, device=None, dtype=None) -> "KernelBank":
        """Copy on another device / float dtype (integer fields keep their dtype; wavelengths stay float64)."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                keep = v.dtype in (torch.long, torch.float64) and f.name in _KEEP_DTYPE
                v = v.to(device=device) if keep or dtype is None else v.to(device=device, dtype=dtype)
                values[f.name] = v
        return dataclasses.replace(self, **values)

    def state_dict(self) -> dict:
        """Plain dict (tensors + ints) for ``torch.save`` / npz; inverse: ``KernelBank(**d)``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _per_channel(value, n: int, name: str, dtype, device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"{name} must be a scalar or have one value per input channel ({n}), got {t.numel()}")
    return t


def build_kernel_bank(weight: torch.Tensor, norm_mean, norm_std, wavelengths_m: Sequence[float], *,
                      bias: torch.Tensor | None = None, stride: int = 2, padding: int | None = None,
                      eps: float = 0.0) -> KernelBank:
    """Turn a conv1 weight into optical elements (see the module docstring).

    Args:
        weight: float (K, C, k, k) conv1 weight (k odd).
        norm_mean, norm_std: input normalisation, scalar or (C,) (the network computes (x - mean) / std).
        wavelengths_m: C wavelengths, metres (input channel c -> wavelengths_m[c]).
        bias: optional (K,) conv bias (ResNet conv1 has none).
        stride, padding: of the conv (padding defaults to k // 2).
        eps: parts whose gain is <= eps are dropped (0 keeps every non-zero part).
    Returns:
        A :class:`KernelBank` on ``weight``'s device and float dtype, elements ordered by
        (out_channel, in_channel, sign +, -).
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError(f"weight must be a (K, C, k, k) tensor, got {getattr(weight, 'shape', type(weight))}")
    n_out, n_in, kh, kw = weight.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"conv1 kernel must be square with odd size, got {kh}x{kw}")
    if len(wavelengths_m) != n_in:
        raise ValueError(f"optics.wavelengths_m has {len(wavelengths_m)} entries but conv1 has {n_in} input channels")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    padding = kh // 2 if padding is None else int(padding)
    w = weight.detach()
    dtype, device = w.dtype, w.device
    mean = _per_channel(norm_mean, n_in, "norm_mean", dtype, device)
    std = _per_channel(norm_std, n_in, "norm_std", dtype, device)
    if torch.any(std <= 0):
        raise ValueError(f"norm_std must be positive, got {std.tolist()}")
    folded = w / std[None, :, None, None]
    b = torch.zeros(n_out, dtype=dtype, device=device) if bias is None else bias.detach().to(dtype).reshape(n_out).clone()
    b = b - (folded.sum(dim=(-2, -1)) * mean[None, :]).sum(dim=1)
    targets, gains, signs, outs, ins, wls = [], [], [], [], [], []
    for k in range(n_out):
        for c in range(n_in):
            for s in (1.0, -1.0):
                part = torch.clamp(s * folded[k, c], min=0.0)
                g = part.sum()
                if float(g) <= eps or float(g) == 0.0:
                    continue
                targets.append(torch.flip(part / g, dims=(-2, -1)))
                gains.append(g)
                signs.append(s)
                outs.append(k)
                ins.append(c)
                wls.append(float(wavelengths_m[c]))
    if not targets:
        raise ValueError("conv1 weight is all zero: no optical element to build")
    return KernelBank(
        targets=torch.stack(targets), gains=torch.stack(gains),
        sign=torch.tensor(signs, dtype=dtype, device=device),
        out_channel=torch.tensor(outs, dtype=torch.long, device=device),
        in_channel=torch.tensor(ins, dtype=torch.long, device=device),
        wavelength_m=torch.tensor(wls, dtype=torch.float64, device=device),
        bias=b, pad_value=mean.clone(), stride=stride, padding=padding, n_out=n_out, n_in=n_in)


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
    check_format(payload, BANK_FORMAT, path, "kernel bank file")
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
