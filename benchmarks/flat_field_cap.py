"""What the flat-field correction's gain cap (``faithful.flat_field_max_gain``) does to the faithful evaluations.

Run (after ``make run``): ``python benchmarks/flat_field_cap.py [results/benchmarks/flat_field_cap] [--exp results/default]
[--config config/config.yaml] [--caps none 64 16 4] [--models dko dko_noisy] [--no-mlflow]``

The run's DKO faithful front end (``dko/frontend_faithful.npz``, rule ``faithful_frontend``) is written again with each
cap (``none`` = no cap; the PSFs and gains unchanged) and the models (``dko``, ``dko_noisy``) are evaluated with it on
the test split as rule ``evaluate`` does (:func:`dko.catalogue.evaluate_model`). Writes ``flat_field_cap.csv`` (one row
per cap and model: AbsRel, delta < 1.25, the largest gain the cap leaves at the evaluated image size) and logs it to
the MLflow experiment ``benchmarks``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dko.catalogue import evaluate_model
from dko.config import load_config
from dko.data.format import read_meta
from dko.frontend.file import load_frontend, save_frontend
from dko.io import write_csv


def parse_cap(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="results/benchmarks/flat_field_cap")
    parser.add_argument("--exp", default="results/default")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--caps", nargs="+", default=["none", "64", "16", "4"])
    parser.add_argument("--models", nargs="+", default=["dko", "dko_noisy"])
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args = parser.parse_args(argv)
    exp, out = Path(args.exp), Path(args.out)
    cfg = load_config(args.config)
    fe = load_frontend(exp / "dko" / "frontend_faithful.npz")
    meta = read_meta(exp / "data")
    model_path = str(exp / "stage1" / "model.pt")
    rows = []
    for text in args.caps:
        cap = parse_cap(text)
        capped = dataclasses.replace(fe, flat_field_max_gain=cap)
        path = out / "frontends" / f"cap_{text}.npz"
        save_frontend(path, radius_m=capped.radius_m, psfs=capped.psfs, object_distances_m=capped.object_distances_m,
                      efficiency=capped.efficiency, gains=capped.gains, bank=capped.bank,
                      element_centers_m=capped.element_centers_m, system=capped.system, info=capped.info,
                      flat_field=capped.flat_field, flat_field_max_gain=cap)
        max_gain = float(capped.opto_layer().flat_field_gain(int(meta["height"]), int(meta["width"])).max())
        for name in args.models:
            result = evaluate_model(cfg, name, exp / "data", out / "evaluate" / f"cap_{text}" / name,
                                    inputs={"model": model_path, "frontend": str(path), "teacher": model_path})
            rows.append({"cap": text, "model": name, "abs_rel": float(result["metrics"]["abs_rel"]),
                         "a1": float(result["metrics"]["a1"]), "max_gain": max_gain})
            print(f"cap {text:>5} {name:>10}: AbsRel {rows[-1]['abs_rel']:.4f}, delta<1.25 {rows[-1]['a1']:.4f} "
                  f"(largest gain {max_gain:.3g})")
    write_csv(out / "flat_field_cap.csv", rows)
    if not args.no_mlflow:
        from dko.tracking import log_benchmark

        log_benchmark("flat_field_cap", {f"cap_{r['cap']}_{r['model']}_{k}": r[k] for r in rows for k in ("abs_rel", "a1")},
                      {"caps": " ".join(args.caps), "models": " ".join(args.models)},
                      files=[out / "flat_field_cap.csv"], results_dir=out.parent.parent)
    return rows


if __name__ == "__main__":
    main()
