"""dko.budget: the recorder measures what it says, FLOPs match a hand count, resumed totals add up."""

import json
import time

import pytest
import torch

from dko.budget import BudgetRecorder, count_flops, numeric


def test_flops_of_a_linear_layer_match_hand_count():
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)
    assert count_flops(lambda: lin(x)) == 2 * 8 * 64 * 32
    # forward + backward of the weight and input gradients: 3x the forward matmul
    x.requires_grad_(True)
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * 8 * 64 * 32


def test_recorder_times_steps_and_writes_json(tmp_path):
    rec = BudgetRecorder("unit", "cpu")
    with rec:
        for _ in range(3):
            with rec.step():
                t = time.perf_counter()
                while time.perf_counter() - t < 0.02:  # busy: CPU time accrues too
                    pass
        rec.measure_flops(lambda: torch.ones(4, 4) @ torch.ones(4, 4))
    s = rec.write(tmp_path / "budget.json")
    on_disk = json.loads((tmp_path / "budget.json").read_text())
    assert on_disk["steps"] == 3 and on_disk["name"] == "unit"
    assert s["wall_s"] >= 0.06 and s["step_wall_s"] >= 0.02 and s["cpu_s"] > 0
    assert s["flops_per_step"] == 2 * 4 * 4 * 4 and s["flops_total"] == 3 * 128
    assert s["peak_rss_mb"] > 10 and s["gpu_max_allocated_mb"] is None
    assert numeric(s)["budget_steps"] == 3.0


def test_resumed_totals_accumulate():
    first = BudgetRecorder("s", "cpu").start()
    with first.step():
        pass
    first.stop()
    state = first.state_dict()
    second = BudgetRecorder("s", "cpu")
    second.load_state_dict(state)
    with second:
        with second.step():
            pass
    s = second.summary()
    assert s["steps"] == 2 and s["segments"] == 2 and s["segment_steps"] == 1
    assert s["wall_s"] == pytest.approx(state["wall_s"] + s["segment_wall_s"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_peak_memory_on_cuda():
    rec = BudgetRecorder("gpu", "cuda")
    with rec:
        x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert rec.summary()["gpu_max_allocated_mb"] >= 64
