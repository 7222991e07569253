import torch

from dko.depth.model import DepthNet
from dko.kernels import extract_kernel_bank, load_kernel_bank, plot_kernel_bank, save_kernel_bank, shards


def _model():
    torch.manual_seed(0)
    return DepthNet(blocks_per_stage=(1, 1, 1, 1), base_width=4, conv1_kernel=5, norm_mean=0.4, norm_std=0.2)


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


def test_shards_cover_elements_in_order():
    bank = extract_kernel_bank(_model(), [6.3e-7, 5.3e-7, 4.6e-7])
    parts = shards(bank, 3)
    assert len(parts) == 2  # ceil(4 / 3)
    assert torch.equal(torch.cat(parts), torch.arange(bank.n_elements))
    assert set(bank.out_channel[parts[1]].tolist()) == {3}
