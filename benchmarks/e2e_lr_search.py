"""Learning-rate search of the E2E optics (``e2e.lr_optics``) on the validation split.

Run (after stage 1 of the same config, e.g. ``snakemake <results>/<exp>/stage1/model.pt``):
``python benchmarks/e2e_lr_search.py --config config/config.yaml [--variants optics scratch]
[--lrs 0.01 0.03 0.1 0.3 1.0] [--steps 25] [--out results/benchmarks/e2e_lr_search.json]``

For every variant and learning rate it trains that E2E variant with :func:`dko.e2e.train_e2e` for a fixed
``--steps`` steps (``e2e.budget = steps``; the full warm-up + cosine schedule over those steps; everything else
from the config: data, batch, augmentation, optics, DKO's initialisation, ``e2e.lr_backend``), on the run's
prepared data, stage-1 model and meta-atom table (``<results_dir>/<experiment>/{data,stage1,metaatoms}``),
and records the noise-free validation AbsRel at the end (and at its initialisation). The best learning rate
per variant (lowest final validation AbsRel; a diverged run counts as infinite) and the full table are
printed and written to ``--out`` (JSON). The config defaults ``e2e.lr_optics`` (variant optics) and
``e2e.lr_optics_scratch`` (variant scratch) record the result.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--variants", nargs="+", default=["optics", "scratch"], choices=["optics", "scratch"])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--steps", type=int, default=25, help="training steps per trial")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/benchmarks/e2e_lr_search.json")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args = parser.parse_args(argv)

    import torch

    from dko.config import load_config
    from dko.depth.collapse import TrainingCollapse
    from dko.e2e import E2EDivergence, train_e2e
    from dko.io import write_json
    from dko.workflow import configure_logging

    configure_logging(None)
    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    exp = base.experiment_dir
    data, stage1, library = exp / "data", exp / "stage1" / "model.pt", exp / "metaatoms" / "library.npz"
    for path in (data / "meta.json", *([stage1] if "optics" in args.variants else [])):
        if not path.is_file():
            raise SystemExit(f"'{path}' does not exist: run the pipeline up to stage 1 with this config first")
    trials = []
    for variant in args.variants:
        for lr in args.lrs:
            cfg = load_config(args.config, overrides={"e2e": {"budget": "steps", "steps": args.steps, "lr_optics": lr, "lr_optics_scratch": lr,
                                                              "n_val": 1, "checkpoint_every": 10**6}})
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    res = train_e2e(cfg, variant, data, tmp, stage1_model=stage1,
                                    library_path=library if library.is_file() else None, progress=False)
                    final = res["val"]["abs_rel"]
                    import csv

                    rows = list(csv.DictReader(open(Path(tmp) / "curves.csv")))
                    initial = float(rows[0]["val_abs_rel"])
                    status = "ok"
                    wall = res["budget"]["wall_s"]
                except E2EDivergence as exc:
                    final, initial, status, wall = math.inf, math.nan, f"diverged: {exc}", math.nan
                except TrainingCollapse as exc:  # a learning rate that collapses the network is a failed trial
                    final, initial, status, wall = math.inf, math.nan, f"collapsed: {exc}", math.nan
            trials.append({"variant": variant, "lr_optics": lr, "lr_optics_scratch": lr, "val_abs_rel": final, "val_abs_rel_initial": initial,
                           "status": status, "wall_s": wall})
            print(f"{variant:8s} lr_optics {lr:8.4g}: val AbsRel {initial:.4f} -> {final:.4f} ({status}, {wall:.0f} s)",
                  flush=True)
    best = {}
    for variant in args.variants:
        rows = [t for t in trials if t["variant"] == variant]
        pick = min(rows, key=lambda t: t["val_abs_rel"])
        best[variant] = pick["lr_optics"]
        print(f"best e2e.lr_optics for {variant}: {pick['lr_optics']} (val AbsRel {pick['val_abs_rel']:.4f})")
    result = {"config": args.config, "steps": args.steps, "lrs": args.lrs, "trials": trials, "best": best,
              "lr_backend": base.e2e.lr_backend if base.e2e.lr_backend is not None else base.train.lr,
              "batch_size": base.train.batch_size}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    if not args.no_mlflow:
        from dko.tracking import log_benchmark

        metrics = {f"{t['variant']}_lr{t['lr_optics']:g}_val_abs_rel": t["val_abs_rel"] for t in trials}
        log_benchmark("e2e_lr_search", metrics, {"config": args.config, "steps": args.steps, "best": json.dumps(best)},
                      files=[args.out], results_dir=Path(args.out).parents[1])
    return result


if __name__ == "__main__":
    main()
