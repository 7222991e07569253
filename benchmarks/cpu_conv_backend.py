"""Cost of DKO's CPU convolution setting: oneDNN (mkldnn) on vs off, at 1 and 2 threads, side by side.

Run: ``python benchmarks/cpu_conv_backend.py [--config config/config.yaml] [--steps 5] [--repeats 2]
[--out-dir results/benchmarks]``

Why: torch 2.13's oneDNN convolution backward (``mkldnn_convolution_backward_weights``) corrupts the heap
with one intra-op thread on an AMD EPYC (AVX2) CPU (issue 13). :mod:`dko.runtime` turns oneDNN off where
that was seen (one thread; ``DKO_CPU_ONEDNN=0`` for every thread count, ``1`` never). This benchmark measures
what turning it off costs, forced on (``DKO_CPU_ONEDNN=1``) and off (``=0``) in each cell, with the
pipeline's own code and the config's sizes:

- ``stage1``: one stage-1 training step (:class:`dko.depth.model.DepthNet` of the config, multi-scale depth
  loss, backward, AdamW) on ``train.batch_size`` images of ``data.height x data.width``;
- ``e2e``: one :func:`dko.e2e.e2e_step` of the variant ``scratch`` (PSFs of all elements, opto-electronic
  conv1, the back-end, loss, backward, Adam / AdamW) on the same batch.

Every (mode, threads, oneDNN) cell runs in its own subprocess, in interleaved order, ``--repeats`` times;
the cell's figure is the median step wall time over all its timed steps (after one warm-up step). Prints and
writes ``cpu_conv_backend.json`` with the ratios off / on per mode and thread count. Timings on a shared
machine are noisy: the ratios, measured side by side, are what to quote.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("stage1", "e2e")


def _worker(args) -> dict:
    import torch

    from dko.config import load_config
    from dko.depth.losses import multiscale_depth_loss
    from dko.depth.model import DepthNet
    from dko.runtime import configure_torch

    configure_torch(args.worker_threads)
    cfg = load_config(args.config, check_paths=False)
    torch.manual_seed(cfg.seed)
    b, h, w = cfg.train.batch_size, cfg.data.height, cfg.data.width
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, h, w, generator=gen)
    depth = cfg.data.min_depth_m + (cfg.data.max_depth_m - cfg.data.min_depth_m) * torch.rand(b, 1, h, w, generator=gen)
    valid = depth > 0
    if args.worker == "stage1":
        model = DepthNet.from_config(cfg.network, (cfg.data.min_depth_m, cfg.data.max_depth_m)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)

        def step(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            multiscale_depth_loss(model(images), depth, valid, model.depth_from_disp, cfg.train.si_lambda).backward()
            opt.step()
    else:
        from dko.e2e import build_e2e, e2e_step, optics_lr

        meta = {"min_depth_m": cfg.data.min_depth_m, "max_depth_m": cfg.data.max_depth_m}
        model, front = build_e2e(cfg, "scratch", meta=meta, device=torch.device("cpu"))
        opts = [torch.optim.Adam([front.p], lr=optics_lr(cfg, "scratch")),
                torch.optim.AdamW([*model.parameters(), front.kernel_gains, front.bias], lr=cfg.train.lr)]

        def step(i: int) -> None:
            e2e_step(model, front, opts, images, depth, valid, cfg.train.si_lambda, step=i)

    times = []
    for i in range(args.steps + 1):
        t = time.perf_counter()
        step(i)
        if i > 0:
            times.append(time.perf_counter() - t)
    return {"mode": args.worker, "threads": args.worker_threads, "onednn": torch.backends.mkldnn.enabled,
            "step_wall_s": times}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per subprocess (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="subprocesses per cell, interleaved")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out-dir", default="results/benchmarks")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(_worker(args)))
        return {}

    from dko.io import write_json

    cells = list(itertools.product(args.modes, args.threads, (True, False)))
    samples: dict[tuple, list[float]] = {cell: [] for cell in cells}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat, (mode, threads, onednn) in itertools.product(range(args.repeats), cells):
            target = Path(tmp) / f"{mode}_{threads}_{onednn}_{repeat}.json"
            env = {**os.environ, "DKO_CPU_ONEDNN": "1" if onednn else "0"}
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--worker-out", str(target),
                                   "--config", args.config, "--steps", str(args.steps), "--worker-threads", str(threads)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"measurement {mode} threads={threads} oneDNN={onednn} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(target.read_text())
            if row["onednn"] != onednn:
                raise SystemExit(f"DKO_CPU_ONEDNN={int(onednn)} was not applied (torch.backends.mkldnn.enabled = "
                                 f"{row['onednn']})")
            samples[(mode, threads, onednn)].extend(row["step_wall_s"])
    rows = [{"mode": m, "threads": t, "onednn": o, "step_wall_s": statistics.median(samples[(m, t, o)]),
             "n_steps": len(samples[(m, t, o)])} for m, t, o in cells]
    median = {(r["mode"], r["threads"], r["onednn"]): r["step_wall_s"] for r in rows}
    ratios = {f"{m}_threads{t}_off_over_on": median[(m, t, False)] / median[(m, t, True)]
              for m, t in itertools.product(args.modes, args.threads)}
    for r in rows:
        print(f"{r['mode']:7s} threads={r['threads']} oneDNN={'on ' if r['onednn'] else 'off'} "
              f"{r['step_wall_s']:.4f} s/step (median of {r['n_steps']})")
    for name, value in ratios.items():
        print(f"  {name:32s} {value:6.3f}")
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "worker_out", "worker_threads", "no_mlflow")},
              "measurements": rows, "ratios": ratios}
    out = Path(args.out_dir) / "cpu_conv_backend.json"
    write_json(out, result)
    print(f"wrote {out}")
    if not args.no_mlflow:
        from dko.tracking import log_benchmark

        log_benchmark("cpu_conv_backend", ratios, {k: str(v) for k, v in result["settings"].items()}, files=[out],
                      results_dir=Path(args.out_dir).parent)
    return result


if __name__ == "__main__":
    main()
