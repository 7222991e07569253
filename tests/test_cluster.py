"""A real single-node SLURM cluster on this machine runs part of the smoke pipeline through the slurm profile.

Installs SLURM + munge from Debian if needed (root only), starts the daemons, runs Snakemake with a copy of
``profiles/slurm`` fitted to this node (GPU requests dropped, threads and memory capped) up to the
assembled DKO front end (including the parallel ``optimize_metasurface`` shard jobs), checks the results and
that the jobs went through sbatch, then stops every daemon by PID, all under hard time limits.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.workflow, pytest.mark.cluster]

STATE = Path("/tmp/dko-slurm-test")


def _daemon_pids() -> dict[str, int]:
    pids = {}
    for name in ("slurmctld", "slurmd", "munged"):
        file = STATE / "run" / f"{name}.pid"
        if file.is_file():
            pids[name] = int(file.read_text().split()[0])
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().split()[2] != "Z"


@pytest.fixture
def slurm_cluster(repo_root):
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the local SLURM cluster needs root and apt-get")
    env = dict(os.environ, DKO_SLURM_DIR=str(STATE))
    script = repo_root / "scripts" / "slurm-local.sh"
    start = subprocess.run(["timeout", "-s", "KILL", "300", str(script), "start"], env=env,
                           capture_output=True, text=True)
    pids = _daemon_pids()
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield dict(env, SLURM_CONF=str(STATE / "slurm.conf"))
    finally:
        subprocess.run(["timeout", "-s", "KILL", "60", str(script), "stop"], env=env, capture_output=True)
        still = {name: pid for name, pid in pids.items() if _alive(pid)}
        assert not still, f"daemons left running: {still}"


def _local_profile(repo_root: Path, tmp_path: Path, cpus: int = 1, mem_mb: int = 1500) -> Path:
    """profiles/slurm as is, except what this 2-CPU node without GPUs cannot grant: no GPU requests,
    threads capped at ``cpus`` and memory at ``mem_mb`` per job (so shard jobs run side by side)."""
    profile = yaml.safe_load((repo_root / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert profile["set-resources"]["optimize_metasurface"]["gpu"] == 1  # the real profile asks for GPUs
    profile["set-threads"] = {rule: min(n, cpus) for rule, n in profile["set-threads"].items()}
    for res in profile["set-resources"].values():
        res.pop("gpu", None)
        res["mem_mb"] = min(res["mem_mb"], mem_mb)
        res["runtime"] = min(res["runtime"], 30)
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def test_smoke_pipeline_through_slurm(slurm_cluster, tmp_path, repo_root, venv_bin):
    """Data, meta-atoms, stage 1, kernel extraction, the parallel optimize_metasurface shards and the
    assembled DKO front end, every job an sbatch job (a representative part of the smoke DAG)."""
    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    raw["experiment"] = "slurm_smoke"
    cfg_path = tmp_path / "smoke_slurm.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    exp = tmp_path / "results" / "slurm_smoke"
    has_dko = (repo_root / "workflow" / "rules" / "dko.smk").is_file()
    targets = [str(exp / "dko" / "frontend.npz")] if has_dko else []
    env = dict(slurm_cluster, PATH=f"{venv_bin}:{os.environ['PATH']}")
    proc = subprocess.run(["timeout", "-s", "KILL", "900", str(venv_bin / "snakemake"), *targets, "--workflow-profile",
                           str(_local_profile(repo_root, tmp_path)), "--configfile", str(cfg_path), "--directory",
                           str(repo_root), "--slurm-logdir", str(tmp_path / "slurm_logs")],
                          cwd=repo_root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (exp / "data" / "meta.json").is_file()
    # every job ran as a SLURM job: the executor keeps one log per job under --slurm-logdir
    logdir = tmp_path / "slurm_logs"
    logs = sorted(p.relative_to(logdir).parts[0] for p in logdir.rglob("*.log"))
    assert "rule_prepare_dataset" in logs, logs
    assert "Submitted batch job" in proc.stdout + proc.stderr or "SLURM run ID" in proc.stdout + proc.stderr
    if has_dko:
        n_shards = -(-raw["network"]["base_width"] // raw["dko"]["shard_size"])
        assert n_shards >= 2, "the smoke config should optimise at least two shards in parallel jobs"
        shard_logs = list((logdir / "rule_optimize_metasurface").rglob("*.log"))
        assert len(shard_logs) == n_shards, shard_logs
        for shard in range(n_shards):
            assert (exp / "dko" / "shards" / f"shard_{shard}.pt").stat().st_size > 0
            assert json.loads((exp / "dko" / "shards" / f"shard_{shard}_budget.json").read_text())["steps"] >= 1
        assert {"rule_train_electronic", "rule_extract_kernels", "rule_assemble_frontend"} <= set(logs), logs
        with np.load(exp / "dko" / "frontend.npz") as front:
            assert front["psfs"].shape[1] == front["targets"].shape[0] > 0
            assert np.isfinite(front["psfs"]).all()
