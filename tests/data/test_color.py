"""sRGB decoding (dko.data.color), the dataset's input decoding (dko.data.format.input_decoding), and that the
trainer and every predictor feed the network / optics the decoded images (and a model file records the decoding)."""

import numpy as np
import pytest
import torch

from dko.config import config_from_dict
from dko.data.color import SRGB_TO_LINEAR_LUT, linear_to_srgb, srgb_to_linear
from dko.data.format import SplitWriter, batch_to_tensors, input_decoding, write_meta
from dko.depth.checkpoint import save_depthnet
from dko.depth.evaluate import PredictorContext, build_electronic, model_predictor
from dko.depth.model import DepthNet
from dko.depth.trainer import BudgetPlan, Trainer, TrainingData, TrainingTask, Validation

torch.set_num_threads(2)
CODES = np.arange(256, dtype=np.uint8)


def _formula(code: int) -> float:
    """IEC 61966-2-1 decoding of one 8-bit code, float64."""
    v = code / 255.0
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


# ----------------------------------------------------------------------------- the transfer function
@pytest.mark.parametrize("code", [0, 1, 5, 10, 11, 12, 50, 128, 188, 254, 255])
def test_lut_is_the_iec_formula(code):
    assert SRGB_TO_LINEAR_LUT[code] == np.float32(_formula(code))


def test_knee_between_codes_10_and_11():
    """10/255 = 0.0392 is on the linear segment, 11/255 = 0.0431 on the power law (which differ there)."""
    assert SRGB_TO_LINEAR_LUT[10] == np.float32(10 / 255 / 12.92)
    assert SRGB_TO_LINEAR_LUT[11] == np.float32(((11 / 255 + 0.055) / 1.055) ** 2.4)
    assert SRGB_TO_LINEAR_LUT[11] != np.float32(11 / 255 / 12.92)


def test_lut_dtype_ends_and_monotonic():
    lut = SRGB_TO_LINEAR_LUT
    assert lut.dtype == np.float32 and lut.shape == (256,)
    assert lut[0] == 0.0 and lut[255] == 1.0
    assert np.all(np.diff(lut) > 0)
    assert lut[128] == pytest.approx(0.2158605, abs=1e-6)  # mid-grey code: about a fifth of full light
    with pytest.raises(ValueError):
        lut[0] = 1.0  # read-only


def test_srgb_to_linear_keeps_the_shape_and_rejects_other_dtypes():
    codes = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    lin = srgb_to_linear(codes)
    assert lin.dtype == np.float32 and lin.shape == codes.shape
    assert np.array_equal(lin, SRGB_TO_LINEAR_LUT[codes])
    with pytest.raises(ValueError, match="uint8"):
        srgb_to_linear(codes.astype(np.float32))


def test_round_trip_recovers_every_code():
    back = linear_to_srgb(srgb_to_linear(CODES)) * 255.0
    assert np.abs(back - CODES).max() < 1e-3
    assert np.array_equal(np.round(back).astype(np.uint8), CODES)
    assert linear_to_srgb(np.array([-0.5, 0.0, 1.0, 2.0])).tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- a dataset's decoding
@pytest.mark.parametrize("meta, decoding", [
    ({}, "none"),  # datasets written before the keys: linear
    ({"linear_light": True}, "none"),
    ({"linear_light": False}, "none"),
    ({"image_encoding": "linear"}, "none"),
    ({"image_encoding": "linear", "linear_light": True}, "none"),
    ({"image_encoding": "linear", "linear_light": False}, "none"),
    ({"image_encoding": "srgb"}, "srgb"),  # missing linear_light: true
    ({"image_encoding": "srgb", "linear_light": True}, "srgb"),
    ({"image_encoding": "srgb", "linear_light": False}, "none"),
])
def test_input_decoding_truth_table(meta, decoding):
    assert input_decoding(meta) == decoding


def test_input_decoding_rejects_unknown_values():
    with pytest.raises(ValueError, match="image_encoding 'gamma22'"):
        input_decoding({"image_encoding": "gamma22"})
    with pytest.raises(ValueError, match="linear_light.*'yes'"):
        input_decoding({"image_encoding": "srgb", "linear_light": "yes"})


