"""The optical layer (dko.frontend.layer): exact equivalence of OptoConv1 with the electronic conv1, depth
layers, noise, fused forward."""

import pytest
import torch

from dko.frontend import OptoConv1, build_kernel_bank, ideal_psfs, nearest_distance_index
from dko.optics.psf import OpticalSystem, ideal_lens_transmission, psf_from_transmission
from dko.optics.sensor import SensorModel

torch.set_num_threads(2)
WLS = [6.4e-7, 5.5e-7, 4.6e-7]
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


def electronic(conv, x, mean, std):
    with torch.no_grad():
        return conv((x - mean[None, :, None, None]) / std[None, :, None, None])


@pytest.mark.parametrize("window", [7, 11])
@pytest.mark.parametrize("size", [(23, 30), (32, 17)])
def test_ideal_psfs_reproduce_electronic_conv1(conv, window, size):
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias, stride=2, padding=3)
    layer = OptoConv1(bank, ideal_psfs(bank, window))
    x = torch.rand(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = electronic(conv, x, MEAN, STD)
    y = layer(x)
    assert y.shape == ref.shape
    assert float((y - ref).norm() / ref.norm()) < 1e-5  # measured ~1e-15 in float64


def test_equivalence_in_float32_and_with_scalar_normalisation(conv):
    conv = conv.float()
    bank = build_kernel_bank(conv.weight, 0.45, 0.225, WLS, bias=conv.bias)
    assert bank.padding == 3 and bank.stride == 2
    x = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = conv((x - 0.45) / 0.225)
    y = OptoConv1(bank, ideal_psfs(bank, 9))(x)
    assert float((y - ref).norm() / ref.norm()) < 1e-5


def test_other_stride_and_padding():
    torch.manual_seed(3)
    layer = torch.nn.Conv2d(2, 3, 5, stride=3, padding=1, bias=False).double()
    mean, std = torch.tensor([0.3, 0.6], dtype=torch.float64), torch.tensor([0.2, 0.4], dtype=torch.float64)
    bank = build_kernel_bank(layer.weight, mean, std, WLS[:2], stride=3, padding=1)
    x = torch.rand(2, 2, 19, 22, dtype=torch.float64)
    ref = electronic(layer, x, mean, std)
    for window in (5, 9):
        y = OptoConv1(bank, ideal_psfs(bank, window))(x)
        assert y.shape == ref.shape
        assert float((y - ref).norm() / ref.norm()) < 1e-10


def test_depth_layered_image_formation(conv):
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias)
    ideal = ideal_psfs(bank, 9)
    delta = torch.zeros_like(ideal)
    delta[:, 4, 4] = 1.0  # a "PSF" that does not blur
    stack = torch.stack([ideal, delta])
    distances = [None, 2.0]  # far layer sees the kernels, near layer the delta
    layer = OptoConv1(bank, stack, distances)
    far_only = OptoConv1(bank, ideal)
    near_only = OptoConv1(bank, delta)
    x = torch.rand(1, 3, 24, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    far = torch.full((1, 24, 28), 50.0, dtype=torch.float64)
    near = torch.full((1, 24, 28), 1.5, dtype=torch.float64)
    torch.testing.assert_close(layer(x, far), far_only(x))
    torch.testing.assert_close(layer(x, near), near_only(x))
    # a mixed scene is the sum of the two masked layers (padding replicates the nearest depth)
    mixed = far.clone()
    mixed[:, :, 14:] = 1.5
    mask_near = (mixed[:, None] < 3.0).to(x.dtype)
    expected_s = near_only.sensor_images(x * mask_near) + far_only.sensor_images(x * (1 - mask_near))
    # the two masked images both carry the mean padding (counted twice at the border), compare the interior
    got_s = layer.sensor_images(x, mixed)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # receptive fields inside the image
    torch.testing.assert_close(got_s[inner], expected_s[inner])
    assert not torch.allclose(got_s, far_only.sensor_images(x))
    # nearest distance in inverse depth
    idx = nearest_distance_index(torch.tensor([3.0, 100.0, 6.0]), [None, 10.0, 2.0])
    assert idx.tolist() == [2, 0, 1]


def test_noise_and_errors(conv):
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="SensorModel"):
        OptoConv1(bank, ideal_psfs(bank))(x, noise=True)
    with pytest.raises(ValueError, match="psfs"):
        OptoConv1(bank, torch.zeros(bank.n_elements + 1, 7, 7))
    layer = OptoConv1(bank, ideal_psfs(bank), sensor=SensorModel(full_well_e=1e6, read_noise_e=1.0, bit_depth=16))
    clean = layer(x)
    a = layer(x, noise=True, generator=torch.Generator().manual_seed(0))
    b = layer(x, noise=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert 0 < float((a - clean).norm() / clean.norm()) < 0.05
    trainable = OptoConv1(bank, ideal_psfs(bank), trainable_gains=True)
    trainable(x).sum().backward()
    assert trainable.gains.grad is not None and trainable.bias.grad is not None


def test_with_simulated_psfs():
    """Physical PSFs (ideal lens, default-like geometry) plug in: the output is a blurred version of the ideal one."""
    torch.manual_seed(5)
    layer = torch.nn.Conv2d(3, 2, 7, stride=2, padding=3, bias=False).double()
    bank = build_kernel_bank(layer.weight, MEAN, STD, WLS)
    system = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=64, sensor_distance_m=3.2e-4, pixel_pitch_m=2.74e-6,
                           psf_size_px=7)
    wls = bank.wavelength_m.tolist()
    psfs = psf_from_transmission(ideal_lens_transmission(system, wls), wls, system, 10.0)
    x = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    y = OptoConv1(bank, psfs.double())(x)
    ref = electronic(layer, x, MEAN, STD)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert float((y - ref).norm() / ref.norm()) > 1e-3  # an ideal lens is not the kernel bank


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_opto_conv1_on_cuda(conv):
    bank = build_kernel_bank(conv.weight.cuda(), MEAN.cuda(), STD.cuda(), WLS, bias=conv.bias.cuda())
    layer = OptoConv1(bank, ideal_psfs(bank, 9))
    x = torch.rand(2, 3, 23, 30, dtype=torch.float64, device="cuda")
    ref = electronic(conv.cuda(), x, MEAN.cuda(), STD.cuda())
    assert float((layer(x) - ref).norm() / ref.norm()) < 1e-5


