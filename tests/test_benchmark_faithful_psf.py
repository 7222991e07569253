"""benchmarks/faithful_psf.py and benchmarks/metaatom_convergence.py at toy size: they run and write what they
print (no timing asserted)."""

import json
import subprocess
import sys

import yaml


def test_faithful_psf_benchmark_runs_on_a_toy_geometry(tmp_path, repo_root):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"optics": {"n_superpixels": 24, "superpixel_m": 1.2e-6, "psf_size_px": 9,
                                                 "sensor_distance_m": 6.0e-5, "pixel_pitch_m": 2.74e-6}}))
    out = tmp_path / "faithful_psf.json"
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "faithful_psf.py"), "--config", str(config),
                           "--elements", "2", "--repeats", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["throughput"]
    assert len(rows) == 6 and {r["field_angle_x_deg"] for r in rows} == {0.0, 41.0}  # 3 wavelengths x 2 angles
    assert all(r["ratio"] > 0 and r["full_grid_ratio"] > 0 for r in rows)
    variants = {r["variant"]: r for r in result["terms"]}
    assert variants["faithful (all terms)"]["rel_l2_vs_faithful"] == 0.0
    ledger = result["faithful_ledger"]
    assert abs(ledger["incident"] - 1.0) < 1e-9 and 0 < ledger["window"] <= ledger["transmitted"] <= 1.0


def test_metaatom_convergence_benchmark_quick_mode(tmp_path, repo_root):
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "metaatom_convergence.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dphase median" in proc.stdout and "seconds per solve" in proc.stdout
