"""DepthNet shapes, the optical-front hook and Monodepth2 checkpoint compatibility."""

import pytest
import torch

from dko.depth.checkpoint import load_depthnet, load_monodepth2, save_depthnet, save_monodepth2
from dko.depth.model import DepthNet, disp_to_depth


@pytest.mark.parametrize(
    "blocks, width, k, dec, hw",
    [((1, 1, 1, 1), 8, 7, (4, 8, 8, 16, 16), (32, 96)),
     ((2, 1, 1, 2), 4, 3, (16, 32, 64, 128, 256), (64, 64)),
     ((1, 2, 1, 1), 6, 5, (8, 8, 8, 8, 8), (36, 50))],
)
def test_shapes(blocks, width, k, dec, hw):
    torch.manual_seed(0)
    net = DepthNet(blocks, width, k, min_depth_m=1.0, max_depth_m=80.0, decoder_channels=dec).eval()
    h, w = hw
    x = torch.rand(2, 3, h, w)
    feats = net.encoder(net.normalise(x))
    assert [f.shape[1] for f in feats] == [width, width, 2 * width, 4 * width, 8 * width]
    assert feats[0].shape[-2:] == ((h + 1) // 2, (w + 1) // 2)
    assert net.conv1.weight.shape == (width, 3, k, k) and net.conv1.bias is None
    assert net.conv1.stride == (2, 2) and net.conv1.padding == (k // 2, k // 2)
    out = net(x)
    assert sorted(out) == [("disp", s) for s in range(4)]
    if h % 32 == 0 and w % 32 == 0:
        for s in range(4):
            assert out[("disp", s)].shape == (2, 1, h // 2**s, w // 2**s)
    depth = net.predict_depth(x)
    assert depth.shape == (2, 1, h, w)
    assert float(depth.min()) >= 1.0 - 1e-5 and float(depth.max()) <= 80.0 + 1e-3


def test_layer_counts_follow_config():
    net = DepthNet((2, 2, 2, 2), 64, 7)
    keys = net.encoder.state_dict().keys()
    assert "encoder.layer4.1.conv2.weight" in keys and "encoder.layer2.0.downsample.0.weight" in keys
    assert "encoder.layer1.0.downsample.0.weight" not in keys  # same shape: identity shortcut
    dec = net.decoder.state_dict()
    assert dec["decoder.0.conv.conv.weight"].shape == (256, 512, 3, 3)  # ("upconv", 4, 0)
    assert dec["decoder.9.conv.conv.weight"].shape == (16, 16, 3, 3)  # ("upconv", 0, 1)
    assert dec["decoder.10.conv.weight"].shape == (1, 16, 3, 3)  # ("dispconv", 0)
    assert dec["decoder.13.conv.weight"].shape == (1, 128, 3, 3)  # ("dispconv", 3)
    # ResNet-18 trunk without the classifier: 11,176,512 parameters (torchvision resnet18 minus fc).
    assert sum(p.numel() for p in net.encoder.parameters()) == 11_176_512


def test_front_replaces_normalisation_and_conv1():
    torch.manual_seed(0)
    net = DepthNet((1, 1, 1, 1), 8, 7, min_depth_m=1.0, max_depth_m=80.0, decoder_channels=(4, 4, 8, 8, 8)).eval()
    x = torch.rand(1, 3, 32, 64)
    ref = net(x)[("disp", 0)]
    conv1 = net.conv1

    class Front(torch.nn.Module):  # what an optical layer does: raw image in, conv1 features out
        def forward(self, images):
            return conv1((images - 0.45) / 0.225)

    net.front = Front()
    assert torch.allclose(net(x)[("disp", 0)], ref)
    assert torch.allclose(net.forward_from_conv1(conv1(net.normalise(x)))[("disp", 0)], ref)


def test_disp_to_depth_range():
    scaled, depth = disp_to_depth(torch.tensor([0.0, 1.0]), 0.5, 100.0)
    assert torch.allclose(depth, torch.tensor([100.0, 0.5]))
    assert torch.allclose(scaled, torch.tensor([0.01, 2.0]))


def _randomise_bn(net):
    g = torch.Generator().manual_seed(1)
    for name, buf in net.named_buffers():
        if buf.dtype.is_floating_point:
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


def _assert_same_network(src: DepthNet, dst: DepthNet, skip_suffix: str = "\0") -> None:
    """Equal state dicts (keys ending in ``skip_suffix`` left out) and equal outputs."""
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        if not k.endswith(skip_suffix):
            assert torch.equal(a, b), k
    x = torch.rand(1, 3, 32, 64)
    assert torch.equal(src.eval()(x)[("disp", 0)], dst.eval()(x)[("disp", 0)])


def _saved_random_network(tmp_path, blocks, height: int, width: int):
    """A DepthNet with random weights and BatchNorm statistics, saved in Monodepth2's format; and a fresh twin."""
    torch.manual_seed(0)
    src = DepthNet(blocks, 8, 7, decoder_channels=(4, 8, 8, 16, 16))
    _randomise_bn(src)
    enc_path, dec_path = save_monodepth2(src, tmp_path, height=height, width=width)
    torch.manual_seed(1)
    return src, DepthNet(blocks, 8, 7, decoder_channels=(4, 8, 8, 16, 16)), enc_path, dec_path


def test_monodepth2_checkpoint_round_trip(tmp_path):
    src, dst, enc_path, dec_path = _saved_random_network(tmp_path, (2, 1, 1, 1), 192, 640)
    raw = torch.load(enc_path, weights_only=True)
    # Monodepth2's encoder.pth layout: torchvision-style keys, classifier and the extra entries.
    assert raw["height"] == 192 and raw["width"] == 640 and raw["use_stereo"] is False
    assert {"encoder.conv1.weight", "encoder.bn1.running_var", "encoder.layer1.0.conv1.weight",
            "encoder.layer1.1.bn2.bias", "encoder.fc.weight", "encoder.fc.bias"} <= set(raw)
    assert raw["encoder.fc.weight"].shape == (1000, 64)
    assert "decoder.0.conv.conv.weight" in torch.load(dec_path, weights_only=True)

    extras = load_monodepth2(dst, tmp_path)
    assert extras == {"height": 192, "width": 640, "use_stereo": False}
    _assert_same_network(src, dst)


def test_monodepth2_checkpoint_mismatch_is_reported(tmp_path):
    save_monodepth2(DepthNet((1, 1, 1, 1), 8, 7), tmp_path, 32, 64)
    with pytest.raises(ValueError, match="conv1_kernel|base_width"):
        load_monodepth2(DepthNet((1, 1, 1, 1), 8, 5), tmp_path)
    with pytest.raises(ValueError, match="missing keys"):
        load_monodepth2(DepthNet((2, 1, 1, 1), 8, 7), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_monodepth2(DepthNet((1, 1, 1, 1), 8, 7), tmp_path / "nowhere")


def test_monodepth2_weights_without_batchnorm_counters_load(tmp_path):
    """A checkpoint without `num_batches_tracked` (older PyTorch, or stripped) loads, as in Monodepth2."""
    src, dst, enc_path, _ = _saved_random_network(tmp_path, (1, 1, 1, 1), 32, 64)
    raw = torch.load(enc_path, weights_only=True)
    counters = [k for k in raw if k.endswith("num_batches_tracked")]
    assert counters  # the file had them; remove them as an older writer would not have written them
    torch.save({k: v for k, v in raw.items() if k not in counters}, enc_path)
    load_monodepth2(dst, tmp_path)
    _assert_same_network(src, dst, skip_suffix="num_batches_tracked")
    # any other missing key is still an error
    torch.save({k: v for k, v in raw.items() if k != "encoder.bn1.running_mean"}, enc_path)
    with pytest.raises(ValueError, match=r"missing keys \['encoder.bn1.running_mean'\]"):
        load_monodepth2(dst, tmp_path)


def test_a_network_keeps_its_own_depth_range():
    """network.depth_range_m, else Monodepth2's 0.1-100 m for imported weights, else the dataset's range; the
    range is saved with the network (arch), whatever the evaluation caps."""
    from dko.config import config_from_dict
    from dko.depth.model import MONODEPTH2_DEPTH_RANGE_M, network_depth_range

    dataset = (1e-3, 80.0)
    plain = config_from_dict({}, check_paths=False).network
    assert network_depth_range(plain, dataset) == dataset
    imported = config_from_dict({"network": {"pretrained_dir": "/weights"}}, check_paths=False).network
    assert network_depth_range(imported, dataset) == MONODEPTH2_DEPTH_RANGE_M == (0.1, 100.0)
    chosen = config_from_dict({"network": {"pretrained_dir": "/weights", "depth_range_m": [0.5, 50]}},
                              check_paths=False).network
    assert network_depth_range(chosen, dataset) == (0.5, 50.0)
    # real data: Monodepth2's range too (the protocols' 1e-3 m floor is an evaluation cap, not an output range)
    assert network_depth_range(plain, dataset, "kitti") == network_depth_range(plain, dataset, "nyu") == (0.1, 100.0)
    assert network_depth_range(plain, dataset, "synthetic") == dataset
    assert network_depth_range(chosen, dataset, "kitti") == (0.5, 50.0)
    model = DepthNet.from_config(imported, dataset)
    assert (model.arch["min_depth_m"], model.arch["max_depth_m"]) == (0.1, 100.0)
    with pytest.raises(ValueError, match=r"network.depth_range_m.*min < max"):
        config_from_dict({"network": {"depth_range_m": [5.0, 1.0]}}, check_paths=False)
    with pytest.raises(ValueError, match="depth_range_m"):
        config_from_dict({"network": {"depth_range_m": [1.0]}}, check_paths=False)


def test_depthnet_file_round_trip(tmp_path):
    torch.manual_seed(0)
    net = DepthNet((1, 1, 1, 1), 8, 3, min_depth_m=0.5, max_depth_m=20.0, decoder_channels=(4, 4, 4, 4, 4))
    _randomise_bn(net)
    save_depthnet(net, tmp_path / "model.pt", steps=3)
    loaded, payload = load_depthnet(tmp_path / "model.pt")
    assert payload["steps"] == 3 and loaded.max_depth_m == 20.0
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(net.eval().predict_depth(x), loaded.predict_depth(x))
