"""Recovery after a kill: real signals sent to real Snakemake runs of a tiny config (issue 13, section 6).

- kill -9 of Snakemake and its job leaves the lock, and a plain ``--rerun-incomplete`` stops with a
  LockException; ``make run`` (scripts/unlock_stale.py, then Snakemake) recovers by itself, but refuses while
  a Snakemake still runs there;
- SIGTERM to Snakemake lets the running job finish, and that job counts as done for the next run.
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.workflow

EXP = "recovery"
WAIT_S = 300  # generous bound on a job's start (a loaded 2-core machine takes ~10 s)


def _load_script(repo_root: Path):
    spec = importlib.util.spec_from_file_location("unlock_stale", repo_root / "scripts" / "unlock_stale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _config(tmp_path: Path, repo_root: Path) -> Path:
    raw = yaml.safe_load((repo_root / "config" / "smoke.yaml").read_text())
    raw.update(results_dir=str(tmp_path / "results"), experiment=EXP, tracking={"enabled": False})
    path = tmp_path / "recovery.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _snakemake_cmd(venv_bin: Path, repo_root: Path, cfg: Path, *args: str) -> list[str]:
    return [str(venv_bin / "snakemake"), "--directory", str(repo_root), "--cores", "2", "--configfile", str(cfg),
            *args]


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _make_run(repo_root: Path, cfg: Path, target: Path) -> subprocess.CompletedProcess:
    """``make run CONFIG=... TARGETS=...`` as a user types it, with this interpreter's venv (never reinstalled)."""
    venv = Path(sys.prefix)
    return _run(["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed", "run",
                 f"CONFIG={cfg}", f"TARGETS={target}"], repo_root)