def test_fused_forward_equals_per_element_forward_with_gradients(conv):
    """forward(fused=True) (one dense conv with effective_weight) = the per-element path, values and gradients."""
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias, stride=2, padding=3)
    gen = torch.Generator().manual_seed(3)
    psfs = torch.rand(bank.n_elements, 9, 9, dtype=torch.float64, generator=gen).requires_grad_(True)
    x = torch.rand(2, 3, 21, 26, dtype=torch.float64, generator=gen)
    grads = []
    outs = []
    for fused in (False, True):
        layer = OptoConv1(bank, psfs)
        y = layer(x, fused=fused)
        (g,) = torch.autograd.grad((y * torch.linspace(0, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), psfs)
        outs.append(y.detach())
        grads.append(g)
    assert outs[0].shape == outs[1].shape
    assert float((outs[0] - outs[1]).norm() / outs[0].norm()) < 1e-12
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-12


def test_a_field_grid_of_equal_psfs_is_exactly_the_shift_invariant_layer(conv):
    """Spatially varying image formation with the same PSF at every field node = today's conv1 (the hat weights
    are a partition of unity and the layer is linear), for the per-element, fused, layered and noisy paths."""
    from dko.frontend.layer import field_weights

    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias)
    x = torch.rand(2, 3, 21, 34, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    psfs = torch.rand(2, bank.n_elements, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    plain = OptoConv1(bank, psfs, [None, 2.0])
    for grid in ((1, 1), (2, 3), (3, 3)):
        varying = OptoConv1(bank, psfs[:, None, None].expand(2, *grid, *psfs.shape[1:]).clone(), [None, 2.0])
        assert varying.spatially_varying == (grid != (1, 1))
        torch.testing.assert_close(varying(x), plain(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(varying(x, fused=True), plain(x), rtol=1e-12, atol=1e-12)
        depth = torch.where(torch.rand(2, 21, 34, dtype=torch.float64) < 0.5, 1.5, 50.0).to(torch.float64)
        torch.testing.assert_close(varying(x, depth), plain(x, depth), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(varying.psfs, plain.psfs)
    weights = field_weights((3, 4), (21, 34), (3, 5, 3, 4))
    assert weights.shape == (3, 4, 21 + 3 + 4, 34 + 3 + 5)
    torch.testing.assert_close(weights.sum(dim=(0, 1)), torch.ones(28, 42, dtype=torch.float64))
    assert float(weights[0, 0, 3, 3]) == 1.0 and float(weights[2, 3, 3 + 20, 3 + 33]) == 1.0   # corner pixels


@pytest.mark.parametrize("grid", [(2, 3), (3, 5), (4, 2)])
@pytest.mark.parametrize("window", [7, 13])
def test_cropped_node_convolutions_equal_the_whole_image_overlap_add(conv, grid, window):
    """The layer convolves each node's crop only (its hat weight's support plus the window), one dense conv per
    colour channel: the same sums as the overlap-add of whole-image grouped convolutions, the definition, with
    distinct PSFs at every node, stride 2 and both depth layers."""
    import torch.nn.functional as F

    from dko.frontend.layer import field_weights

    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias)
    d, e = 2, bank.n_elements
    psfs = torch.rand(d, *grid, e, window, window, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    layer = OptoConv1(bank, psfs, [None, 2.0])
    x = torch.rand(2, 3, 23, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    depth = torch.where(torch.rand(2, 23, 37, generator=torch.Generator().manual_seed(5)) < 0.5, 1.5, 50.0)
    depth = depth.to(torch.float64)
    pads = layer._pads(23, 37)
    xe = layer._pad_raw(x).index_select(1, bank.in_channel)
    weights = field_weights(grid, (23, 37), pads).reshape(-1, 1, *xe.shape[-2:])
    kernels = torch.flip(psfs, dims=(-2, -1)).reshape(d, -1, e, 1, window, window)
    index = F.pad(depth[:, None], pads, mode="replicate")[:, 0]
    layer_of = torch.where(index < 10, 1, 0)  # 1.5 m -> layer 1 (2.0 m), 50 m -> layer 0 (infinity)
    for with_depth in (False, True):
        ref = 0
        for layer_index in (range(d) if with_depth else [0]):
            mask = (layer_of == layer_index).to(xe.dtype)[:, None] if with_depth else 1.0
            ref = ref + sum(F.conv2d(xe * mask * weights[f], kernels[layer_index, f], stride=2, groups=e)
                            for f in range(weights.shape[0]))
        got = layer.sensor_images(x, depth if with_depth else None)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_each_source_point_is_imaged_with_the_psf_interpolated_at_its_position():
    """A point source on a field node gets that node's PSF; between nodes the bilinear blend of its neighbours."""
    torch.manual_seed(5)
    layer1 = torch.nn.Conv2d(1, 1, 3, stride=1, padding=1, bias=False).double()
    bank = build_kernel_bank(layer1.weight, 0.0, 1.0, WLS[:1], stride=1, padding=1)
    e = bank.n_elements
    grid = torch.zeros(1, 2, 3, e, 5, 5, dtype=torch.float64)
    for i in range(2):
        for j in range(3):
            grid[0, i, j, :, 2, 2] = 1.0 + i + 10 * j          # distinct weights per node, a delta "PSF" each
            grid[0, i, j, :, 1, 2] = 0.5 * (i + 1)             # and a tail one row up that varies with the row
    layer = OptoConv1(bank, grid)
    h, w = 11, 21                                               # nodes at rows 0, 10 and columns 0, 10, 20
    for (r, c) in ((0, 0), (10, 20), (0, 10), (5, 10), (10, 5), (5, 15)):
        point = torch.zeros(1, 1, h, w, dtype=torch.float64)
        point[0, 0, r, c] = 1.0
        s = layer.sensor_images(point)[0]                       # (E, h, w) with stride 1, padding 1 -> same size
        ay, ax = r / 10, c / 10
        blend = sum(max(0.0, 1 - abs(ay - i)) * max(0.0, 1 - abs(ax - j)) * grid[0, i, j]
                    for i in range(2) for j in range(3))
        # a true convolution: the PSF's centre lands on the source pixel, its row-1 tail one row above
        assert torch.allclose(s[:, r, c], blend[:, 2, 2])
        if r >= 1:                                              # (row 0's tail leaves the image)
            assert torch.allclose(s[:, r - 1, c], blend[:, 1, 2])
            assert torch.allclose(s.sum(dim=(-2, -1)), blend.sum(dim=(-2, -1)))


def _scaled_grid(psfs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(1, Fy, Fx, E, w, w): the PSFs (E, w, w) times a per-node, per-element factor ``scale`` (Fy, Fx, E)."""
    return psfs[None, None, None] * scale[None, :, :, :, None, None]


def test_flat_field_correction_flattens_the_response_to_a_uniform_scene(conv):
    """Vignetting modelled as node PSFs scaled by 0.2-1 (different per element): a uniform scene's output then
    falls off towards the corners; with flat_field (the calibration on a uniform scene) it is the centre's everywhere,
    the gain equals the definition computed independently, noise-free corrected images stay within the scene's
    range, and the correction is applied after the noise. Equal nodes: flat_field changes nothing."""
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias, stride=1, padding=3)
    e = bank.n_elements
    gen = torch.Generator().manual_seed(3)
    psfs = torch.rand(e, 7, 7, dtype=torch.float64, generator=gen)
    psfs = psfs + psfs.flip(-1)
    psfs = psfs + psfs.flip(-2)  # mirror-symmetric: a uniform scene sees no first or cross moment of the bilinear weights
    scale = 0.2 + 0.8 * torch.rand(3, 3, e, dtype=torch.float64, generator=gen)
    scale[1, 1] = 1.0
    grid = _scaled_grid(psfs, scale)
    plain = OptoConv1(bank, psfs)
    shaded = OptoConv1(bank, grid)
    corrected = OptoConv1(bank, grid, flat_field=True)
    assert corrected.shading_corrected and not shaded.shading_corrected
    x = torch.full((1, 3, 41, 61), 0.7, dtype=torch.float64)
    ref = plain(x)[0]
    y_shaded, y_flat = shaded(x)[0], corrected(x, fused=True)[0]  # fused is ignored: the correction is per element
    inner = (slice(None), slice(4, 16), slice(4, 26))  # within the first cell of the 3 x 3 grid, off the border
    torch.testing.assert_close(y_flat[inner], ref[inner], rtol=1e-10, atol=1e-10)
    assert float((y_shaded[inner] - ref[inner]).abs().max()) > 0.05 * float(ref[inner].abs().max())
    gain = corrected.flat_field_gain(41, 61)
    assert gain.shape == (e, 41, 61)
    # the gain is the centre's PSF sum over the response to a unit scene filling the padded field, computed here as
    # the whole-image overlap-add of grouped convolutions (the definition; the layer convolves crops per channel)
    import torch.nn.functional as F

    from dko.frontend.layer import field_weights

    pads = corrected._pads(41, 61)
    weights = field_weights((3, 3), (41, 61), pads).reshape(9, 1, 41 + pads[2] + pads[3], 61 + pads[0] + pads[1])
    kernels = torch.flip(grid[0], dims=(-2, -1)).reshape(9, e, 1, 7, 7)
    ones = torch.ones(1, e, *weights.shape[-2:], dtype=torch.float64)
    response = sum(F.conv2d(ones * weights[f], kernels[f], groups=e) for f in range(9))[0]
    torch.testing.assert_close(gain, psfs.sum(dim=(-2, -1))[:, None, None] / response, rtol=1e-12, atol=1e-12)
    assert float(gain[:, 0, 0].min()) > 1.0   # the corners are vignetted (scale < 1 there)
    # a uniform scene that fills the field (the pad value everywhere): the corrected output is the centre's at every
    # pixel, the border and the node lines included
    uniform = bank.pad_value[None, :, None, None].expand(1, 3, 41, 61).clone()
    torch.testing.assert_close(corrected(uniform), plain(uniform), rtol=1e-10, atol=1e-10)
    # noise-free, each corrected sensor image is a convex combination of scene values (PSFs are non-negative)
    scene = torch.rand(1, 3, 41, 61, dtype=torch.float64, generator=gen)
    normalised = corrected.sensor_images(scene)[0] * gain / psfs.sum(dim=(-2, -1))[:, None, None]
    lo = torch.minimum(scene.amin(dim=(0, 2, 3)), bank.pad_value)[bank.in_channel]
    hi = torch.maximum(scene.amax(dim=(0, 2, 3)), bank.pad_value)[bank.in_channel]
    assert bool((normalised >= lo[:, None, None] - 1e-12).all() and (normalised <= hi[:, None, None] + 1e-12).all())
    # equal nodes: the correction is the identity
    same = OptoConv1(bank, _scaled_grid(psfs, torch.ones(3, 3, e, dtype=torch.float64)), flat_field=True)
    z = torch.rand(2, 3, 41, 61, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(same(z), plain(z), rtol=1e-12, atol=1e-12)
    # noise first, then the correction: the corrected noise is larger where the response is weak
    sensor = SensorModel(full_well_e=200.0, read_noise_e=0.0, bit_depth=16)
    noisy = OptoConv1(bank, grid, sensor=sensor, flat_field=True)
    s_clean = noisy.sensor_images(x)
    s_noisy = torch.stack([noisy.combine(apply_noise_and_correct(noisy, s_clean, seed)) for seed in range(2)])
    direct = torch.stack([noisy(x, noise=True, generator=torch.Generator().manual_seed(seed)) for seed in range(2)])
    torch.testing.assert_close(direct[:, 0], s_noisy[:, 0])


def test_the_flat_field_gain_cap_limits_the_correction_where_the_field_is_dark(conv):
    """flat_field_max_gain: the gain is min(1 / r, cap) at every pixel (uncapped where the field is bright enough),
    so a corner darker than 1 / cap of the centre stays darker; a cap below 1 is refused."""
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias, stride=1, padding=3)
    e = bank.n_elements
    psfs = torch.rand(e, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    scale = torch.ones(3, 3, e, dtype=torch.float64)
    scale[0, 0] = 0.01  # one dark corner node: the uncapped gain reaches ~15 there (its neighbours' light)
    grid = _scaled_grid(psfs, scale)
    free = OptoConv1(bank, grid, flat_field=True).flat_field_gain(41, 61)
    capped_layer = OptoConv1(bank, grid, flat_field=True, flat_field_max_gain=4.0)
    capped = capped_layer.flat_field_gain(41, 61)
    assert float(free.max()) > 8 and float(capped.max()) == 4.0
    torch.testing.assert_close(capped, free.clamp_max(4.0))
    assert bool((capped == free)[:, 20:, 30:].all())  # far from the dark node nothing changes
    with pytest.raises(ValueError, match="flat_field_max_gain"):
        OptoConv1(bank, grid, flat_field=True, flat_field_max_gain=0.5)


def apply_noise_and_correct(layer: OptoConv1, s: torch.Tensor, seed: int) -> torch.Tensor:
    from dko.optics.sensor import apply_sensor_noise

    noisy = apply_sensor_noise(s, layer.sensor, torch.Generator().manual_seed(seed))
    return noisy * layer.flat_field_gain(s.shape[-2], s.shape[-1])[None]
