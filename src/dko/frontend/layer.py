"""The opto-electronic conv1: a trained first convolution realised by metasurface PSFs (DESIGN.md section 3).

The elements are a :class:`dko.frontend.bank.KernelBank` (the folded, split kernels and their gains).

Forward (:class:`OptoConv1`)
----------------------------
For every element, the sensor image ``S_e = x_{c(e)} (*) PSF_e`` (true convolution with the PSF
cropped to a ``w x w`` window, ``w`` odd, centred on the optical axis), optionally a noisy
measurement of ``S_e`` (:mod:`dko.optics.sensor`), then ``y_k = sum_{e: k(e)=k} sign_e g_e S_e + b'_k``
sampled with the layer's stride (output pixel ``i`` centred on input pixel ``stride*i - padding +
k//2``, as conv2d). With ``PSF_e`` equal to the targets and no noise this is the electronic conv1.

Depth-layered image formation (``forward(x, depth_m=...)``, PSFs for several object distances)
-------------------------------------------------------------------------------------------------
Each pixel is assigned to the nearest configured object distance in inverse distance (dioptres;
``None`` / infinity = 0), the raw image is split into the per-distance layers ``x * mask_d`` and
``S_e = sum_d (x * mask_d) (*) PSF_{d, e}``. Approximation: layers are summed independently - no
occlusion (light from a far layer blocked by a near object still reaches the sensor; defocused
near objects do not spread over the far ones correctly at depth edges), no partial visibility of
the aperture, and depth is quantised to the configured distances. The padded border takes the
depth of the nearest image pixel.

Spatially varying image formation (``psfs`` of shape (D, Fy, Fx, E, w, w))
-------------------------------------------------------------------------
A thin element has one PSF only within its isoplanatic patch. With PSFs on a regular ``Fy x Fx`` grid of field
positions (node ``(i, j)`` at input row ``i (H - 1) / (Fy - 1)`` and column ``j (W - 1) / (Fx - 1)``: the corners
of the grid are the image's corner pixels; one node = the whole image), every source pixel is imaged with the
PSF interpolated bilinearly between the nodes around it: the raw image is split into ``Fy Fx`` overlapping
patches ``x * h_ij`` with bilinear hat weights ``h_ij`` (a partition of unity; the padded border takes the weight
of the nearest image pixel) and ``S_e = sum_ij (x * h_ij) (*) PSF_{ij, e}`` (overlap-add of per-patch
convolutions, as lens-design tools render PSF maps). With all nodes' PSFs equal this is exactly the
shift-invariant layer (linearity, ``sum_ij h_ij = 1``). Relative illumination and vignetting are part of each
node's PSF (its sum). Cost: each node convolves only the crop of the image its hat weight covers (the cells next
to it, plus the PSF window): about 4 whole-image convolutions (2 per grid axis with more than one node) for any grid
instead of ``Fy Fx``.

Flat-field (lens-shading) correction (``flat_field=True``)
----------------------------------------------------------
As a camera's image processor does after a flat-field calibration, the electronics divide each element's sensor
image by its response to a uniform scene, normalised to the centre of the field: ``S_e(x) <- S_e(x) / r_e(x)`` with
``r_e(x) = U_e(x) / sum(PSF_{centre, e})``, ``U_e`` the noise-free sensor image of a unit uniform scene that fills
the whole field (the padded border too; object distance 0). It is applied after the sensor noise (it amplifies the
noise where the light is weak). Noise-free, the corrected image is then a convex combination of scene values at every
pixel (all PSFs are non-negative), a uniform scene is imaged as the centre's response everywhere, and where the
field's light is weak the correction amplifies exactly what reaches the sensor (the tails of brighter nodes'
PSFs included), not an interpolation of it. ``flat_field_max_gain`` caps the factor ``1 / r_e`` (as a camera's
processor limits its lens-shading gain: where the field is darker than ``1 / max_gain`` of the centre it stays
darker, and its noise is amplified at most ``max_gain`` times); None = no cap. Without a field grid it does nothing.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import dko.runtime  # noqa: F401 - CPU convolutions without oneDNN (see dko.runtime)
from dko.frontend.bank import KernelBank
from dko.optics.sensor import SensorModel, apply_sensor_noise

__all__ = ["ideal_psfs", "OptoConv1", "nearest_distance_index", "field_weights", "centre_node"]


def ideal_psfs(bank: KernelBank, window: int | None = None) -> torch.Tensor:
    """The targets zero-padded (centred) to ``window x window`` (odd, >= k): perfect PSFs (E, w, w)."""
    k = bank.kernel_size
    window = k if window is None else int(window)
    if window < k or (window - k) % 2:
        raise ValueError(f"window must be >= kernel size {k} and differ from it by an even number, got {window}")
    p = (window - k) // 2
    return F.pad(bank.targets, (p, p, p, p))


def nearest_distance_index(depth_m: torch.Tensor, object_distances_m: Sequence[float | None]) -> torch.Tensor:
    """Index (long, like ``depth_m``) of the nearest object distance in inverse distance (None/inf = 0)."""
    inv = torch.tensor([0.0 if (z is None or math.isinf(z)) else 1.0 / z for z in object_distances_m],
                       dtype=torch.float64, device=depth_m.device)
    inv_depth = 1.0 / torch.clamp(depth_m.to(torch.float64), min=1e-6)
    return torch.argmin(torch.abs(inv_depth[..., None] - inv), dim=-1)


def centre_node(psfs):
    """(D, E, w, w) the centre node of field-grid PSFs (D, Fy, Fx, E, w, w) (the mean of the middle nodes for an even
    grid size); a torch tensor or a numpy array."""
    fy, fx = psfs.shape[1], psfs.shape[2]
    middle = psfs[:, (fy - 1) // 2:fy // 2 + 1, (fx - 1) // 2:fx // 2 + 1]
    return middle.mean(dim=(1, 2)) if isinstance(middle, torch.Tensor) else middle.mean(axis=(1, 2))


def _hat_weights(n_nodes: int, positions: torch.Tensor) -> torch.Tensor:
    """(n_nodes, P) bilinear hat weights of ``positions`` (float, in node units 0 .. n_nodes - 1, clamped)."""
    if n_nodes == 1:
        return torch.ones(1, positions.numel(), dtype=positions.dtype, device=positions.device)
    u = positions.clamp(0, n_nodes - 1)
    nodes = torch.arange(n_nodes, dtype=positions.dtype, device=positions.device)
    return torch.clamp(1 - torch.abs(u[None, :] - nodes[:, None]), min=0)


def field_weights(grid: tuple[int, int], size: tuple[int, int], pads: tuple[int, int, int, int],
                  dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Overlap-add weights of a ``grid = (Fy, Fx)`` field grid over an image of ``size = (H, W)`` padded by
    ``pads = (left, right, top, bottom)``: (Fy, Fx, H + top + bottom, W + left + right), summing to 1 at every
    pixel; node (i, j) sits at image row ``i (H - 1) / (Fy - 1)``, column ``j (W - 1) / (Fx - 1)``."""
    fy, fx = grid
    h, w = size
    left, right, top, bottom = pads
    rows = torch.arange(-top, h + bottom, dtype=dtype, device=device)
    cols = torch.arange(-left, w + right, dtype=dtype, device=device)
    wy = _hat_weights(fy, rows * (fy - 1) / max(h - 1, 1))
    wx = _hat_weights(fx, cols * (fx - 1) / max(w - 1, 1))
    return wy[:, None, :, None] * wx[None, :, None, :]


