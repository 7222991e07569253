"""Snakemake level: bad input fails while the Snakefile is read (no DAG, no job); documented --config works."""

import json
import re
import subprocess

import pytest

SMOKE = "config/smoke.yaml"


def _snakemake(venv_bin, repo_root, *args, snakefile=None):
    cmd = [str(venv_bin / "snakemake"), "-n", "--cores", "1", "--directory", str(repo_root), *args]
    if snakefile is not None:
        cmd += ["--snakefile", str(snakefile)]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


BAD_FILES = [
    ("train:\n  lr: .nan\n", "config key 'train.lr': nan is not a finite number"),
    ("train:\n  steps: 12\n  lr: 0.001\n  steps: 1000000\n", "key 'train.steps' is given twice (line 3 and line 5)"),
    ("optics:\n  wavelengths_m: [6.4e-7, 5.5e-7]\n", "config key 'optics.wavelengths_m' has 2 entries"),
    ('experiment: ".."\n', "config key 'experiment' ('..')"),
    ("tracking:\n  uri: localhost:5000\n", "config key 'tracking.uri': 'localhost:5000'"),
]


@pytest.mark.parametrize("body, message", BAD_FILES, ids=["nan", "duplicate", "wavelengths", "dotdot", "uri"])
def test_bad_config_file_fails_before_the_dag(tmp_path, repo_root, venv_bin, body, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"results_dir: {tmp_path / 'results'}\n" + body)
    rc, out = _snakemake(venv_bin, repo_root, "--configfile", str(cfg))
    assert rc != 0
    assert "invalid configuration" in out and message in out, out[-3000:]
    if "twice" in message:
        assert str(cfg) in out
    assert "Building DAG of jobs" not in out
    assert not (tmp_path / "results").exists()


def test_bad_cli_override_fails_before_the_dag(repo_root, venv_bin):
    rc, out = _snakemake(venv_bin, repo_root, "--configfile", SMOKE, "--config", "train={lr: .nan}")
    assert rc != 0 and "config key 'train.lr': nan is not a finite number" in out, out[-3000:]
    assert "Building DAG of jobs" not in out


def _readme_text(repo_root) -> str:
    return " ".join((repo_root / "README.md").read_text().split()) + " ".join(
        (repo_root / "config" / "README.md").read_text().split())


# The --config examples of README.md and config/README.md, verbatim (placeholders filled in).
README_OVERRIDES = [
    ("experiment=rough 'train={conv1_smoothness: 0.0}'", ["experiment=rough", "train={conv1_smoothness: 0.0}"]),
    ("--config seed=3", ["seed=3"]),
    ("--config tracking='{uri: http://<head-node>:5000}'", ["tracking={uri: http://head-node:5000}"]),
]


def test_readme_config_examples_are_the_tested_ones(repo_root):
    text = _readme_text(repo_root)
    for doc, _ in README_OVERRIDES:
        assert doc in text, f"README no longer shows {doc!r}: update README_OVERRIDES"


def test_readme_config_overrides_arrive_typed(tmp_path, repo_root, venv_bin):
    """The README's overrides pass validation, and the values the rules see have the schema's types."""
    wrapper = tmp_path / "Snakefile"
    wrapper.write_text(f'include: "{repo_root / "Snakefile"}"\n'
                       'import json, sys\n'
                       'print("DKO_RESOLVED " + json.dumps(config), file=sys.stderr)\n')
    args = [a for _, entries in README_OVERRIDES for a in entries] + ["experiment=007"]
    rc, out = _snakemake(venv_bin, repo_root, "--configfile", SMOKE, "--config", *args, snakefile=wrapper)
    assert rc == 0, out[-3000:]
    match = re.search(r"^DKO_RESOLVED (.*)$", out, re.M)
    assert match, out[-3000:]
    cfg = json.loads(match.group(1))
    smoothness = cfg["train"]["conv1_smoothness"]
    assert smoothness == 0.0 and isinstance(smoothness, float)
    assert cfg["seed"] == 3 and isinstance(cfg["seed"], int)
    assert cfg["experiment"] == "007"
    assert cfg["tracking"]["uri"] == "http://head-node:5000"
    assert cfg["train"]["steps"] == 12  # the rest of config/smoke.yaml is kept


def test_readme_example_dry_run_verbatim(repo_root, venv_bin):
    """`snakemake -n --configfile config/smoke.yaml --config 'train={conv1_smoothness: 0.0}'` plans the DAG."""
    rc, out = _snakemake(venv_bin, repo_root, "--configfile", SMOKE, "--config", "train={conv1_smoothness: 0.0}")
    assert rc == 0, out[-3000:]
    assert "Job stats" in out
