"""Cost of one DKO stage-2 job step vs one E2E step, side by side, at the paper's element count.

Run: ``python benchmarks/cost_ratio.py [--config config/config.yaml] [--channels 64] [--n 128]
[--batch 8] [--height 96] [--width 320] [--steps 5] [--out-dir results/benchmarks]``

Every measurement runs in its own subprocess (``--worker``), so its peak resident memory (``ru_maxrss``) is
its own; the subprocesses run one after the other. Measured, with the pipeline's own code:

- ``dko_job``: one ``optimize_metasurface`` job, i.e. ``dko.shard_size`` output channels x C colours x 2
  signs elements: :func:`dko.dko.optimize_designs` with the PSF model :func:`dko.frontend.element_psfs`
  (PSFs, kernel loss, backward, Adam) - the per-step time is the median over ``--steps`` steps;
- ``dko_all``: the same for all ``channels x C x 2`` elements in one job (stage 2 unsharded);
- ``e2e``: one :func:`dko.e2e.e2e_step` (variant scratch, the costlier one: PSFs of all ``channels x C x 2``
  elements, opto-electronic conv1, ResNet back-end (``--blocks``, width ``--channels``) with the Monodepth2
  decoder, depth loss, backward, Adam / AdamW) on a batch of ``--batch`` images of ``--height x --width``.

For each: median step wall time, step CPU time, FLOPs per step (``torch.utils.flop_counter``: matmuls and
convolutions; FFTs are not counted, so ``total_flops_per_step_est`` adds :func:`dko.frontend.psf_fft_flops`), peak RSS and the RSS after setup (imports, models, data) so the
increment of the optimisation itself is visible. The element count defaults to the paper's 64 x 3 x 2 = 384;
the grid (``--n`` superpixels per side, default ``optics.n_superpixels`` of the config) is what this
machine can hold. Prints the ratios E2E / DKO and writes ``cost_ratio.json``, ``cost_ratio.csv`` and
``cost_ratio.png`` to ``--out-dir``. Timings on a shared machine are noisy: rerun before quoting them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("dko_job", "dko_all", "e2e")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


def _config(args):
    from dko.config import config_from_dict, load_config

    cfg = load_config(args.config, check_paths=False).to_dict()
    cfg["optics"]["n_superpixels"] = args.n or cfg["optics"]["n_superpixels"]
    cfg["network"]["base_width"] = args.channels
    cfg["network"]["blocks_per_stage"] = list(args.blocks)
    cfg["network"]["decoder_channels"] = list(args.decoder)
    cfg["train"]["batch_size"] = args.batch
    cfg["data"]["height"], cfg["data"]["width"] = args.height, args.width
    cfg["device"] = args.device
    return config_from_dict(cfg, check_paths=False)


def worker(args) -> dict:
    """One measurement in this process (``--worker MODE``)."""
    import torch

    from dko.budget import count_flops
    from dko.depth.model import DepthNet
    from dko.frontend import extract_kernel_bank

    torch.set_num_threads(args.threads)
    cfg = _config(args)
    device = torch.device(args.device)
    torch.manual_seed(cfg.seed)
    meta = {"min_depth_m": cfg.data.min_depth_m, "max_depth_m": cfg.data.max_depth_m}
    steps = max(2, args.steps)
    times, cpus = [], []
    if args.worker in ("dko_job", "dko_all"):
        from dko.dko import kernel_loss, optimize_designs
        from dko.frontend import element_psfs, initial_designs
        from dko.optics.metaatoms import MetaAtomLibrary
        from dko.optics.psf import OpticalSystem

        model = DepthNet.from_config(cfg.network, (cfg.data.min_depth_m, cfg.data.max_depth_m))
        bank = extract_kernel_bank(model, list(cfg.optics.wavelengths_m))
        if args.worker == "dko_job":
            keep = torch.nonzero(bank.out_channel < cfg.dko.shard_size).flatten()
            bank = bank.subset(keep)
        bank = bank.to(device)
        system = OpticalSystem.from_config(cfg.optics)
        library = MetaAtomLibrary.default()
        p0 = initial_designs(bank, system, library, noise_std=cfg.dko.init_noise_std, seed=cfg.seed,
                             parametrization=cfg.dko.parametrization)
        distances = [cfg.optics.object_distances_m[0]]

        def psf_fn(p):
            return element_psfs(p, bank, system, library, distances, cfg.dko.parametrization)

        def one_step():
            p = p0.clone().requires_grad_(True)
            psfs, eff = psf_fn(p)
            loss, _ = kernel_loss(psfs, bank.targets, window_factor=cfg.dko.window_factor, efficiency=eff,
                                  efficiency_weight=cfg.dko.efficiency_weight)
            loss.backward()

        setup_rss = _current_rss_mb()
        stamps = []

        def on_metrics(step, metrics):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append((time.perf_counter(), time.process_time()))

        t0, c0 = time.perf_counter(), time.process_time()
        optimize_designs(p0, bank.targets, psf_fn, steps=steps + 1, lr=cfg.dko.lr, window_factor=cfg.dko.window_factor,
                         efficiency_weight=cfg.dko.efficiency_weight, plateau_patience=0, on_metrics=on_metrics)
        prev = (t0, c0)
        for i, (t, c) in enumerate(stamps):
            if i > 0:  # the first step fills caches (transfer functions, illumination)
                times.append(t - prev[0])
                cpus.append(c - prev[1])
            prev = (t, c)
        flops = count_flops(one_step)
        n_elements = bank.n_elements
    else:
        from dko.e2e import build_e2e, e2e_step, optics_lr

        model, front = build_e2e(cfg, "scratch", meta=meta, device=device)
        opts = [torch.optim.Adam([front.p], lr=optics_lr(cfg, "scratch")),
                torch.optim.AdamW([*model.parameters(), front.kernel_gains, front.bias], lr=cfg.train.lr)]
        gen = torch.Generator().manual_seed(0)
        b, h, w = args.batch, args.height, args.width
        images = torch.rand(b, 3, h, w, generator=gen).to(device)
        depth = (1.0 + 79.0 * torch.rand(b, 1, h, w, generator=gen)).to(device)
        valid = depth > 0
        setup_rss = _current_rss_mb()
        for i in range(steps + 1):
            t, c = time.perf_counter(), time.process_time()
            e2e_step(model, front, opts, images, depth, valid, cfg.train.si_lambda, step=i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:
                times.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
        # counted after the timed steps (no optimiser step: the models are not changed by it)
        flops = count_flops(lambda: e2e_step(model, front, [], images, depth, valid, cfg.train.si_lambda))
        n_elements = front.bank.n_elements
    from dko.frontend import psf_fft_flops
    from dko.optics.psf import OpticalSystem

    fft = psf_fft_flops(OpticalSystem.from_config(cfg.optics), n_elements, 1)
    out = {"mode": args.worker, "n_elements": n_elements, "n_superpixels": cfg.optics.n_superpixels,
           "fft_flops_per_step_est": fft, "total_flops_per_step_est": flops + fft,
           "step_wall_s": statistics.median(times), "step_cpu_s": statistics.median(cpus), "steps_timed": len(times),
           "flops_per_step": flops, "peak_rss_mb": _rss_mb(), "setup_rss_mb": setup_rss,
           "gpu_max_allocated_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None}
    out["increment_rss_mb"] = out["peak_rss_mb"] - setup_rss
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dko.io import atomic_path

    names = [f"{r['mode']}\n({r['n_elements']} el.)" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key, label in zip(axes, ("step_cpu_s", "peak_rss_mb", "total_flops_per_step_est"),
                              ("CPU time per step (s)", "peak RSS (MB)", "FLOPs per step (incl. FFT estimate)")):
        ax.bar(names, [r[key] for r in rows], color=["C0", "C9", "C3"][:len(rows)])
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"DKO stage-2 job vs E2E step (N = {rows[0]['n_superpixels']} superpixels)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config (optics, dko, train sections)")
    parser.add_argument("--channels", type=int, default=64, help="conv1 output channels (paper: 64)")
    parser.add_argument("--blocks", type=int, nargs=4, default=[2, 2, 2, 2], help="ResNet blocks per stage (ResNet-18)")
    parser.add_argument("--decoder", type=int, nargs=5, default=[16, 32, 64, 128, 256], help="decoder widths")
    parser.add_argument("--n", type=int, default=None, help="superpixels per side (default: the config's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out-dir", default="results/benchmarks", help="cost_ratio.json / .csv / .png go here")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(args)))
        return {}

    import csv

    from dko.io import atomic_path, write_json

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    passthrough = ["--config", args.config, "--channels", str(args.channels), "--blocks", *map(str, args.blocks),
                   "--decoder", *map(str, args.decoder), "--batch", str(args.batch), "--height", str(args.height),
                   "--width", str(args.width), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--device", args.device] + (["--n", str(args.n)] if args.n else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            target = Path(tmp) / f"{mode}.json"
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--worker-out", str(target), *passthrough],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"measurement '{mode}' failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(target.read_text()))
            r = rows[-1]
            print(f"{mode:8s} {r['n_elements']:4d} elements: {r['step_wall_s']:.3f} s/step wall, "
                  f"{r['step_cpu_s']:.3f} s/step CPU, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(+{r['increment_rss_mb']:.0f} MB over setup), {r['flops_per_step']:.3g} FLOPs/step")
    by = {r["mode"]: r for r in rows}
    ratios = {}
    if "e2e" in by:
        for ref in ("dko_job", "dko_all"):
            if ref in by:
                for key in ("step_wall_s", "step_cpu_s", "peak_rss_mb", "increment_rss_mb", "flops_per_step",
                            "total_flops_per_step_est"):
                    denom = by[ref][key]
                    ratios[f"e2e_over_{ref}_{key}"] = by["e2e"][key] / denom if denom else float("nan")
    for name, value in ratios.items():
        print(f"  {name:40s} {value:10.2f}")
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "worker_out", "no_mlflow")}
    result = {"settings": settings, "measurements": rows, "ratios": ratios,
              "note": "peak RSS includes the Python / torch baseline of each process; increment_rss_mb is over setup"}
    write_json(out_dir / "cost_ratio.json", result)
    with atomic_path(out_dir / "cost_ratio.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    _plot(rows, out_dir / "cost_ratio.png")
    print(f"wrote {out_dir / 'cost_ratio.json'}, .csv, .png")
    if not args.no_mlflow:
        from dko.tracking import log_benchmark

        log_benchmark("cost_ratio", {**ratios, **{f"{r['mode']}_{k}": r[k] for r in rows for k in
                                                  ("step_wall_s", "peak_rss_mb", "flops_per_step")}},
                      {k: str(v) for k, v in settings.items()},
                      files=[out_dir / "cost_ratio.json", out_dir / "cost_ratio.csv", out_dir / "cost_ratio.png"],
                      results_dir=out_dir.parent)
    return result


if __name__ == "__main__":
    main()
