"""The opto-electronic depth predictor (dko.frontend.predictor): a DepthNet with a realised conv1, noise-free,
noisy and depth-layered, and its agreement with the electronic teacher."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from dko.config import config_from_dict
from dko.depth.checkpoint import save_depthnet
from dko.depth.evaluate import PredictorContext
from dko.depth.model import DepthNet
from dko.frontend import build_kernel_bank, build_opto_predictor, ideal_psfs

torch.set_num_threads(2)
WLS = [6.4e-7, 5.5e-7, 4.6e-7]


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    torch.manual_seed(5)
    tmp = tmp_path_factory.mktemp("net")
    net = DepthNet(blocks_per_stage=(1, 1, 1, 1), base_width=4, conv1_kernel=5, min_depth_m=1.0, max_depth_m=80.0,
                   decoder_channels=(4, 4, 8, 8, 8)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = save_depthnet(net, tmp / "model.pt")
    return net, path


def _ctx(tmp_path, inputs):
    cfg = config_from_dict({"results_dir": str(tmp_path)})
    return PredictorContext(cfg=cfg, data_dir=tmp_path, meta={}, inputs=inputs, device="cpu")


def test_opto_predictor_with_perfect_psfs_equals_the_electronic_network(tmp_path, net_files, system, write_frontend):
    net, model_path = net_files
    conv = net.conv1
    bank = build_kernel_bank(conv.weight.detach(), net.norm_mean, net.norm_std, WLS, stride=2)
    # two distances with the same perfect PSFs; a halo-free element equals its target
    psfs = torch.stack([ideal_psfs(bank, 15), ideal_psfs(bank, 15)])
    write_frontend(bank, system, psfs, [10.0, 2.0])
    inputs = {"model": str(model_path), "frontend": str(tmp_path / "frontend.npz"), "teacher": str(model_path)}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 48, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 80.0, size=(2, 32, 48)).astype(np.float32)
    ref = net.predict_depth(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0)[:, 0].numpy()
    pred = build_opto_predictor(_ctx(tmp_path, inputs), noise=False, layered=False)
    out = pred(images)
    assert np.allclose(out, ref, rtol=1e-4)
    extra = pred.extra_metrics()
    assert extra["conv1_feature_rel_l2"] < 1e-5 and extra["teacher_abs_rel"] < 1e-4 and extra["teacher_delta1"] == 1.0
    layered = build_opto_predictor(_ctx(tmp_path, inputs), noise=False, layered=True)
    assert layered.needs_depth
    assert np.allclose(layered(images, depth), ref, rtol=1e-4)
    with pytest.raises(ValueError, match="ground-truth depth"):
        layered(images)
    noisy = build_opto_predictor(_ctx(tmp_path, inputs), noise=True, layered=False)
    a = noisy(images)
    assert not np.allclose(a, ref) and np.abs(a - ref).mean() / ref.mean() < 0.2
    assert noisy.extra_metrics()["conv1_feature_rel_l2"] > 1e-4


def test_layered_predictor_uses_the_psf_of_each_depth(tmp_path, net_files, system, write_frontend):
    """Far layer: perfect PSFs; near layer: a blurred PSF. All-far depth = perfect; all-near = blurred."""
    net, model_path = net_files
    bank = build_kernel_bank(net.conv1.weight.detach(), net.norm_mean, net.norm_std, WLS, stride=2)
    sharp = ideal_psfs(bank, 15)
    blurred = torch.nn.functional.avg_pool2d(sharp[:, None], 5, stride=1, padding=2)[:, 0]
    write_frontend(bank, system, torch.stack([sharp, blurred]), [10.0, 1.0])
    inputs = {"model": str(model_path), "frontend": str(tmp_path / "frontend.npz")}
    images = np.random.default_rng(1).integers(0, 256, size=(1, 32, 48, 3), dtype=np.uint8)
    pred = build_opto_predictor(_ctx(tmp_path, inputs), noise=False, layered=True)
    ref = net.predict_depth(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0)[:, 0].numpy()
    far = pred(images, np.full((1, 32, 48), 50.0, np.float32))
    near = pred(images, np.full((1, 32, 48), 1.0, np.float32))
    assert np.allclose(far, ref, rtol=1e-4)
    assert not np.allclose(near, ref, rtol=1e-3)
    # the fused (one dense conv per layer) path equals the layer's per-element image formation
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    depth = torch.where(torch.rand(1, 32, 48, generator=torch.Generator().manual_seed(0)) < 0.5, 1.0, 50.0)
    pred.front.depth_m = depth
    assert torch.allclose(pred.front(x), pred.front.layer(x, depth), rtol=1e-4, atol=1e-4)
    assert pred.extra_metrics() == {}  # no teacher given


def test_predictor_rejects_a_mismatched_front_end(tmp_path, net_files, system, bank, write_frontend):
    _, model_path = net_files
    write_frontend(bank, system, ideal_psfs(bank, 15)[None], [10.0])  # a 2-output front end
    with pytest.raises(ValueError, match="does not fit conv1"):
        build_opto_predictor(_ctx(tmp_path, {"model": str(model_path), "frontend": str(tmp_path / "frontend.npz")}),
                             noise=False, layered=False)


def test_importing_the_front_end_registers_nothing():
    """No import-time side effects: the model catalogue calls build_opto_predictor; importing the front end does
    not import the evaluation module to register predictors there."""
    code = ("import sys\n"
            "import dko.frontend\n"
            "assert 'dko.depth.evaluate' not in sys.modules, 'imported dko.depth.evaluate'\n"
            "import dko.frontend.predictor as p\n"
            "assert callable(p.build_opto_predictor)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
