"""Remove a Snakemake lock left behind by a killed run, never one that a live Snakemake holds.

Run by ``make run`` before Snakemake (with the venv's python):

    python scripts/unlock_stale.py --configfile CONFIG [--directory DIR]

A Snakemake killed with SIGKILL (or by a crash, or a power loss) leaves ``DIR/.snakemake/locks/``
behind, and every later run of the same files stops with a ``LockException``. This script:

- exits 0 silently when there is no lock;
- when no Snakemake process works in ``DIR`` (read from ``/proc/<pid>/cmdline`` and ``/proc/<pid>/cwd``;
  dry runs do not count, job scripts run from ``DIR/.snakemake/scripts/`` do), runs
  ``snakemake --unlock --configfile CONFIG`` there and says so in one line;
- when one does, it leaves the lock alone, kills nothing, and exits 1 naming the process, unless no lock
  names a file of CONFIG's experiment (``<results_dir>/<experiment>``): then the lock is that other run's
  and does not concern this one (exit 0, Snakemake itself checks the overlap).

Linux only (``/proc``); elsewhere it only reports that it cannot tell and leaves the lock.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
DRY_RUN_FLAGS = {"--dry-run", "--dryrun"}
SHORT_DRY_RUN = re.compile(r"^-[A-Za-z]*n[A-Za-z]*$")  # -n, -np, -pn
DIRECTORY_FLAGS = ("--directory", "-d")


@dataclass(frozen=True)
class Holder:
    """A live process that works in the Snakemake working directory."""

    pid: int
    cmdline: str


def lock_files(workdir: Path) -> list[Path]:
    """The lock files of Snakemake's working directory ``workdir`` (none when it is not locked)."""
    lockdir = workdir / ".snakemake" / "locks"
    return sorted(lockdir.glob("*.lock")) if lockdir.is_dir() else []


def locked_paths(locks: list[Path], workdir: Path) -> set[Path]:
    """Every file named in ``locks`` (Snakemake writes one path a line, relative to ``workdir`` or absolute)."""
    paths = set()
    for lock in locks:
        try:
            lines = lock.read_text().splitlines()
        except OSError:
            continue
        paths.update(_absolute(line.strip(), workdir) for line in lines if line.strip())
    return paths


def _absolute(path: str | Path, base: Path) -> Path:
    path = Path(path)
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _is_snakemake(argv: list[str]) -> bool:
    """True for ``snakemake ...``, ``python .../snakemake ...`` and ``python -m snakemake ...``."""
    if not argv:
        return False
    if Path(argv[0]).name == "snakemake":
        return True
    if not Path(argv[0]).name.startswith("python") or len(argv) < 2:
        return False
    return Path(argv[1]).name == "snakemake" or argv[1:3] == ["-m", "snakemake"]


def _is_dry_run(argv: list[str]) -> bool:
    return any(arg in DRY_RUN_FLAGS or SHORT_DRY_RUN.match(arg) for arg in argv[1:])


def _directory_arg(argv: list[str]) -> str | None:
    """The value of ``--directory``/``-d`` in a Snakemake command line, if any."""
    for i, arg in enumerate(argv):
        if arg in DIRECTORY_FLAGS and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--directory="):
            return arg.split("=", 1)[1]
    return None


def works_in(argv: list[str], cwd: Path | None, workdir: Path) -> bool:
    """Whether the process with command line ``argv`` and current directory ``cwd`` works in ``workdir``.

    A (non-dry) Snakemake whose working directory (``--directory``, else its cwd) is ``workdir``, or a
    job script that Snakemake runs from ``workdir/.snakemake/scripts/`` (an orphan still writes its outputs).
    """
    scripts = str(workdir / ".snakemake" / "scripts") + os.sep
    if any(arg.startswith(scripts) for arg in argv[1:]):
        return True
    if not _is_snakemake(argv) or _is_dry_run(argv):
        return False
    directory = _directory_arg(argv)
    if directory is not None:
        if Path(directory).is_absolute() or cwd is not None:
            return Path(os.path.realpath(_absolute(directory, cwd or Path("/")))) == workdir
        return True  # relative --directory of an unreadable cwd: cannot rule it out
    return cwd == workdir


def _read_process(pid_dir: Path) -> tuple[list[str], Path | None] | None:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:  # gone, or not ours to read
        return None
    argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:
        cwd = Path(os.readlink(pid_dir / "cwd"))
    except OSError:
        cwd = None
    return argv, cwd


def holders(workdir: Path, proc: Path = PROC) -> list[Holder]:
    """Live processes (other than this one) that work in ``workdir``; see :func:`works_in`."""
    found = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        seen = _read_process(pid_dir)
        if seen is not None and works_in(seen[0], seen[1], workdir):
            found.append(Holder(int(pid_dir.name), " ".join(seen[0])))
    return sorted(found, key=lambda h: h.pid)


def experiment_dir(configfile: Path, workdir: Path) -> Path | None:
    """``<results_dir>/<experiment>`` of ``configfile`` (relative to ``workdir``), None if it cannot be read."""
    from dko.config import load_config  # the project's own reading of a config (needs the venv)

    try:
        cfg = load_config(configfile, check_paths=False)
    except (OSError, ValueError, TypeError):
        return None
    return _absolute(Path(cfg.results_dir) / cfg.experiment, workdir)


def concerns(paths: set[Path], exp_dir: Path | None) -> bool:
    """Whether a lock naming ``paths`` may be one of this experiment's (always, when it is unknown)."""
    return exp_dir is None or any(p == exp_dir or exp_dir in p.parents for p in paths)


def unlock(snakemake: str, configfile: Path, workdir: Path) -> int:
    """Run ``snakemake --unlock`` with this config in ``workdir``; its exit status."""
    cmd = [snakemake, "--unlock", "--directory", str(workdir), "--configfile", str(configfile)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, required=True, help="the config file of the run")
    parser.add_argument("--directory", type=Path, default=Path.cwd(), help="Snakemake's working directory")
    parser.add_argument("--snakemake", default=str(Path(sys.executable).parent / "snakemake"),
                        help="the snakemake executable (default: beside this python)")
    args = parser.parse_args(argv)
    workdir = args.directory.resolve()
    configfile = _absolute(args.configfile, Path.cwd())
    locks = lock_files(workdir)
    if not locks:
        return 0
    if not PROC.is_dir():
        print(f"unlock_stale: {workdir}/.snakemake/locks exists; cannot tell here whether a Snakemake holds it "
              "(no /proc): left in place", file=sys.stderr)
        return 0
    live = holders(workdir)
    if not live:
        status = unlock(args.snakemake, configfile, workdir)
        if status == 0:
            print(f"unlock_stale: removed a stale Snakemake lock in {workdir} (left by a killed run; "
                  "no Snakemake process works there)")
        return status
    if not concerns(locked_paths(locks, workdir), experiment_dir(configfile, workdir)):
        return 0
    running = "; ".join(f"pid {h.pid}: {h.cmdline}" for h in live)
    print(f"unlock_stale: {workdir}/.snakemake/locks is held by a running Snakemake ({running}). "
          "Wait for it to finish (or stop it, e.g. kill -TERM <pid>), then run the same command again.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
