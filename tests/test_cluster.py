"""A real single-node SLURM cluster on this machine runs the smoke pipeline through the slurm profile.

Installs SLURM + munge from Debian if needed (root only), starts the daemons, runs Snakemake with
``--profile workflow/profiles/slurm``, checks the results and that the jobs went through sbatch,
then stops every daemon by PID, all under hard time limits.
"""

import os
import shutil
import subprocess
from pathlib import Path

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


def test_smoke_pipeline_through_slurm(slurm_cluster, tmp_path, repo_root, venv_bin):
    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    raw["experiment"] = "slurm_smoke"
    cfg_path = tmp_path / "smoke_slurm.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    env = dict(slurm_cluster, PATH=f"{venv_bin}:{os.environ['PATH']}")
    proc = subprocess.run(["timeout", "-s", "KILL", "900", str(venv_bin / "snakemake"), "--profile",
                           "workflow/profiles/slurm", "--configfile", str(cfg_path), "--directory", str(repo_root),
                           "--slurm-logdir", str(tmp_path / "slurm_logs")],
                          cwd=repo_root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    exp = tmp_path / "results" / "slurm_smoke"
    assert (exp / "data" / "meta.json").is_file()
    # every job ran as a SLURM job: the executor keeps one log per job under --slurm-logdir
    logs = sorted(p.relative_to(tmp_path / "slurm_logs").parts[0] for p in (tmp_path / "slurm_logs").rglob("*.log"))
    assert "rule_prepare_dataset" in logs, logs
    assert "Submitted batch job" in proc.stdout + proc.stderr or "SLURM run ID" in proc.stdout + proc.stderr
