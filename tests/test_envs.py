"""envs/dko.yaml pins exactly the versions installed here, and covers every runtime dependency."""

import importlib.metadata as md
import re

import yaml


def _pins(repo_root):
    env = yaml.safe_load((repo_root / "envs" / "dko.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return dict(line.split("==") for line in pip if "==" in line)


def test_env_file_matches_installed_versions(repo_root):
    mismatched = {}
    for name, version in _pins(repo_root).items():
        installed = md.version(name).split("+")[0]  # torch's local tag (+cpu / +cu12x) is the build, not the version
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"envs/dko.yaml pins differ from the installed versions: {mismatched}"


def test_env_file_covers_every_runtime_dependency(repo_root):
    names = {re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()
             for req in md.requires("dko") if "extra ==" not in req}
    assert names <= {n.lower() for n in _pins(repo_root)}, names - {n.lower() for n in _pins(repo_root)}
