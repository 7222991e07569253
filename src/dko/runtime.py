"""Process-wide torch settings that every DKO entry point gets: intra-op threads and the CPU convolution backend.

torch 2.13's oneDNN (mkldnn) convolution backward, ``mkldnn_convolution_backward_weights``, corrupts the
heap with ONE intra-op thread on an AMD EPYC (AVX2, no AVX-512) CPU: glibc aborts with "corrupted
double-linked list" during stage 1's ``loss.backward()`` (issue 13); with two threads, or with oneDNN off,
the same training passes there. Turning oneDNN off costs about 2x per training step on the CPU (stage 1 and
E2E alike, 1 and 2 threads: ``benchmarks/cpu_conv_backend.py``), so DKO turns it off exactly where the crash
was seen: whenever torch runs with one intra-op thread. The policy comes from ``DKO_CPU_ONEDNN``:

- ``auto`` (default): oneDNN off while ``torch.get_num_threads() == 1``; with more threads the flag is
  left as it was before DKO turned it off (torch's default: on);
- ``0``: oneDNN off for every thread count (the safe choice on a CPU you do not trust);
- ``1``: oneDNN on for every thread count (at your own risk on an AMD EPYC with one thread).

The policy is applied when this module is imported (:mod:`dko.depth.model` and :mod:`dko.frontend.layer`, the
modules that build DKO's convolutions, import it), by :func:`configure_torch`
(jobs, benchmarks), and again at every :meth:`dko.depth.model.DepthNet.forward_from_conv1`, the one call
that every training step (stage 1, E2E) and every evaluation makes before its backward pass, so a thread
count changed after import (tests, notebooks) is honoured. CUDA convolutions (cuDNN) are not affected.
"""

from __future__ import annotations

import os

import torch

ONEDNN_ENV = "DKO_CPU_ONEDNN"
MAX_THREADS_ENV = "DKO_MAX_THREADS"  # e.g. 1: every job (and, through tests/conftest.py, every test) on one thread
_POLICIES = {"auto": "auto", "": "auto", "1": "on", "true": "on", "on": "on", "yes": "on",
             "0": "off", "false": "off", "off": "off", "no": "off"}
_restore_to: bool | None = None  # the flag's value before the auto policy turned it off


def onednn_policy() -> str:
    """``auto``, ``on`` or ``off``, from the environment variable ``DKO_CPU_ONEDNN``."""
    value = os.environ.get(ONEDNN_ENV, "auto").strip().lower()
    if value not in _POLICIES:
        raise ValueError(f"environment variable {ONEDNN_ENV}={value!r}: use auto (the default), 0 (oneDNN off) "
                         "or 1 (oneDNN on)")
    return _POLICIES[value]


def apply_cpu_convolution_backend() -> bool:
    """Set ``torch.backends.mkldnn.enabled`` by :func:`onednn_policy` and the current thread count.

    Returns the value in force. Cheap (a few microseconds): called before every network forward pass.
    """
    global _restore_to
    policy = onednn_policy()
    if policy != "auto":
        torch.backends.mkldnn.enabled = policy == "on"
    elif torch.get_num_threads() == 1:
        if torch.backends.mkldnn.enabled:
            _restore_to = True
            torch.backends.mkldnn.enabled = False
    elif _restore_to is not None:
        torch.backends.mkldnn.enabled, _restore_to = _restore_to, None
    return torch.backends.mkldnn.enabled


def max_threads() -> int | None:
    """The cap ``DKO_MAX_THREADS`` puts on every job's intra-op threads (None: no cap)."""
    value = os.environ.get(MAX_THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"environment variable {MAX_THREADS_ENV}={value!r}: use a positive integer")
    return int(value)


def configure_torch(threads: int | None = None) -> bool:
    """Intra-op threads (``None``: leave torch's choice; capped by ``DKO_MAX_THREADS``), then the CPU
    convolution backend for that count. Returns whether oneDNN convolutions are enabled.
    """
    cap = max_threads()
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if threads is not None or cap is not None:
        wanted = int(threads) if threads is not None else torch.get_num_threads()
        torch.set_num_threads(min(wanted, cap) if cap is not None else wanted)
    return apply_cpu_convolution_backend()


apply_cpu_convolution_backend()
