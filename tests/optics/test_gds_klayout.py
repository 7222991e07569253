"""KLayout (the layout viewer foundries use) reads our GDSII in batch mode and sees what we wrote.

KLayout comes from Debian (package ``klayout``); the test installs it when it is missing and the
machine allows (root + apt-get), otherwise it is skipped with the reason.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from dko.optics.gds import read_array_summary, write_array_gds


def _klayout() -> str:
    exe = shutil.which("klayout")
    if exe:
        return exe
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("KLayout is not installed and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = subprocess.run(["timeout", "-s", "KILL", "600", "apt-get", "install", "-y", "-qq",
                              "--no-install-recommends", "klayout"], env=env, capture_output=True, text=True)
    if install.returncode != 0:
        subprocess.run(["timeout", "-s", "KILL", "300", "apt-get", "update", "-qq"], env=env, capture_output=True)
        install = subprocess.run(["timeout", "-s", "KILL", "600", "apt-get", "install", "-y", "-qq",
                                  "--no-install-recommends", "klayout"], env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    return shutil.which("klayout")


def test_klayout_reads_the_array(tmp_path, repo_root):
    exe = _klayout()
    rng = np.random.default_rng(1)
    n = 6
    radii = rng.uniform(30e-9, 135e-9, size=(4, n, n))
    centers = np.array([[0.0, 0.0], [20e-6, 0.0], [0.0, 20e-6], [20e-6, 20e-6]])
    names = ["k0_c0_pos", "k0_c0_neg", "k1_c1_pos", "k1_c2_neg"]
    gds = tmp_path / "array.gds"
    ours = write_array_gds(gds, radii, centers, superpixel_m=0.6e-6, period_m=0.3e-6, element_names=names)
    out = tmp_path / "klayout.json"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path))
    proc = subprocess.run(["timeout", "-s", "KILL", "120", exe, "-b", "-r", str(repo_root / "scripts" / "klayout-check.py"),
                           "-rd", f"gds={gds}", "-rd", f"out={out}"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seen = json.loads(out.read_text())
    assert seen["top_cells"] == ["DKO_ARRAY"]
    assert seen["pillars"] == ours["n_pillars"] == 4 * n * n * 4
    back = read_array_summary(gds)
    for name in names:
        assert f"ELEMENT_{name}" in seen["elements"], (name, sorted(seen["elements"]))
        np.testing.assert_allclose(seen["elements"][f"ELEMENT_{name}"], np.asarray(back["elements"][name]["center_m"]) * 1e6,
                                   atol=1e-3)