def test_batch_to_tensors_decodings():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    depth = rng.uniform(1, 80, (2, 4, 5))
    img, dep = batch_to_tensors(images, depth, "none")
    assert img.dtype == torch.float32 and img.shape == (2, 3, 4, 5) and dep.shape == (2, 1, 4, 5)
    ref = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).permute(0, 3, 1, 2)
    assert torch.equal(img, ref)  # bit-identical to code / 255 (synthetic runs unchanged)
    img_s, dep_s = batch_to_tensors(images, depth, "srgb")
    assert img_s.dtype == torch.float32 and torch.equal(dep_s, dep)
    assert torch.equal(img_s, torch.from_numpy(SRGB_TO_LINEAR_LUT[images]).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="decoding 'gamma'"):
        batch_to_tensors(images, depth, "gamma")


# ----------------------------------------------------------------------------- predictors decode
class _Capture(torch.nn.Module):
    """Stand-in DepthNet: records the input of ``predict_depth`` and predicts 1 m."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def predict_depth(self, x):
        self.seen = x.clone()
        return torch.ones(x.shape[0], 1, *x.shape[2:])


GREY = np.full((1, 4, 6, 3), 128, np.uint8)


@pytest.mark.parametrize("decoding, value", [("none", 128 / 255), ("srgb", _formula(128))])
def test_model_predictor_feeds_the_decoded_images(decoding, value):
    net = _Capture()
    out = model_predictor(net, decoding=decoding)(GREY)
    assert out.shape == (1, 4, 6)
    assert net.seen.shape == (1, 3, 4, 6) and torch.all(net.seen == np.float32(value))
    with pytest.raises(ValueError, match="decoding 'linear'"):
        model_predictor(net, decoding="linear")


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    torch.manual_seed(3)
    net = DepthNet(blocks_per_stage=(1, 1, 1, 1), base_width=4, conv1_kernel=5, min_depth_m=1.0, max_depth_m=80.0,
                   decoder_channels=(4, 4, 8, 8, 8)).eval()
    return net, save_depthnet(net, tmp_path_factory.mktemp("net") / "model.pt")


def _ctx(tmp_path, meta, inputs):
    return PredictorContext(cfg=config_from_dict({"results_dir": str(tmp_path)}), data_dir=tmp_path, meta=meta,
                            inputs=inputs, device="cpu")


def _by_hand(net, images, decoding):
    codes = images.astype(np.float32) / np.float32(255.0)
    x = torch.from_numpy(SRGB_TO_LINEAR_LUT[images] if decoding == "srgb" else codes)
    with torch.no_grad():
        return net.predict_depth(x.permute(0, 3, 1, 2))[:, 0].numpy()


def test_electronic_model_decodes_as_its_dataset_says(tmp_path, tiny_net):
    net, path = tiny_net
    images = np.random.default_rng(2).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    linear = build_electronic(_ctx(tmp_path, {}, {"model": str(path)}))(images)
    srgb = build_electronic(_ctx(tmp_path, {"image_encoding": "srgb"}, {"model": str(path)}))(images)
    off = build_electronic(_ctx(tmp_path, {"image_encoding": "srgb", "linear_light": False}, {"model": str(path)}))
    assert np.array_equal(linear, _by_hand(net, images, "none"))
    assert np.allclose(srgb, _by_hand(net, images, "srgb"), rtol=1e-6)
    assert not np.allclose(srgb, linear, rtol=1e-3)
    assert np.array_equal(off(images), linear)
    with pytest.raises(ValueError, match="image_encoding 'bt709'"):
        build_electronic(_ctx(tmp_path, {"image_encoding": "bt709"}, {"model": str(path)}))


def test_opto_predictor_decodes_before_its_optics(tmp_path, tiny_net):
    """Perfect PSFs: the opto-electronic model equals the electronic network on the decoded (linear) images."""
    from dko.frontend import array_layout, build_kernel_bank, build_opto_predictor, ideal_psfs, save_frontend
    from dko.optics.psf import OpticalSystem

    net, path = tiny_net
    system = OpticalSystem(superpixel_m=1.2e-6, n_superpixels=24, sensor_distance_m=2.0e-4, pixel_pitch_m=2.74e-6,
                           psf_size_px=15)
    bank = build_kernel_bank(net.conv1.weight.detach(), net.norm_mean, net.norm_std, [6.4e-7, 5.5e-7, 4.6e-7],
                             stride=2)
    psfs = ideal_psfs(bank, 15)[None]
    save_frontend(tmp_path / "frontend.npz", radius_m=torch.full((bank.n_elements, 24, 24), 8e-8), psfs=psfs,
                  object_distances_m=[10.0], efficiency=psfs.sum(dim=(-2, -1)), gains=bank.gains, bank=bank,
                  element_centers_m=array_layout(bank, 1e-4), system=system, info={"method": "test"})
    inputs = {"model": str(path), "frontend": str(tmp_path / "frontend.npz")}
    images = np.random.default_rng(4).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    srgb = build_opto_predictor(_ctx(tmp_path, {"image_encoding": "srgb"}, inputs), noise=False, layered=False)
    linear = build_opto_predictor(_ctx(tmp_path, {}, inputs), noise=False, layered=False)
    assert srgb.decoding == "srgb" and linear.decoding == "none"
    assert np.allclose(srgb(images), _by_hand(net, images, "srgb"), rtol=1e-4)
    assert np.allclose(linear(images), _by_hand(net, images, "none"), rtol=1e-4)
    assert not np.allclose(srgb(images), linear(images), rtol=1e-3)


# ----------------------------------------------------------------------------- the trainer decodes and records it
class _SeeBatches(TrainingTask):
    """Records every training batch; no parameters."""

    curve_columns = ["step", "budget_used", "train_loss", "val_abs_rel"]

    def __init__(self):
        self.batches = []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def flop_probe(self):
        return lambda x, gt: (x.flatten(1) @ x.flatten(1).T).sum()

    def train_step(self, step, images, depth, valid, fraction):
        self.batches.append(images.clone())
        return 0.0

    def validate(self, split, meta, batch_size, predict_wrapper):
        return {"abs_rel": 0.5}


def _grey_dataset(root, **keys):
    """Every image the code 128 everywhere; ``keys`` (image_encoding, linear_light) go into meta.json."""
    for split in ("train", "val"):
        with SplitWriter(root, split, 2, 4, 6) as writer:
            for i in range(2):
                writer.write(i, GREY[0], np.full((4, 6), 5.0), f"{split}{i}")
    write_meta(root, source="test", protocol="synthetic", height=4, width=6, min_depth_m=1.0, max_depth_m=80.0,
               counts={"train": 2, "val": 2}, **keys)
    return root


@pytest.mark.parametrize("keys, value, recorded", [
    ({}, 128 / 255, {"image_encoding": "linear", "linear_light": True, "input_decoding": "none"}),
    ({"image_encoding": "srgb", "linear_light": True}, _formula(128),
     {"image_encoding": "srgb", "linear_light": True, "input_decoding": "srgb"}),
    ({"image_encoding": "srgb", "linear_light": False}, 128 / 255,
     {"image_encoding": "srgb", "linear_light": False, "input_decoding": "none"}),
])
def test_trainer_trains_on_the_decoded_images_and_records_the_decoding(tmp_path, keys, value, recorded):
    data = TrainingData.load(_grey_dataset(tmp_path / "data", **keys))
    task = _SeeBatches()
    trainer = Trainer(task, data, tmp_path / "out", run_key="k", name="grey", plan=BudgetPlan.steps(2), batch_size=2,
                      flip=False, color_jitter=0.0, seed=0, log_every=1, checkpoint_every=2,
                      validation=Validation(every_steps=2), collapse_check=False)
    trainer.run(progress=False)
    assert len(task.batches) == 2 and all(torch.all(b == np.float32(value)) for b in task.batches)
    info = data.dataset_info()
    assert {k: info[k] for k in recorded} == recorded and info["protocol"] == "synthetic"


def test_training_data_refuses_an_unknown_image_encoding(tmp_path):
    with pytest.raises(ValueError, match="image_encoding 'rec2020'"):
        TrainingData.load(_grey_dataset(tmp_path / "data", image_encoding="rec2020"))