class OptoConv1(nn.Module):
    """Opto-electronic conv1 (see the module docstring).

    Args:
        bank: the elements (:func:`dko.frontend.bank.build_kernel_bank`).
        psfs: real (E, w, w) PSFs for one object distance, or (D, E, w, w) for ``object_distances_m``
            (w odd), or (D, Fy, Fx, E, w, w) on a field grid (spatially varying image formation, see the module
            docstring). Each PSF is in the orientation of the targets (sum = efficiency, not renormalised).
            ``self.psfs`` is (D, E, w, w): the field grid's centre node (its mean for an even grid size);
            ``self.field_psfs`` (D, Fy, Fx, E, w, w) the whole grid; ``self.relative_response`` (Fy, Fx, E) each node's
            PSF sum relative to the centre's (the vignetting at the nodes, object distance 0).
        object_distances_m: D distances of the PSF stack (needed for depth-layered forward).
        sensor: optional :class:`SensorModel`; noise is added when ``noise=True`` in forward.
        trainable_gains: make the electronic gains and bias learnable parameters.
        flat_field: divide each element's sensor image by its relative response over the field (module docstring).
        flat_field_max_gain: cap of that correction's gain (>= 1; None = no cap).
    Forward:
        x: raw input (B, C, H, W), intensity in [0, 1] (not normalised).
        depth_m: optional (B, H, W) depth map, metres, for depth-layered image formation; without
            it, the PSFs of the first object distance are used.
        noise: add sensor noise (requires ``sensor``); generator: torch.Generator for it;
        differentiable_noise: use the differentiable noise form.
        fused: without noise (and for one object distance), compute the layer as one dense conv2d with
            :meth:`effective_weight` (faster; equal up to float rounding).
    Returns:
        (B, K, H_out, W_out), H_out = floor((H + 2 padding - k) / stride) + 1, as conv2d.
    """

    def __init__(self, bank: KernelBank, psfs: torch.Tensor, object_distances_m: Sequence[float | None] | None = None,
                 sensor: SensorModel | None = None, trainable_gains: bool = False, flat_field: bool = False,
                 flat_field_max_gain: float | None = None):
        super().__init__()
        if psfs.ndim == 3:
            psfs = psfs[None]
        if psfs.ndim == 4:
            psfs = psfs[:, None, None]
        if psfs.ndim != 6 or psfs.shape[3] != bank.n_elements or psfs.shape[-1] != psfs.shape[-2] \
                or psfs.shape[-1] % 2 == 0:
            raise ValueError(f"psfs must be (E, w, w), (D, E, w, w) or (D, Fy, Fx, E, w, w) with E={bank.n_elements} "
                             f"and w odd, got {tuple(psfs.shape)}")
        if object_distances_m is None:
            object_distances_m = [None] * psfs.shape[0] if psfs.shape[0] == 1 else None
        if object_distances_m is None or len(object_distances_m) != psfs.shape[0]:
            raise ValueError(f"object_distances_m must list the {psfs.shape[0]} distances of the PSF stack")
        self.object_distances_m = list(object_distances_m)
        self.kernel_size = bank.kernel_size
        self.stride = bank.stride
        self.padding = bank.padding
        self.n_out = bank.n_out
        self.sensor = sensor
        dtype = bank.targets.dtype
        self.field_grid = (int(psfs.shape[1]), int(psfs.shape[2]))
        self.register_buffer("field_psfs", psfs.to(dtype))
        self.register_buffer("psfs", centre_node(psfs).to(dtype))
        self.flat_field = bool(flat_field)
        if flat_field_max_gain is not None and not (isinstance(flat_field_max_gain, (int, float))
                                                    and math.isfinite(flat_field_max_gain) and flat_field_max_gain >= 1):
            raise ValueError(f"flat_field_max_gain must be a number >= 1 or None, got {flat_field_max_gain!r}")
        self.flat_field_max_gain = None if flat_field_max_gain is None else float(flat_field_max_gain)
        sums = self.field_psfs[0].sum(dim=(-2, -1))  # (Fy, Fx, E)
        centre_sum = self.psfs[0].sum(dim=(-2, -1))
        if self.flat_field and self.field_grid != (1, 1) and bool((centre_sum <= 0).any()):
            raise ValueError("flat_field needs every element's centre PSF to hold light")
        self.register_buffer("relative_response", sums / centre_sum.clamp_min(torch.finfo(dtype).tiny))
        self._flat_field_cache: dict = {}
        self.register_buffer("in_channel", bank.in_channel.clone())
        self.register_buffer("out_channel", bank.out_channel.clone())
        self.register_buffer("sign", bank.sign.clone())
        self.register_buffer("pad_value", bank.pad_value.clone())
        if trainable_gains:
            self.gains = nn.Parameter(bank.gains.clone())
            self.bias = nn.Parameter(bank.bias.clone())
        else:
            self.register_buffer("gains", bank.gains.clone())
            self.register_buffer("bias", bank.bias.clone())

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        k, s, p = self.kernel_size, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding of the raw input so that a valid strided conv with the w x w PSF
        window gives conv2d's output grid (may be negative = crop)."""
        win = self.psfs.shape[-1]
        offset = self.kernel_size // 2 - self.padding  # output i is centred on input stride*i + offset
        h_out, w_out = self.output_size(h, w)
        lead = win // 2 - offset
        bottom = (h_out - 1) * self.stride + win - h - lead
        right = (w_out - 1) * self.stride + win - w - lead
        return lead, right, lead, bottom

    def _pad_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Raw input (B, C, H, W) padded with ``pad_value`` for the valid strided conv (see :meth:`_pads`)."""
        x = x.to(self.psfs.dtype)
        pads = self._pads(x.shape[-2], x.shape[-1])
        centred = x - self.pad_value[None, :, None, None]
        return F.pad(centred, pads) + self.pad_value[None, :, None, None]

    @property
    def spatially_varying(self) -> bool:
        return self.field_grid != (1, 1)

    @property
    def shading_corrected(self) -> bool:
        """Whether the flat-field correction applies (``flat_field`` and a field grid)."""
        return self.flat_field and self.spatially_varying

    def flat_field_gain(self, h: int, w: int) -> torch.Tensor:
        """(E, H_out, W_out) factor ``1 / r_e(x)`` of the flat-field correction at the output pixels (module docstring;
        ones without a field grid). Computed once per image size and device."""
        h_out, w_out = self.output_size(h, w)
        dtype, device = self.field_psfs.dtype, self.field_psfs.device
        n_el = self.field_psfs.shape[3]
        if not self.spatially_varying:
            return torch.ones(n_el, h_out, w_out, dtype=dtype, device=device)
        key = (h, w, str(device), dtype)
        if key not in self._flat_field_cache:
            centre = self.psfs[0].sum(dim=(-2, -1))  # (E,)
            response = self.uniform_response(h, w) / centre[:, None, None]
            gain = 1.0 / response.clamp_min(torch.finfo(dtype).tiny)
            if self.flat_field_max_gain is not None:
                gain = gain.clamp_max(self.flat_field_max_gain)
            self._flat_field_cache = {key: gain}
        return self._flat_field_cache[key]

    def _field_weights(self, h: int, w: int, device) -> torch.Tensor:
        """(Fy * Fx, 1, Hp, Wp) overlap-add weights of the padded input (:func:`field_weights`)."""
        weights = field_weights(self.field_grid, (h, w), self._pads(h, w), self.field_psfs.dtype, device)
        return weights.reshape(-1, 1, *weights.shape[-2:])

    def effective_weight(self, distance_index: int = 0, field_index: tuple[int, int] | None = None) -> torch.Tensor:
        """Correlation weights (K, C, w, w) of the whole noise-free layer at one object distance (and one field
        node ``field_index``; default the centre PSFs ``self.psfs``).

        ``W[k, c] = sum_{e: k(e) = k, c(e) = c} sign_e g_e rot180(PSF_e)``: without noise the layer is linear,
        so ``forward(x) = conv2d(padded x, W, stride) + b'`` (:meth:`forward` with ``fused=True``), one dense
        convolution instead of E single-channel ones. Differentiable in ``psfs`` and ``gains``.
        """
        psf = self.psfs[distance_index] if field_index is None else self.field_psfs[(distance_index, *field_index)]
        win = psf.shape[-1]
        n_in = self.pad_value.numel()
        parts = torch.flip(psf, dims=(-2, -1)) * (self.sign * self.gains)[:, None, None]
        w = parts.new_zeros(self.n_out * n_in, win, win).index_add(0, self.out_channel * n_in + self.in_channel, parts)
        return w.view(self.n_out, n_in, win, win)

    def _channel_elements(self) -> list[torch.Tensor]:
        """Element indices grouped by input channel (channel 0 first)."""
        return [torch.nonzero(self.in_channel == c).flatten() for c in range(self.pad_value.numel())]

    def _channel_conv(self, x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Valid strided correlation of the padded raw input (B, C, h, w) with every element's kernel (E, w, w):
        (B, E, h', w'), elements in the order of :meth:`_channel_elements`. One dense single-input-channel conv per
        colour channel (an im2col and a matrix product), not a grouped conv over E copies of the input: the same
        sums, 20x faster on a CPU without oneDNN (one thread, :mod:`dko.runtime`) and 1.5x with it."""
        parts = [F.conv2d(x[:, c:c + 1], kernels[idx, None], stride=self.stride)
                 for c, idx in enumerate(self._channel_elements()) if idx.numel()]
        return torch.cat(parts, dim=1)

    def _patch_supports(self, weights: torch.Tensor, h: int, w: int) \
            -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """Per field node of the overlap-add ``weights`` (Fy * Fx, 1, Hp, Wp) of an H x W image the padded-input crop
        ``(r0, r1, c0, c1)`` that holds its weight (rounded out to the stride and extended by the PSF window) and the
        output block ``(i0, i1, j0, j1)`` the crop's valid convolution fills: a node's patch is zero outside the cells
        next to it, so convolving the crop gives the same sums as the whole image at about ``4 / (Fy Fx)`` of the
        cost."""
        h_out, w_out = self.output_size(h, w)
        win, s = self.psfs.shape[-1], self.stride

        def span(mask: torch.Tensor, n_out: int) -> tuple[int, int, int, int]:
            nz = torch.nonzero(mask).flatten()
            lo, hi = int(nz[0]), int(nz[-1])  # input support [lo, hi]; output i reads inputs s i .. s i + win - 1
            i0 = max(0, -(-(lo - win + 1) // s))
            i1 = min(n_out, hi // s + 1)
            return i0 * s, (i1 - 1) * s + win, i0, i1

        out = []
        for node in weights[:, 0]:
            r0, r1, i0, i1 = span(node.amax(dim=1) > 0, h_out)
            c0, c1, j0, j1 = span(node.amax(dim=0) > 0, w_out)
            out.append(((r0, r1, c0, c1), (i0, i1, j0, j1)))
        return out

    def _form(self, xp: torch.Tensor, d: int, h: int, w: int) -> torch.Tensor:
        """Noise-free strided sensor images (B, E, H_out, W_out) of the padded raw input ``xp`` (B, C, Hp, Wp) of an
        H x W image through the PSFs of object distance ``d``: the sum over field nodes of the convolutions of the
        node's hat-weighted crop (:meth:`_patch_supports`)."""
        fy, fx = self.field_grid
        # conv2d correlates: a true convolution with the PSF = correlation with the PSF rotated by 180 deg
        kernels = torch.flip(self.field_psfs[d], dims=(-2, -1)).reshape(fy * fx, *self.field_psfs.shape[3:])
        inverse = torch.argsort(torch.cat(self._channel_elements()))
        if not self.spatially_varying:
            return self._channel_conv(xp, kernels[0]).index_select(1, inverse)
        patches = self._field_weights(h, w, xp.device).to(xp.dtype)
        h_out, w_out = self.output_size(h, w)
        out = xp.new_zeros(xp.shape[0], kernels.shape[1], h_out, w_out)
        for f, ((r0, r1, c0, c1), (i0, i1, j0, j1)) in enumerate(self._patch_supports(patches, h, w)):
            crop = xp[..., r0:r1, c0:c1] * patches[f, :, r0:r1, c0:c1]
            out[..., i0:i1, j0:j1] += self._channel_conv(crop, kernels[f])
        return out.index_select(1, inverse)

    def uniform_response(self, h: int, w: int) -> torch.Tensor:
        """(E, H_out, W_out) noise-free sensor images of a unit uniform scene filling the field of an H x W image (its
        padded border too), at object distance 0: what a flat-field calibration measures."""
        pads = self._pads(h, w)
        ones = self.field_psfs.new_ones(1, self.pad_value.numel(), h + pads[2] + pads[3], w + pads[0] + pads[1])
        with torch.no_grad():
            return self._form(ones, 0, h, w)[0]

    def sensor_images(self, x: torch.Tensor, depth_m: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free strided sensor images S (B, E, H_out, W_out) of every element."""
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        if c != self.pad_value.numel():
            raise ValueError(f"x has {c} channels, the kernel bank expects {self.pad_value.numel()}")
        pads = self._pads(h, w)
        xp = self._pad_raw(x)  # (B, C, Hp, Wp)
        n_layers = self.field_psfs.shape[0]
        if depth_m is None or n_layers == 1:
            return self._form(xp, 0, h, w)
        if depth_m.shape != (b, h, w):
            raise ValueError(f"depth_m must be (B, H, W) = {(b, h, w)}, got {tuple(depth_m.shape)}")
        dp = F.pad(depth_m[:, None].to(torch.float64), pads, mode="replicate")[:, 0] if min(pads) >= 0 else None
        if dp is None:
            raise ValueError("depth-layered forward needs a PSF window of at least the kernel size")
        index = nearest_distance_index(dp, self.object_distances_m)  # (B, Hp, Wp)
        out = 0
        for d in range(n_layers):
            mask = (index == d).to(xp.dtype)[:, None]
            if not bool(mask.any()):
                continue
            out = out + self._form(xp * mask, d, h, w)
        if isinstance(out, int):  # pragma: no cover - every pixel belongs to some layer
            raise RuntimeError("no depth layer selected")
        return out

    def combine(self, sensor_images: torch.Tensor) -> torch.Tensor:
        """Electronic recombination y_k = sum_e [k(e) = k] sign_e g_e S_e + b'_k: (B, E, h, w) -> (B, K, h, w)."""
        weighted = sensor_images * (self.sign * self.gains)[None, :, None, None]
        b, _, h, w = weighted.shape
        y = torch.zeros(b, self.n_out, h, w, dtype=weighted.dtype, device=weighted.device)
        y = y.index_add(1, self.out_channel, weighted)
        return y + self.bias[None, :, None, None]

    def forward(self, x: torch.Tensor, depth_m: torch.Tensor | None = None, *, noise: bool = False,
                generator: torch.Generator | None = None, differentiable_noise: bool = False,
                fused: bool = False) -> torch.Tensor:
        if fused and not noise and not self.shading_corrected and (depth_m is None or self.psfs.shape[0] == 1):
            # same result as the per-element path up to float rounding (the layer is linear without noise)
            if x.ndim != 4 or x.shape[1] != self.pad_value.numel():
                raise ValueError(f"x must be (B, {self.pad_value.numel()}, H, W), got {tuple(x.shape)}")
            xp = self._pad_raw(x)
            if not self.spatially_varying:
                y = F.conv2d(xp, self.effective_weight(0), stride=self.stride)
            else:
                fy, fx = self.field_grid
                patches = self._field_weights(x.shape[-2], x.shape[-1], xp.device).to(xp.dtype)
                y = sum(F.conv2d(xp * patches[i * fx + j], self.effective_weight(0, (i, j)), stride=self.stride)
                        for i in range(fy) for j in range(fx))
            return y + self.bias[None, :, None, None]
        s = self.sensor_images(x, depth_m)
        if noise:
            if self.sensor is None:
                raise ValueError("noise=True needs a SensorModel (OptoConv1(..., sensor=...))")
            s = apply_sensor_noise(s, self.sensor, generator, differentiable=differentiable_noise)
        if self.shading_corrected:
            s = s * self.flat_field_gain(x.shape[-2], x.shape[-1]).to(s.dtype)[None]
        return self.combine(s)
