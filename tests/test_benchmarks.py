"""benchmarks/cost_ratio.py and benchmarks/e2e_lr_search.py at toy size: output structure (no timing asserted)."""

import csv
import json
import subprocess
import sys

import yaml

from tests.depth.conftest import write_row_dataset

TOY = {"device": "cpu", "tracking": {"enabled": False},
       "data": {"height": 32, "width": 64, "n_train": 6, "n_val": 2, "n_test": 3},
       "network": {"blocks_per_stage": [1, 1, 1, 1], "base_width": 4, "decoder_channels": [4, 4, 4, 8, 8]},
       "train": {"steps": 4, "batch_size": 2, "warmup_steps": 1},
       "optics": {"n_superpixels": 16, "superpixel_m": 1.2e-6, "psf_size_px": 9, "sensor_distance_m": 1.0e-4},
       "dko": {"shard_size": 2, "fidelity_distances_m": [10.0]}}


def _write_config(tmp_path, **extra):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({**TOY, **extra}))
    return path


def test_cost_ratio_measures_dko_job_and_e2e_in_subprocesses(tmp_path, repo_root):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "cost_ratio.py"), "--config",
                           str(_write_config(tmp_path)), "--channels", "4", "--blocks", "1", "1", "1", "1", "--decoder",
                           "4", "4", "4", "8", "8", "--batch", "2", "--height", "32", "--width", "64", "--steps", "2",
                           "--threads", "1", "--modes", "dko_job", "e2e", "--out-dir", str(out), "--no-mlflow"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "cost_ratio.json").read_text())
    by = {m["mode"]: m for m in result["measurements"]}
    assert set(by) == {"dko_job", "e2e"}
    # element counts: a shard of 2 output channels x 3 colours x 2 signs; all 4 x 3 x 2
    assert by["dko_job"]["n_elements"] == 12 and by["e2e"]["n_elements"] == 24
    for m in by.values():
        assert m["step_wall_s"] > 0 and m["peak_rss_mb"] > 0 and m["flops_per_step"] > 0 and m["steps_timed"] == 2
    assert result["ratios"]["e2e_over_dko_job_step_wall_s"] == by["e2e"]["step_wall_s"] / by["dko_job"]["step_wall_s"]
    assert by["e2e"]["flops_per_step"] > by["dko_job"]["flops_per_step"]  # more elements, and the network on top
    rows = list(csv.DictReader(open(out / "cost_ratio.csv")))
    assert [r["mode"] for r in rows] == ["dko_job", "e2e"]
    assert (out / "cost_ratio.png").stat().st_size > 5000
    assert "e2e_over_dko_job_peak_rss_mb" in proc.stdout and "e2e_over_dko_all_step_wall_s" not in result["ratios"]


def test_e2e_lr_search_picks_the_best_validation_abs_rel(tmp_path, repo_root):
    import torch

    from dko.config import load_config
    from dko.depth.checkpoint import save_depthnet
    from dko.depth.model import DepthNet

    cfg_path = _write_config(tmp_path, results_dir=str(tmp_path / "results"))
    cfg = load_config(cfg_path)
    write_row_dataset(cfg.experiment_dir / "data")
    torch.manual_seed(0)
    save_depthnet(DepthNet.from_config(cfg.network, (cfg.data.min_depth_m, cfg.data.max_depth_m)), cfg.experiment_dir / "stage1" / "model.pt")
    out = tmp_path / "lr.json"
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "e2e_lr_search.py"), "--config", str(cfg_path),
                           "--variants", "optics", "--lrs", "0.01", "0.5", "--steps", "2", "--threads", "1", "--out",
                           str(out), "--no-mlflow"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [t["lr_optics"] for t in result["trials"]] == [0.01, 0.5]
    best = min(result["trials"], key=lambda t: t["val_abs_rel"])
    assert result["best"] == {"optics": best["lr_optics"]}
    assert all(t["status"] == "ok" and t["val_abs_rel"] > 0 for t in result["trials"])


def test_dko_ablation_scores_the_fabricated_pillars_per_model_and_variant(tmp_path, repo_root):
    import torch

    from dko.config import load_config
    from dko.depth.checkpoint import save_depthnet
    from dko.depth.losses import kernel_roughness
    from dko.depth.model import DepthNet

    cfg_path = _write_config(tmp_path, results_dir=str(tmp_path / "results"))
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    model = DepthNet.from_config(cfg.network, (cfg.data.min_depth_m, cfg.data.max_depth_m))
    save_depthnet(model, tmp_path / "a.pt", config=cfg.to_dict())
    out = tmp_path / "ablation.json"
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "dko_ablation.py"), "--config", str(cfg_path),
                           "--models", str(tmp_path / "a.pt"), "--elements", "0", "5", "--steps", "3",
                           "--variants", "config", "na018_radius", "--threads", "1", "--out", str(out), "--no-mlflow"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"config", "na018_radius"} and result["steps"] == 3
    assert rows["config"]["parametrization"] == "phase" and rows["na018_radius"]["parametrization"] == "radius"
    assert rows["na018_radius"]["superpixel_m"] == 1.2e-6 and rows["na018_radius"]["efficiency_weight"] == 0.3
    half = 16 * 1.2e-6 / 2
    assert abs(rows["config"]["numerical_aperture"] - half / (half ** 2 + 1.0e-4 ** 2) ** 0.5) < 1e-12
    for r in rows.values():
        assert r["elements"] == [0, 5] and r["steps"] == 3 and len(r["rel_l2"]) == 2
        assert 0 < r["median_rel_l2"] <= r["max_rel_l2"] and 0 < r["min_energy_k"] <= r["median_energy_k"] <= 1
        assert r["conv1_smoothness"] == cfg.train.conv1_smoothness
        assert abs(r["conv1_roughness"] - float(kernel_roughness(model.conv1.weight.detach()))) < 1e-6
    assert "median rel L2" in proc.stdout
