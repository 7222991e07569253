"""dko.runtime: CPU convolutions run without oneDNN whenever torch runs one intra-op thread (issue 13).

torch 2.13's oneDNN convolution backward corrupts the heap with one intra-op thread on an AMD EPYC (AVX2) CPU.
The configuration that crashed there (stage 1 on 32 x 64 images, ``base_width: 4``, 12 steps, one thread)
runs here in a subprocess, on oneDNN's AVX2 code path and with glibc's heap consistency checks, so that a
crash fails this one test with a clear message instead of killing pytest.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dko.runtime import ONEDNN_ENV, configure_torch, onednn_policy

MALLOC_DEBUG = Path("/lib/x86_64-linux-gnu/libc_malloc_debug.so.0")


def _python(code: str, *, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_ENV}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def _died(proc: subprocess.CompletedProcess, what: str) -> str:
    cause = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return (f"{what} died ({cause}); a native crash here is the oneDNN heap corruption of issue 13 or a "
            f"relative of it. stderr tail:\n{proc.stderr[-3000:]}")


@pytest.mark.parametrize("module", ["dko.depth.model", "dko.depth.train", "dko.e2e", "dko.frontend.layer"])
def test_importing_a_convolution_module_with_one_thread_turns_onednn_off(module):
    proc = _python(f"import torch; torch.set_num_threads(1); import {module}; print(torch.backends.mkldnn.enabled)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


FORWARD_AT = """
    import torch
    torch.set_num_threads(2)
    from dko.depth.model import DepthNet
    net = DepthNet((1, 1, 1, 1), 4, decoder_channels=(4, 4, 4, 8, 8))
    seen = [torch.backends.mkldnn.enabled]
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        net(torch.rand(1, 3, 32, 64))
        seen.append(torch.backends.mkldnn.enabled)
    print(seen)
"""


@pytest.mark.parametrize("policy, expected", [(None, "[True, False, True, False]"), ("auto", "[True, False, True, False]"),
                                              ("0", "[False, False, False, False]"),
                                              ("1", "[True, True, True, True]")])
def test_thread_count_changed_after_import_is_honoured_at_the_forward_pass(policy, expected):
    """auto: oneDNN off exactly while one thread runs (where the crash was seen), back on with two; 0 / 1 force it."""
    proc = _python(FORWARD_AT, env_extra={ONEDNN_ENV: policy} if policy is not None else None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == expected


def test_nonsense_policy_is_rejected_naming_the_variable():
    bad = _python("import dko.runtime", env_extra={ONEDNN_ENV: "maybe"})
    assert bad.returncode != 0 and f"{ONEDNN_ENV}='maybe'" in bad.stderr


def test_configure_torch_sets_threads_and_backend(monkeypatch):
    before, flag = torch.get_num_threads(), torch.backends.mkldnn.enabled
    monkeypatch.delenv(ONEDNN_ENV, raising=False)
    try:
        torch.backends.mkldnn.enabled = True
        assert configure_torch(1) is False and torch.get_num_threads() == 1
        # two threads turn it back on (unless the suite runs under DKO_MAX_THREADS=1, which keeps one thread)
        assert configure_torch(2) is (torch.get_num_threads() == 2)
        monkeypatch.setenv(ONEDNN_ENV, "off")
        assert onednn_policy() == "off" and configure_torch(2) is False
        with pytest.raises(ValueError, match="threads"):
            configure_torch(0)
    finally:
        torch.set_num_threads(before)
        torch.backends.mkldnn.enabled = flag


CRASHING_CONFIGURATION = """
    import sys, tempfile
    from pathlib import Path
    import torch
    sys.path.insert(0, ".")
    from tests.depth.conftest import write_row_dataset
    from dko.config import config_from_dict
    from dko.depth.train import train_electronic
    from dko.e2e import build_e2e, e2e_step, optics_lr

    torch.set_num_threads(1)
    cfg = config_from_dict({
        "seed": 0, "device": "cpu", "tracking": {"enabled": False},
        "data": {"height": 32, "width": 64, "n_train": 6, "n_val": 2, "n_test": 3},
        "network": {"blocks_per_stage": [1, 1, 1, 1], "base_width": 4, "decoder_channels": [4, 4, 4, 8, 8]},
        "train": {"steps": 12, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 6, "val_every": 6,
                  "lr": 0.01},
        "optics": {"n_superpixels": 16, "superpixel_m": 1.2e-6, "psf_size_px": 9, "sensor_distance_m": 1.0e-4}})
    with tempfile.TemporaryDirectory() as tmp:
        data = write_row_dataset(Path(tmp) / "data")
        train_electronic(cfg, data, Path(tmp) / "stage1", device="cpu", progress=False)
        model, front = build_e2e(cfg, "scratch", meta={"min_depth_m": 1.0, "max_depth_m": 80.0},
                                 device=torch.device("cpu"))
        opts = [torch.optim.Adam([front.p], lr=optics_lr(cfg, "scratch")),
                torch.optim.AdamW([*model.parameters(), front.kernel_gains, front.bias], lr=1e-3)]
        images, depth = torch.rand(4, 3, 32, 64), 1.0 + 79.0 * torch.rand(4, 1, 32, 64)
        for step in range(4):
            e2e_step(model, front, opts, images, depth, depth > 0, cfg.train.si_lambda, step=step)
    print("onednn", torch.backends.mkldnn.enabled, "threads", torch.get_num_threads())
"""


def test_the_configuration_that_crashed_on_amd_epyc_trains_in_a_subprocess():
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2"}  # the code path of an AVX2-only CPU, whatever this one has
    if MALLOC_DEBUG.is_file():  # glibc's heap checks abort on the first inconsistency instead of later
        env.update(LD_PRELOAD=str(MALLOC_DEBUG), GLIBC_TUNABLES="glibc.malloc.check=3")
    proc = _python(CRASHING_CONFIGURATION, env_extra=env)
    assert proc.returncode == 0, _died(proc, "stage-1 + E2E training with one thread")
    assert "onednn False threads 1" in proc.stdout


def test_max_threads_caps_every_job(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("DKO_MAX_THREADS", "1")
        configure_torch(2)
        assert torch.get_num_threads() == 1 and torch.backends.mkldnn.enabled is False
        monkeypatch.setenv("DKO_MAX_THREADS", "x")
        with pytest.raises(ValueError, match="DKO_MAX_THREADS='x'"):
            configure_torch(2)
    finally:
        monkeypatch.delenv("DKO_MAX_THREADS")
        torch.set_num_threads(before)
        configure_torch(before)
