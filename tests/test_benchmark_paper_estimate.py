"""benchmarks/paper_estimate.py at toy size: its JSON and the arithmetic of the extrapolation (no timing asserted)."""

import json
import math
import subprocess
import sys

import pytest
import yaml

TOY = {"device": "cpu", "data": {"height": 32, "width": 64},
       "network": {"blocks_per_stage": [1, 1, 1, 1], "base_width": 4, "decoder_channels": [4, 4, 4, 8, 8]},
       "train": {"steps": 10, "batch_size": 4, "warmup_steps": 1},
       "optics": {"n_superpixels": 40, "superpixel_m": 1.2e-6, "psf_size_px": 9, "sensor_distance_m": 1.0e-4},
       "dko": {"shard_size": 2, "steps": 7}}


def test_paper_estimate_extrapolates_measured_steps(tmp_path, repo_root):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(TOY))
    out = tmp_path / "results" / "benchmarks" / "estimate.json"
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "paper_estimate.py"), "--config", str(cfg),
                           "--batch", "2", "--grids", "16", "24", "--repeats", "1", "--threads", "1", "--out", str(out),
                           "--no-mlflow"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [g["grid"] for g in r["grids"]] == [32, 48] and all(g["element_step_wall_s"] > 0 for g in r["grids"])
    assert r["paper_grid"] == 80  # 40 superpixels x pad factor 2
    assert r["element_step_wall_s"] == pytest.approx(r["element_step_wall_s_per_fft_work"] * 80**2 * math.log2(80**2))
    assert (r["n_elements"], r["elements_per_shard"], r["n_shards"]) == (4 * 3 * 2, 2 * 3 * 2, 2)
    assert r["shard_job_wall_s"] == pytest.approx(r["element_step_wall_s"] * 12 * 7)
    assert r["stage2_total_wall_s"] == pytest.approx(r["element_step_wall_s"] * 24 * 7)
    assert r["stage1_total_wall_s"] == pytest.approx(r["stage1_step_wall_s"] * 10)
    assert r["stage1_step_flops"] > 0 and r["stage1_batch"] == 4 and r["stage1_measured_batch"] == 2
