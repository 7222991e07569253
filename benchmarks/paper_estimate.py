"""Runtime estimates of the paper-scale rules from per-step costs measured here, scaled (README "Paper scale").

Run: ``python benchmarks/paper_estimate.py [--config config/paper.yaml] [--batch 2] [--grids 64 128 256]
[--threads 2] [--device cpu] [--out results/benchmarks/paper_estimate.json]``

Measured with the pipeline's own code, on ``--device``:

- stage 1: one training step (forward, multi-scale depth loss, backward, AdamW) of the config's network
  (ResNet-18, 64 channels) on ``--batch`` random images of the config's size; scaled linearly to
  ``train.batch_size`` (convolutions are linear in the batch), times ``train.steps``;
- stage 2: one DKO step (PSFs of one element at one distance via :func:`dko.frontend.element_psfs`, the
  stage-2 loss, backward) at several grid sizes ``--grids`` (superpixels per side, the config's pad factor),
  fitted by ``a * M^2 log2 M^2`` (M = padded grid side: the FFT cost), extrapolated to ``optics.n_superpixels``;
  times the elements per shard (``shard_size x C x 2``) and ``dko.steps``; all shards = 64 x 3 x 2 elements;
- an E2E step = the PSFs of all elements (the stage-2 element step x 384, forward + backward) + the stage-1 step
  (back-end) + the opto-electronic conv1 (not measured here: see benchmarks/cost_ratio.py at paper image size);
  E2E runs for the time budget, so its run time is DKO's and this gives the steps it can afford.

Prints the estimates, writes JSON and logs a run to the MLflow experiment ``benchmarks`` (``--no-mlflow``: not).
These are extrapolations; a first GPU run's budget.json files replace them.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path


def _time(fn, device, repeats: int) -> tuple[float, float]:
    import torch

    fn()  # warm-up: caches (transfer functions, illumination), allocator
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None) -> dict:
    import torch

    from dko.budget import count_flops
    from dko.config import load_config
    from dko.depth.losses import multiscale_depth_loss
    from dko.depth.model import DepthNet
    from dko.dko import kernel_loss
    from dko.frontend import element_psfs, extract_kernel_bank, initial_designs
    from dko.io import write_json
    from dko.optics.metaatoms import MetaAtomLibrary
    from dko.optics.psf import OpticalSystem, clear_caches

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/paper.yaml")
    parser.add_argument("--batch", type=int, default=2, help="images per measured stage-1 step (scaled to train.batch_size)")
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128, 256], help="superpixels per side measured")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="results/benchmarks/paper_estimate.json")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow (experiment 'benchmarks')")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config, check_paths=False)
    torch.manual_seed(0)

    # ---- stage 1: one training step of the paper network
    model = DepthNet.from_config(cfg.network, (cfg.data.min_depth_m, cfg.data.max_depth_m)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    h, w = cfg.data.height, cfg.data.width
    images = torch.rand(args.batch, 3, h, w, device=device)
    depth = 1.0 + 79.0 * torch.rand(args.batch, 1, h, w, device=device)
    valid = depth > 0

    def stage1_step(step=True):
        loss = multiscale_depth_loss(model(images), depth, valid, model.depth_from_disp, cfg.train.si_lambda)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step:
            opt.step()

    s1_wall, s1_cpu = _time(stage1_step, device, args.repeats)
    scale = cfg.train.batch_size / args.batch
    s1_flops = count_flops(lambda: stage1_step(step=False)) * scale

    # ---- stage 2: one element's DKO step at several grids, fitted by M^2 log2 M^2
    bank = extract_kernel_bank(DepthNet.from_config(cfg.network, (cfg.data.min_depth_m, cfg.data.max_depth_m)), list(cfg.optics.wavelengths_m))
    one = bank.subset([0]).to(device)
    library = MetaAtomLibrary.default()
    grid_rows = []
    for n in args.grids:
        system = OpticalSystem.from_config(cfg.optics, n_superpixels=n)
        clear_caches()
        p0 = initial_designs(one, system, library, noise_std=cfg.dko.init_noise_std, seed=0,
                             parametrization=cfg.dko.parametrization).to(device)

        def dko_step():
            p = p0.clone().requires_grad_(True)
            psfs, eff = element_psfs(p, one, system, library, [cfg.optics.object_distances_m[0]],
                                     cfg.dko.parametrization)
            loss, _ = kernel_loss(psfs, one.targets, window_factor=cfg.dko.window_factor, efficiency=eff,
                                  efficiency_weight=cfg.dko.efficiency_weight)
            loss.backward()

        wall, cpu = _time(dko_step, device, args.repeats)
        m = math.ceil(n * cfg.optics.oversample * cfg.optics.pad_factor)
        grid_rows.append({"n_superpixels": n, "grid": m, "element_step_wall_s": wall, "element_step_cpu_s": cpu,
                          "fft_work": m * m * math.log2(m * m)})
    # least squares through the origin: t = a * work (the largest grids dominate, as they should)
    work = [r["fft_work"] for r in grid_rows]
    a_wall = sum(r["element_step_wall_s"] * x for r, x in zip(grid_rows, work)) / sum(x * x for x in work)
    a_cpu = sum(r["element_step_cpu_s"] * x for r, x in zip(grid_rows, work)) / sum(x * x for x in work)
    m_paper = math.ceil(cfg.optics.n_superpixels * cfg.optics.oversample * cfg.optics.pad_factor)
    w_paper = m_paper * m_paper * math.log2(m_paper * m_paper)
    elem_wall, elem_cpu = a_wall * w_paper, a_cpu * w_paper

    c = len(cfg.optics.wavelengths_m)
    k = cfg.network.base_width
    n_elements = k * c * 2
    per_shard = cfg.dko.shard_size * c * 2
    n_shards = math.ceil(k / cfg.dko.shard_size)
    out = {
        "device": str(device), "threads": args.threads, "config": args.config,
        "stage1_step_wall_s": s1_wall * scale, "stage1_step_cpu_s": s1_cpu * scale, "stage1_step_flops": s1_flops,
        "stage1_measured_batch": args.batch, "stage1_batch": cfg.train.batch_size, "stage1_steps": cfg.train.steps,
        "stage1_total_wall_s": s1_wall * scale * cfg.train.steps,
        "grids": grid_rows, "element_step_wall_s_per_fft_work": a_wall, "paper_grid": m_paper,
        "element_step_wall_s": elem_wall, "element_step_cpu_s": elem_cpu,
        "n_elements": n_elements, "elements_per_shard": per_shard, "n_shards": n_shards, "dko_steps": cfg.dko.steps,
        "shard_job_wall_s": elem_wall * per_shard * cfg.dko.steps,
        "stage2_total_wall_s": elem_wall * n_elements * cfg.dko.steps,
        "e2e_step_wall_s_lower_bound": elem_wall * n_elements + s1_wall * scale,
    }
    out["stage2_over_stage1"] = out["stage2_total_wall_s"] / out["stage1_total_wall_s"]
    print(f"stage 1 step (batch {cfg.train.batch_size}, scaled from {args.batch}): {out['stage1_step_wall_s']:.2f} s wall, "
          f"{s1_flops:.3g} FLOPs; x {cfg.train.steps} steps = {out['stage1_total_wall_s'] / 3600:.1f} h")
    for r in grid_rows:
        print(f"DKO element step at {r['n_superpixels']} superpixels (grid {r['grid']}): {r['element_step_wall_s']:.3f} s")
    print(f"DKO element step extrapolated to grid {m_paper}: {elem_wall:.2f} s; shard job ({per_shard} elements x "
          f"{cfg.dko.steps} steps): {out['shard_job_wall_s'] / 3600:.1f} h; all {n_shards} shards: "
          f"{out['stage2_total_wall_s'] / 3600:.1f} h")
    print(f"E2E step >= {out['e2e_step_wall_s_lower_bound']:.1f} s (PSFs of {n_elements} elements + back-end)")
    write_json(Path(args.out), out)
    if not args.no_mlflow:
        from dko.tracking import log_benchmark

        log_benchmark("paper_estimate", {k: v for k, v in out.items() if k != "grids"},
                      params={"config": args.config, "device": str(device), "threads": args.threads,
                              "batch": args.batch, "grids": " ".join(map(str, args.grids))},
                      files=[args.out], results_dir=Path(args.out).parent.parent)
    return out


if __name__ == "__main__":
    main()