def _start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so that a signal reaches Snakemake and its job, as a kill would)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until ``path`` exists (the job runs); fails if Snakemake ends first."""
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"{path.name} never appeared (snakemake rc {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _locked_files(repo_root: Path) -> set[str]:
    locks = repo_root / ".snakemake" / "locks"
    return {line for f in locks.glob("*.lock") for line in f.read_text().split()} if locks.is_dir() else set()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, repo_root, venv_bin):
    """A tiny experiment whose dataset is built; stage 1 and the evaluations are left to the tests."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    tmp_path = tmp_path_factory.mktemp("recovery")
    cfg = _config(tmp_path, repo_root)
    exp = tmp_path / "results" / EXP
    proc = _run(_snakemake_cmd(venv_bin, repo_root, cfg, "--", str(exp / "data" / "meta.json")), repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path, cfg, exp


def test_make_run_recovers_after_kill_9(prepared, repo_root, venv_bin):
    """A live run's lock is left alone; after kill -9, plain Snakemake is locked out and `make run` recovers."""
    tmp_path, cfg, exp = prepared
    model = exp / "stage1" / "model.pt"
    log = tmp_path / "killed.log"
    first = _start(_snakemake_cmd(venv_bin, repo_root, cfg, "--rerun-incomplete", "--", str(model)), repo_root, log)
    try:
        _wait_for(exp / "logs" / "train_electronic.log", first, log)
        os.killpg(first.pid, signal.SIGSTOP)  # keep Snakemake and its job alive (and unfinished) for the check
        live = _make_run(repo_root, cfg, model)
        assert live.returncode != 0, live.stdout + live.stderr
        assert "is held by a running Snakemake" in live.stderr and f"pid {first.pid}: " in live.stderr, live.stderr
        assert first.poll() is None and str(model) in _locked_files(repo_root)  # nothing killed, lock kept
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 of Snakemake and its job, mid-job
        first.wait(timeout=60)
    finally:
        _stop(first)
    assert str(model) in _locked_files(repo_root) and not model.exists()

    plain = _run(_snakemake_cmd(venv_bin, repo_root, cfg, "--rerun-incomplete", "--", str(model)), repo_root)
    assert plain.returncode != 0 and "LockException" in plain.stderr, plain.stderr[-3000:]

    recovered = _make_run(repo_root, cfg, model)
    assert recovered.returncode == 0, recovered.stdout[-3000:] + recovered.stderr[-3000:]
    assert "unlock_stale: removed a stale Snakemake lock" in recovered.stdout
    assert model.is_file() and (exp / "stage1" / "curves.png").is_file()
    assert str(model) not in _locked_files(repo_root)
    again = _run(_snakemake_cmd(venv_bin, repo_root, cfg, "-n", "--", str(model)), repo_root)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_job_finished_after_sigterm_counts_as_done(prepared, repo_root, venv_bin):
    """SIGTERM to Snakemake: it waits for the running job, keeps its outputs, and the next run does not redo it."""
    tmp_path, cfg, exp = prepared
    # stage 1 (seconds, not the sub-second evaluate of a reference predictor): Snakemake handles the signal
    # while the job still runs, whichever test ran before
    model = exp / "stage1" / "model.pt"
    job_log = exp / "logs" / "train_electronic.log"
    job_log.unlink(missing_ok=True)
    log = tmp_path / "sigterm.log"
    proc = _start(_snakemake_cmd(venv_bin, repo_root, cfg, "--forcerun", "train_electronic", "--", str(model)),
                  repo_root, log)
    try:
        _wait_for(job_log, proc, log)
        os.killpg(proc.pid, signal.SIGSTOP)  # the job cannot finish before Snakemake has the signal
        os.kill(proc.pid, signal.SIGTERM)  # `kill <pid of snakemake>`
        sent = datetime.now()
        os.killpg(proc.pid, signal.SIGCONT)
        rc = proc.wait(timeout=600)
    finally:
        _stop(proc)
    out = log.read_text()
    assert rc != 0 and "At least one job did not complete successfully" in out  # Snakemake's wording
    assert "Will exit after finishing currently running jobs" in out, out[-3000:]
    # the job was in flight: it finished after the signal (Snakemake prints its message only when it wakes up)
    finished = [line for line in job_log.read_text().splitlines() if "rule train_electronic finished in" in line]
    assert finished and datetime.strptime(finished[0][:23], "%Y-%m-%d %H:%M:%S,%f") > sent, job_log.read_text()
    assert model.is_file()
    again = _run(_snakemake_cmd(venv_bin, repo_root, cfg, "-n", "--rerun-incomplete", "--", str(model)), repo_root)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


@pytest.fixture
def fake_snakemake(tmp_path):
    """A live process whose command line reads ``python .../snakemake --directory <tmp_path>/work``."""
    workdir = tmp_path / "work"
    (workdir / ".snakemake" / "locks").mkdir(parents=True)
    exe = tmp_path / "bin" / "snakemake"
    exe.parent.mkdir()
    exe.write_text("import time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(exe), "--directory", str(workdir)], cwd=tmp_path)
    yield workdir, proc
    proc.kill()
    proc.wait(timeout=30)


def test_lock_of_a_live_run_is_kept(repo_root, tmp_path, fake_snakemake, capsys):
    """With a Snakemake alive in the directory: exit 1 naming it when the lock may be this experiment's,
    exit 0 (lock kept, Snakemake decides) when the lock names only another experiment's files."""
    script = _load_script(repo_root)
    workdir, holder = fake_snakemake
    cfg = _config(tmp_path, repo_root)
    lock = workdir / ".snakemake" / "locks" / "0.output.lock"
    lock.write_text(f"{tmp_path}/results/other/stage1/model.pt\n")
    assert script.main(["--configfile", str(cfg), "--directory", str(workdir)]) == 0
    assert lock.is_file()
    lock.write_text(f"{tmp_path}/results/{EXP}/stage1/model.pt\n")
    assert script.main(["--configfile", str(cfg), "--directory", str(workdir)]) == 1
    assert f"pid {holder.pid}" in capsys.readouterr().err and lock.is_file() and holder.poll() is None


@pytest.mark.parametrize("argv, cwd, works", [
    (["/v/bin/python", "/v/bin/snakemake", "--cores", "2"], "/w", True),
    (["/v/bin/snakemake", "--directory", "/w", "-c2"], "/elsewhere", True),
    (["/v/bin/python", "-m", "snakemake", "--directory=/w"], "/", True),
    (["snakemake", "-d", "w"], "/", True),
    (["/v/bin/python", "/v/bin/snakemake", "--cores", "2"], "/other", False),
    (["/v/bin/python", "/v/bin/snakemake", "-n", "--cores", "2"], "/w", False),  # dry runs take no lock
    (["/v/bin/python", "/v/bin/snakemake", "-np"], "/w", False),
    (["timeout", "60", "/v/bin/snakemake"], "/w", False),  # only its snakemake child counts
    (["/v/bin/python", "/w/.snakemake/scripts/tmpab12.train_electronic.py"], "/w", True),  # a job, orphan or not
    (["/v/bin/python", "train.py"], "/w", False),
    (["tail", "-f", "/w/.snakemake/log/run.snakemake.log"], "/w", False),
])
def test_works_in(repo_root, argv, cwd, works):
    script = _load_script(repo_root)
    assert script.works_in(argv, Path(cwd), Path("/w")) is works
