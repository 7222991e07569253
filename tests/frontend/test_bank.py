"""The kernel bank (dko.frontend.bank): conv1 -> optical elements, sub-banks and replaced fields, the bank file,
shards."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dko.depth.model import DepthNet
from dko.frontend import (KernelBank, build_kernel_bank, extract_kernel_bank, load_kernel_bank, plot_kernel_bank,
                          save_kernel_bank, shards)

WLS = [6.4e-7, 5.5e-7, 4.6e-7]
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


def _model():
    torch.manual_seed(0)
    return DepthNet(blocks_per_stage=(1, 1, 1, 1), base_width=4, conv1_kernel=5, norm_mean=0.4, norm_std=0.2)


def test_kernel_bank_fields(conv):
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias)
    folded = conv.weight.detach() / STD[None, :, None, None]
    n_parts = int((folded > 0).flatten(2).any(-1).sum() + (folded < 0).flatten(2).any(-1).sum())
    assert bank.n_elements == n_parts
    assert torch.all(bank.targets >= 0)
    torch.testing.assert_close(bank.targets.sum(dim=(-2, -1)), torch.ones(bank.n_elements, dtype=torch.float64))
    torch.testing.assert_close(bank.folded_weight(), folded)
    # output channel 0 is all-positive: exactly one element per input channel, all with sign +1
    sel = bank.out_channel == 0
    assert int(sel.sum()) == 3 and torch.all(bank.sign[sel] == 1)
    torch.testing.assert_close(bank.wavelength_m, torch.tensor(WLS, dtype=torch.float64)[bank.in_channel])
    expected_bias = conv.bias.detach() - (folded.sum(dim=(-2, -1)) * MEAN).sum(dim=1)
    torch.testing.assert_close(bank.bias, expected_bias)
    # rotation by 180 degrees: a single weight at (row 0, col 1) lands at (k-1, k-2)
    w = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    w[0, 0, 0, 1] = 2.0
    single = build_kernel_bank(w, 0.0, 1.0, [5.5e-7])
    assert single.n_elements == 1 and float(single.gains[0]) == 2.0
    assert float(single.targets[0, 6, 5]) == 1.0
    assert isinstance(single, KernelBank) and single.to(dtype=torch.float32).targets.dtype == torch.float32


def test_to_keeps_integer_channels_and_float64_wavelengths(conv):
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias).to(dtype=torch.float32)
    assert bank.targets.dtype == bank.gains.dtype == bank.bias.dtype == torch.float32
    assert bank.out_channel.dtype == bank.in_channel.dtype == torch.long and bank.wavelength_m.dtype == torch.float64
    assert (bank.stride, bank.padding, bank.n_out, bank.n_in) == (2, 3, 6, 3)


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([3, 5, 7]), n_out=st.integers(1, 4), n_in=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_bank_reconstructs_folded_weight(k, n_out, n_in, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, k, k, dtype=torch.float64, generator=gen)
    w[w.abs() < 0.3] = 0.0
    std = 0.1 + torch.rand(n_in, dtype=torch.float64, generator=gen)
    if not torch.any(w != 0):
        return
    bank = build_kernel_bank(w, 0.5, std, WLS[:n_in])
    torch.testing.assert_close(bank.folded_weight(), w / std[None, :, None, None])
    assert torch.all(bank.gains > 0)


def test_build_errors(conv):
    with pytest.raises(ValueError, match="wavelengths_m"):
        build_kernel_bank(conv.weight, MEAN, STD, WLS[:2])
    with pytest.raises(ValueError, match="norm_std"):
        build_kernel_bank(conv.weight, MEAN, torch.tensor([1.0, 0.0, 1.0]), WLS)
    with pytest.raises(ValueError, match="all zero"):
        build_kernel_bank(torch.zeros(1, 3, 3, 3), 0.0, 1.0, WLS)


def test_replace_changes_only_the_named_fields(conv):
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias)
    gains = bank.gains * 2.0
    bias = torch.zeros_like(bank.bias)
    other = bank.replace(gains=gains, bias=bias)
    assert other.gains is gains and other.bias is bias
    for name in ("targets", "sign", "out_channel", "in_channel", "wavelength_m", "pad_value"):
        assert getattr(other, name) is getattr(bank, name), name
    assert (other.stride, other.padding, other.n_out, other.n_in) == (bank.stride, bank.padding, bank.n_out, bank.n_in)
    torch.testing.assert_close(other.folded_weight(), 2.0 * bank.folded_weight())
    assert bank.gains is not gains  # the bank itself is unchanged (frozen)
    with pytest.raises(TypeError, match="no field"):
        bank.replace(gain=gains)
    with pytest.raises(ValueError, match="gains"):
        bank.replace(gains=gains[:-1])  # one gain per element
    with pytest.raises(ValueError, match="bias"):
        bank.replace(bias=torch.zeros(bank.n_out + 1))


def test_subset_selects_elements_in_the_given_order(conv):
    bank = build_kernel_bank(conv.weight, MEAN, STD, WLS, bias=conv.bias)
    index = [5, 0, 3]
    sub = bank.subset(index)
    assert sub.n_elements == 3
    for name in ("targets", "gains", "sign", "out_channel", "in_channel", "wavelength_m"):
        assert torch.equal(getattr(sub, name), getattr(bank, name)[torch.tensor(index)]), name
    assert torch.equal(sub.bias, bank.bias) and torch.equal(sub.pad_value, bank.pad_value)
    assert (sub.stride, sub.padding, sub.n_out, sub.n_in) == (bank.stride, bank.padding, bank.n_out, bank.n_in)
    assert torch.equal(bank.subset(torch.tensor([2])).targets, bank.targets[2:3])
    assert bank.subset([]).n_elements == 0
    with pytest.raises(ValueError, match="out of range"):
        bank.subset([bank.n_elements])
    with pytest.raises(ValueError, match="out of range"):
        bank.subset([-1])


def test_extraction_round_trip_reconstructs_folded_weight(tmp_path):
    model = _model()
    bank = extract_kernel_bank(model, [6.3e-7, 5.3e-7, 4.6e-7])
    path = save_kernel_bank(bank, tmp_path / "bank.pt", source="test")
    loaded, info = load_kernel_bank(path)
    assert info == {"source": "test"}
    folded = model.conv1.weight.detach() / 0.2
    assert torch.allclose(loaded.folded_weight(), folded, atol=1e-6)
    assert torch.allclose(loaded.targets.sum(dim=(-2, -1)), torch.ones(loaded.n_elements), atol=1e-5)
    assert loaded.stride == 2 and loaded.padding == 2
    # folded bias: -sum(W') * mean per output channel
    assert torch.allclose(loaded.bias, -(folded.sum(dim=(1, 2, 3)) * 0.4), atol=1e-5)
    out = plot_kernel_bank(loaded, tmp_path / "k.png")
    assert out.stat().st_size > 0
    with pytest.raises(ValueError, match="does not exist"):
        load_kernel_bank(tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="dko.kernelbank"):
        load_kernel_bank(tmp_path / "other.pt")


def test_shards_cover_elements_in_order():
    bank = extract_kernel_bank(_model(), [6.3e-7, 5.3e-7, 4.6e-7])
    parts = shards(bank, 3)
    assert len(parts) == 2  # ceil(4 / 3)
    assert torch.equal(torch.cat(parts), torch.arange(bank.n_elements))
    assert set(bank.out_channel[parts[1]].tolist()) == {3}
    with pytest.raises(ValueError, match="shard_size"):
        shards(bank, 0)
