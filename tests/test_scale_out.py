"""Scale-out configs and profiles: config/paper.yaml builds the paper-scale DAG, config/seeds.yaml is the default
config swept over seeds, and the SLURM profile sizes every rule of the workflow."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dko.config import config_from_dict
from dko.sweep import sweep_points

pytestmark = pytest.mark.workflow


def _dry_run(venv_bin: Path, repo_root: Path, cfg_path: Path, *extra: str) -> str:
    proc = subprocess.run([str(venv_bin / "snakemake"), "-n", "--cores", "2", "--configfile", str(cfg_path),
                           "--directory", str(repo_root), *extra], cwd=repo_root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _job_counts(text: str) -> dict[str, int]:
    block = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def _paper(tmp_path: Path, repo_root: Path) -> Path:
    raw = yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())
    root = tmp_path / "kitti"  # validation only needs the folder; a dry run reads no image
    root.mkdir()
    raw["data"]["root"] = str(root)
    raw["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_paper_config_is_the_papers_scale(tmp_path, repo_root):
    cfg = config_from_dict(yaml.safe_load(_paper(tmp_path, repo_root).read_text()))
    assert cfg.network.blocks_per_stage == (2, 2, 2, 2) and cfg.network.base_width == 64  # ResNet-18
    assert (cfg.data.source, cfg.data.height, cfg.data.width) == ("kitti", 192, 640)
    assert cfg.optics.n_superpixels == 1025 and cfg.optics.superpixel_m == pytest.approx(2.5e-6)
    assert cfg.optics.sensor_distance_m == pytest.approx(0.01) and cfg.optics.pixel_pitch_m == pytest.approx(2.74e-6)
    assert cfg.network.base_width * len(cfg.optics.wavelengths_m) * 2 == 384
    assert cfg.dko.steps == 500 and cfg.device == "auto"


def test_paper_dag_builds(tmp_path, repo_root, venv_bin):
    counts = _job_counts(_dry_run(venv_bin, repo_root, _paper(tmp_path, repo_root)))
    cfg = yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())
    assert counts["optimize_metasurface"] == 64 // cfg["dko"]["shard_size"] == 16
    assert counts["train_e2e"] == len(cfg["e2e"]["variants"]) == 2
    # electronic, mean, rowmean, dko x 4 (faithful clean / noisy, layered, cheap), e2e x 2 x (clean, noisy, cheap)
    assert counts["evaluate"] == 13
    for rule in ("prepare_dataset", "metaatom_library", "train_electronic", "extract_kernels", "assemble_frontend",
                 "faithful_fidelity", "compare"):
        assert counts[rule] == 1, rule
    assert counts["metasurface_gds"] == counts["faithful_frontend"] == 3  # DKO's design and each E2E variant's


def test_paper_dag_without_data_root_is_rejected(tmp_path, repo_root, venv_bin):
    raw = yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())
    raw["data"]["root"] = str(tmp_path / "no_such_kitti")
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([str(venv_bin / "snakemake"), "-n", "--cores", "1", "--configfile", str(path), "--directory",
                           str(repo_root)], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "data.root" in proc.stdout + proc.stderr


def test_seeds_config_is_the_default_swept_over_seeds(tmp_path, repo_root, venv_bin):
    default = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    seeds = yaml.safe_load((repo_root / "config" / "seeds.yaml").read_text())
    grid = seeds.pop("sweep")["grid"]
    assert list(grid) == ["seed"] and len(set(grid["seed"])) >= 3
    assert seeds.pop("experiment") == "seeds" and default.pop("experiment") == "default"
    assert seeds == default  # nothing else differs from the default config
    points = sweep_points(config_from_dict(yaml.safe_load((repo_root / "config" / "seeds.yaml").read_text())).to_dict())
    assert len(points) == len(grid["seed"])
    raw = yaml.safe_load((repo_root / "config" / "seeds.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(raw))
    text = _dry_run(venv_bin, repo_root, path)
    counts = _job_counts(text)
    assert counts["train_electronic"] == counts["compare"] == len(grid["seed"]) and counts["compare_sweep"] == 1
    assert f"{tmp_path}/results/seeds/compare/sweep_summary.csv" in text


def test_slurm_profile_sizes_every_rule(tmp_path, repo_root, venv_bin):
    profile = yaml.safe_load((repo_root / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert "cpus_per_task" not in profile["default-resources"]  # it would override the threads below
    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw["sweep"] = {"grid": {"seed": [0, 1]}}  # a sweep, so that compare_sweep exists too
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    listed = subprocess.run([str(venv_bin / "snakemake"), "--list-rules", "--configfile", str(path), "--directory",
                             str(repo_root)], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    rules = {line.strip() for line in listed.stdout.splitlines() if line.strip()} - {"all"}
    assert set(profile["set-resources"]) == rules and set(profile["set-threads"]) == rules
    for rule, res in profile["set-resources"].items():
        assert res["mem_mb"] > 0 and res["runtime"] > 0, rule
    for rule in ("train_electronic", "optimize_metasurface", "train_e2e"):
        assert profile["set-resources"][rule].get("gpu") == 1, rule
    # the paper DAG with this profile's resources (dry run: nothing is submitted)
    text = _dry_run(venv_bin, repo_root, _paper(tmp_path, repo_root), "--workflow-profile", "profiles/slurm")
    assert re.search(r"rule train_e2e:.*?resources: [^\n]*gpu=1", text, re.S)


def test_compare_follows_disabled_stages(tmp_path, repo_root, venv_bin):
    """With no E2E variant, compare still runs and needs no E2E file (it gathers what dko.catalogue.evaluated_models lists)."""
    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    raw.setdefault("e2e", {})["variants"] = []
    path = tmp_path / "no_e2e.yaml"
    path.write_text(yaml.safe_dump(raw))
    text = _dry_run(venv_bin, repo_root, path)
    counts = _job_counts(text)
    assert counts["compare"] == 1 and "train_e2e" not in counts
    compare_block = text.split("rule compare:", 1)[1].split("\n\n", 1)[0]
    assert "/evaluate/dko/metrics.json" in compare_block and "/e2e/" not in compare_block
