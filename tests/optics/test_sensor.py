"""Sensor noise model: statistics against Poisson + Gaussian by hand, quantisation, reproducibility, gradients."""

import pytest
import torch

from dko.config import config_from_dict
from dko.optics.sensor import SensorModel, apply_sensor_noise, straight_through_round

torch.set_num_threads(2)


def stats(x):
    return float(x.mean()), float(x.var())


@pytest.mark.parametrize("differentiable", [False, True])
def test_mean_and_variance_match_shot_plus_read_noise(differentiable):
    sensor = SensorModel(full_well_e=1000.0, read_noise_e=5.0, bit_depth=16, exposure=0.5)
    signal = torch.full((400_000,), 0.6, dtype=torch.float64)
    out = apply_sensor_noise(signal, sensor, torch.Generator().manual_seed(0), differentiable=differentiable)
    mean, var = stats(out)
    electrons = 0.6 * 0.5 * 1000  # 300 e-
    # measured = electrons / (full_well * exposure): var = (300 + 25) / 500^2 (+ quantisation (1/65535/0.5)^2/12)
    expected_var = (electrons + 25.0) / (1000 * 0.5) ** 2 + (1 / 65535 / 0.5) ** 2 / 12
    assert mean == pytest.approx(0.6, abs=4 * (expected_var / signal.numel()) ** 0.5)
    assert var == pytest.approx(expected_var, rel=0.02)


def test_quantisation_and_clipping():
    sensor = SensorModel(full_well_e=1e7, read_noise_e=0.0, bit_depth=3)
    signal = torch.tensor([0.0, 0.07, 0.3, 0.55, 0.93, 1.0, 1.7])
    out = apply_sensor_noise(signal, sensor, torch.Generator().manual_seed(0))
    codes = out * 7
    torch.testing.assert_close(codes, torch.round(codes))  # on the 3-bit grid
    torch.testing.assert_close(out, torch.round(torch.clamp(signal, 0, 1) * 7) / 7)  # noise negligible at 1e7 e-
    assert sensor.levels == 7


def test_seeded_generator_is_reproducible():
    sensor = SensorModel()
    signal = torch.rand(64, 64, generator=torch.Generator().manual_seed(3))
    a = apply_sensor_noise(signal, sensor, torch.Generator().manual_seed(1))
    b = apply_sensor_noise(signal, sensor, torch.Generator().manual_seed(1))
    c = apply_sensor_noise(signal, sensor, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_differentiable_form_passes_gradients():
    sensor = SensorModel(full_well_e=1e4, read_noise_e=2.0, bit_depth=8)
    signal = torch.full((10_000,), 0.4, requires_grad=True)
    out = apply_sensor_noise(signal, sensor, torch.Generator().manual_seed(0), differentiable=True)
    levels = out.detach() * 255
    torch.testing.assert_close(levels, torch.round(levels))  # forward is quantised
    out.sum().backward()
    # straight-through rounding + reparameterised Gaussian: d out / d signal = 1 + d sqrt(n)/dn * noise / n_scale
    assert float(signal.grad.mean()) == pytest.approx(1.0, abs=0.01)
    x = torch.tensor([0.2, 1.7], requires_grad=True)
    straight_through_round(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2))
    # the exact (Poisson) form is not differentiable
    assert not apply_sensor_noise(torch.ones(3, requires_grad=True), sensor).requires_grad


def test_config_and_errors():
    cfg = config_from_dict({"sensor": {"full_well_e": 5000, "read_noise_e": 3, "bit_depth": 12}})
    sensor = SensorModel.from_config(cfg.sensor)
    assert sensor == SensorModel(full_well_e=5000.0, read_noise_e=3.0, bit_depth=12, exposure=1.0)
    with pytest.raises(ValueError, match="bit_depth"):
        SensorModel(bit_depth=0)
    with pytest.raises(ValueError, match="full_well_e"):
        SensorModel(full_well_e=-1.0)
    with pytest.raises(ValueError, match="sensor.read_noise_e"):
        config_from_dict({"sensor": {"read_noise_e": -1}})
    with pytest.raises(TypeError):
        apply_sensor_noise(torch.ones(2, dtype=torch.complex64), sensor)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sensor_on_cuda():
    sensor = SensorModel(full_well_e=1000.0, read_noise_e=5.0, bit_depth=16)
    signal = torch.full((200_000,), 0.5, device="cuda")
    out = apply_sensor_noise(signal, sensor, torch.Generator(device="cuda").manual_seed(0))
    assert out.device.type == "cuda"
    assert float(out.var()) == pytest.approx((500 + 25) / 1000**2, rel=0.03)
