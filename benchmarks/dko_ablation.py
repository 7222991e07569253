"""What makes the stage-2 kernels realisable: optics geometry, design parametrisation, efficiency weight, and
the smoothness of the stage-1 kernels (issue 5), measured on a subset of elements.

Run (after stage 1 of the config, e.g. ``make run``):
``python benchmarks/dko_ablation.py [--config config/config.yaml] [--models results/default/stage1/model.pt ...]
[--elements 0 13 26 39 52 65 78 91] [--steps 1000] [--out results/benchmarks/dko_ablation.json]``

For every stage-1 model (``--models``; label = the model's ``train.conv1_smoothness`` and its conv1 roughness,
:func:`dko.depth.losses.kernel_roughness`) and every variant below, the elements ``--elements`` of its kernel bank
are fitted exactly as ``optimize_metasurface`` does (:func:`dko.frontend.initial_designs`,
:func:`dko.frontend.element_psfs`, :func:`dko.dko.optimize_designs`, object distance ``optics.object_distances_m[0]``),
and the fabricated pillars (:func:`dko.frontend.design_radius`, :func:`dko.frontend.radius_psfs`) are scored with
:func:`dko.dko.fidelity_metrics`: median relative L2 kernel error and median fraction of the transmitted light in the
k x k window. Variants (everything not named comes from the config):

- ``na018_radius`` - the earlier default: 1.2 um superpixels, z_s 0.63 mm (NA 0.18), radius parametrisation,
  lr 0.05, efficiency weight 0.3;
- ``na018_phase`` - the same optics with the phase parametrisation, lr 0.5, weight 0.03;
- ``na036_radius`` - 0.6 um superpixels, z_s 0.15 mm (NA 0.36), radius parametrisation, lr 0.05, weight 0.03;
- ``config`` - the config as it is (default: NA 0.36, phase, lr 0.5, weight 0.03);
- ``config_w{0, 0.1, 0.3}`` - the config with other efficiency weights;
- ``config_lr{0.05, 0.2, 1}`` - the config with other learning rates (not run unless named in ``--variants``).

A model file trained without the smoothness prior comes from e.g.
``snakemake results/rough/stage1/model.pt --cores 2 --configfile config/config.yaml
--config experiment=rough 'train={conv1_smoothness: 0.0}'``.
Writes ``--out`` (JSON) and logs it to the MLflow experiment ``benchmarks``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

VARIANTS = {
    "na018_radius": {"optics": {"superpixel_m": 1.2e-6, "sensor_distance_m": 6.3e-4},
                     "dko": {"parametrization": "radius", "lr": 0.05, "efficiency_weight": 0.3}},
    "na018_phase": {"optics": {"superpixel_m": 1.2e-6, "sensor_distance_m": 6.3e-4},
                    "dko": {"parametrization": "phase", "lr": 0.5, "efficiency_weight": 0.03}},
    "na036_radius": {"optics": {"superpixel_m": 0.6e-6, "sensor_distance_m": 1.5e-4},
                     "dko": {"parametrization": "radius", "lr": 0.05, "efficiency_weight": 0.03}},
    "config": {},
    "config_w0": {"dko": {"efficiency_weight": 0.0}},
    "config_w0.1": {"dko": {"efficiency_weight": 0.1}},
    "config_w0.3": {"dko": {"efficiency_weight": 0.3}},
    "config_lr0.05": {"dko": {"lr": 0.05}},
    "config_lr0.2": {"dko": {"lr": 0.2}},
    "config_lr1": {"dko": {"lr": 1.0}},
}
DEFAULT_VARIANTS = ["na018_radius", "na018_phase", "na036_radius", "config", "config_w0", "config_w0.1", "config_w0.3"]


def numerical_aperture(optics) -> float:
    half = optics.n_superpixels * optics.superpixel_m / 2
    return half / math.hypot(half, optics.sensor_distance_m)


def fit_variant(cfg, bank, library, elements, steps: int) -> dict:
    """Fit ``elements`` of ``bank`` under ``cfg``; fidelity of the realised pillars at the design distance."""
    import torch

    from dko.dko import fidelity_metrics, optimize_designs
    from dko.frontend import design_radius, element_psfs, initial_designs, radius_psfs
    from dko.optics.psf import OpticalSystem, clear_caches

    clear_caches()
    system = OpticalSystem.from_config(cfg.optics)
    d = cfg.dko
    distance = [cfg.optics.object_distances_m[0]]
    idx = torch.tensor([e for e in elements if e < bank.n_elements], dtype=torch.long)
    sub = bank.subset(idx)
    p0 = initial_designs(bank, system, library, noise_std=d.init_noise_std, seed=cfg.seed,
                         parametrization=d.parametrization)[idx]

    def psf_fn(p):
        return element_psfs(p, sub, system, library, distance, d.parametrization)

    t0, c0 = time.perf_counter(), time.process_time()
    p, history = optimize_designs(p0, sub.targets.float(), psf_fn, steps=steps, lr=d.lr,
                                  window_factor=d.window_factor, efficiency_weight=d.efficiency_weight,
                                  plateau_patience=d.plateau_patience, plateau_rel_tol=d.plateau_rel_tol)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        psf, eff = radius_psfs(design_radius(p, sub, library, d.parametrization), sub, system, library, distance)
    m = fidelity_metrics(psf[0], sub.targets, total_power=eff[0])
    rel = [float(v) for v in m["rel_l2"]]
    energy = [float(v) for v in m["energy_in_window"]]
    return {"numerical_aperture": numerical_aperture(cfg.optics), "superpixel_m": cfg.optics.superpixel_m,
            "sensor_distance_m": cfg.optics.sensor_distance_m, "parametrization": d.parametrization, "lr": d.lr,
            "efficiency_weight": d.efficiency_weight, "elements": idx.tolist(), "steps": len(history),
            "median_rel_l2": statistics.median(rel), "max_rel_l2": max(rel),
            "median_energy_k": statistics.median(energy), "min_energy_k": min(energy),
            "rel_l2": rel, "energy_k": energy, "wall_s": wall, "cpu_s": cpu}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--models", nargs="+", default=None,
                        help="stage-1 model files (default: <results_dir>/<experiment>/stage1/model.pt)")
    parser.add_argument("--elements", type=int, nargs="+", default=[0, 13, 26, 39, 52, 65, 78, 91])
    parser.add_argument("--steps", type=int, default=None, help="DKO steps (default: the config's dko.steps)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/benchmarks/dko_ablation.json")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args = parser.parse_args(argv)

    import torch

    from dko.config import config_from_dict, load_config
    from dko.depth.checkpoint import load_depthnet
    from dko.depth.losses import kernel_roughness
    from dko.frontend import extract_kernel_bank
    from dko.io import write_json
    from dko.optics.metaatoms import MetaAtomLibrary
    from dko.tracking import log_benchmark

    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    run_dir = Path(base.results_dir) / base.experiment
    models = args.models or [str(run_dir / "stage1" / "model.pt")]
    library_path = run_dir / "metaatoms" / "library.npz"
    library = MetaAtomLibrary.load(library_path) if library_path.is_file() else MetaAtomLibrary.default()
    steps = args.steps or base.dko.steps
    rows = []
    for model_path in models:
        model, payload = load_depthnet(model_path)
        smoothness = ((payload.get("config") or {}).get("train") or {}).get("conv1_smoothness", 0.0)
        roughness = float(kernel_roughness(model.conv1.weight.detach()))
        bank = extract_kernel_bank(model, list(base.optics.wavelengths_m))
        for name in args.variants:
            raw = base.to_dict()
            for section, values in VARIANTS[name].items():
                raw[section] = {**raw[section], **values}
            cfg = config_from_dict(raw, check_paths=False)
            row = {"model": str(model_path), "conv1_smoothness": smoothness, "conv1_roughness": roughness,
                   "variant": name, **fit_variant(cfg, bank, library, args.elements, steps)}
            rows.append(row)
            print(f"{Path(model_path).parent.parent.name:>10} roughness {roughness:4.2f} {name:>13}: NA "
                  f"{row['numerical_aperture']:.2f} {row['parametrization']:>6} w {row['efficiency_weight']:<4} "
                  f"median rel L2 {100 * row['median_rel_l2']:5.2f} % (max {100 * row['max_rel_l2']:5.2f} %), "
                  f"light in window {100 * row['median_energy_k']:4.1f} % (min {100 * row['min_energy_k']:4.1f} %), "
                  f"{row['wall_s']:.0f} s", flush=True)
    result = {"config": args.config, "steps": steps, "elements": args.elements, "rows": rows}
    out = Path(args.out)
    write_json(out, result)
    if not args.no_mlflow:
        metrics = {f"{Path(r['model']).parent.parent.name}.{r['variant']}.{k}": r[k] for r in rows
                   for k in ("median_rel_l2", "median_energy_k")}
        log_benchmark("dko_ablation", metrics, params={"config": args.config, "steps": steps,
                                                       "elements": " ".join(map(str, args.elements))},
                      files=[out], results_dir=base.results_dir)
    return result


if __name__ == "__main__":
    main()
