"""Convergence of the faithful image formation (rule faithful_frontend) in its field grid and spectral samples.

Run (after ``make run``): ``python benchmarks/faithful_image_convergence.py [results/benchmarks/faithful_image_convergence]
[--exp results/default] [--config config/config.yaml] [--elements 12] [--images 8]
[--settings 1x1:3 2x3:3 3x3:2 3x3:3 3x5:2 3x5:3 3x5:5 5x9:3] [--reference 5x9:5] [--tolerance 0.01] [--threads 2]
[--depth 5x9:3 3x5:3 3x3:3 1x1:3] [--no-mlflow]``

The default run's DKO design (``dko/frontend.npz``, its radii read back from ``dko/array.gds``, the run's meta-atom
table): ``--elements`` elements spread over the bank, each setting ``FyxFx:S`` (field grid, spectral samples per
passband) built with :func:`dko.frontend.faithful_frontend.faithful_frontend` (every other faithful term as
configured), then the first ``--images`` test images formed through it (:class:`dko.frontend.layer.OptoConv1`:
per-element sensor images, flat-field corrected when configured, decoded to linear light as the evaluations do).
Per element the relative L2 difference of its contribution to conv1 (sensor images times its calibrated gain)
against the reference setting, median and max over the elements; the cheap model's shift-invariant contribution
(``frontend.npz`` as optimised, its own gains) against the same reference for scale. A setting is *converged* when
its median difference is below ``--tolerance`` (the issue's "< 1 % when the sampling is doubled": the reference
doubles the grid's intervals and samples the band finer); ``recommended`` is the cheapest converged setting (fewest
PSFs = nodes x samples). Writes ``faithful_image_convergence.csv`` (one row per setting) and ``.json`` (with the
per-element values and the time per setting), and logs them to the MLflow experiment ``benchmarks``.

``--depth S0 S1 ...`` (optional, minutes per setting): the figure the pipeline reports, for the whole design: each
setting's faithful front end of every element, then the test AbsRel of models ``dko`` and ``dko_noisy``
(:func:`dko.catalogue.evaluate_model`, as rule ``evaluate`` runs them) and their relative change against the first
setting ``S0`` (the reference). Rows ``depth_rows`` in the JSON, ``faithful_depth_convergence.csv``.

The pillars are the cheap model's normal-incidence table here (``faithful.metaatom_model: normal_incidence``): the
faithful meta-atom table holds only the configuration's own node directions and passband wavelengths, and this study
is of the image formation's sampling (how many nodes, how many wavelengths), which the pillars' model does not set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dko.config import load_config
from dko.data.format import batch_to_tensors, input_decoding, load_split
from dko.frontend.faithful import read_gds_radii
from dko.frontend.faithful_frontend import faithful_frontend
from dko.frontend.file import FrontEnd, load_frontend
from dko.frontend.layer import OptoConv1
from dko.io import read_json, write_csv, write_json
from dko.optics.metaatoms import MetaAtomLibrary


def parse_setting(text: str) -> tuple[tuple[int, int], int]:
    """``"3x5:3"`` -> ((3, 5), 3)."""
    try:
        grid, samples = text.split(":")
        fy, fx = (int(v) for v in grid.lower().split("x"))
        return (fy, fx), int(samples)
    except ValueError as exc:
        raise ValueError(f"setting {text!r} is not FyxFx:S (e.g. 3x5:3)") from exc


def subset(frontend: FrontEnd, index: list[int]) -> FrontEnd:
    """The front end restricted to elements ``index``."""
    idx = np.asarray(index)
    return dataclasses.replace(frontend, bank=frontend.bank.subset(torch.as_tensor(idx)), radius_m=frontend.radius_m[idx],
                               psfs=frontend.psfs[:, idx], efficiency=frontend.efficiency[:, idx],
                               gains=frontend.gains[idx], element_centers_m=frontend.element_centers_m[idx])


def sensor_images(fe: FrontEnd, psfs: np.ndarray, flat_field: bool, images: torch.Tensor) -> torch.Tensor:
    """(B, E, h, w) each element's contribution to conv1, ``g_e S_e``: the noise-free sensor images of ``images``
    through PSFs (1, [Fy, Fx,] E, W, W), flat-field corrected when asked, times the element's calibrated gain."""
    layer = OptoConv1(fe.calibrated_bank(), torch.as_tensor(psfs, dtype=torch.float64), fe.distances[:1],
                      flat_field=flat_field)
    with torch.no_grad():
        s = layer.sensor_images(images.double())
        if layer.shading_corrected:
            s = s * layer.flat_field_gain(images.shape[-2], images.shape[-1])[None]
    return s * layer.gains.to(s.dtype)[None, :, None, None]


def rel_diff(a: torch.Tensor, ref: torch.Tensor) -> list[float]:
    """Per element ||a - ref|| / ||ref|| over all images and pixels."""
    num = (a - ref).transpose(0, 1).flatten(1).norm(dim=1)
    return (num / ref.transpose(0, 1).flatten(1).norm(dim=1).clamp_min(1e-300)).tolist()


def depth_convergence(cfg, exp: Path, frontend: FrontEnd, library, radii, settings: list[str], out: Path) -> list[dict]:
    """Test AbsRel of ``dko`` / ``dko_noisy`` with each setting's faithful front end of the whole design; the first
    setting is the reference (module docstring)."""
    from dko.catalogue import evaluate_model
    from dko.frontend.file import save_frontend

    rows, reference = [], {}
    model_path = str(exp / "stage1" / "model.pt")
    for text in settings:
        grid, samples = parse_setting(text)
        faithful = dataclasses.replace(cfg.faithful, field_grid=grid, image_spectral_samples=samples,
                                       metaatom_model="normal_incidence")
        t0 = time.perf_counter()
        arrays, _ = faithful_frontend(dataclasses.replace(cfg, faithful=faithful), frontend, library, radii,
                                      progress=False)
        build_s = time.perf_counter() - t0
        path = out / "frontends" / f"{text.replace(':', '_s')}.npz"
        save_frontend(path, **arrays)
        for name in ("dko", "dko_noisy"):
            t0 = time.perf_counter()
            result = evaluate_model(cfg, name, exp / "data", out / "evaluate" / text.replace(":", "_s") / name,
                                    inputs={"model": model_path, "frontend": str(path), "teacher": model_path})
            abs_rel = float(result["metrics"]["abs_rel"])
            reference.setdefault(name, abs_rel)
            rows.append({"setting": text, "model": name, "field_grid": f"{grid[0]}x{grid[1]}",
                         "spectral_samples": samples, "abs_rel": abs_rel, "a1": float(result["metrics"]["a1"]),
                         "abs_rel_rel_change": abs(abs_rel - reference[name]) / reference[name],
                         "frontend_s": build_s, "evaluate_s": time.perf_counter() - t0})
            print(f"depth {text} {name}: AbsRel {abs_rel:.4f} (front end {build_s:.0f} s)", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="results/benchmarks/faithful_image_convergence")
    parser.add_argument("--exp", default="results/default")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--elements", type=int, default=12)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--settings", nargs="+",
                        default=["1x1:3", "2x3:3", "3x3:2", "3x3:3", "3x5:2", "3x5:3", "3x5:5", "5x9:3"])
    parser.add_argument("--reference", default="5x9:5")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", nargs="*", default=[], help="settings for the depth-level check (first = reference)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    exp, out = Path(args.exp), Path(args.out)
    cfg = load_config(args.config)
    full = load_frontend(exp / "dko" / "frontend.npz")
    system = full.system
    radii = read_gds_radii(exp / "dko" / "array.gds", full.element_centers_m, system.n_superpixels, system.superpixel_m)
    library = MetaAtomLibrary.load(exp / "metaatoms" / "library.npz")
    index = sorted(set(np.linspace(0, full.n_elements - 1, min(args.elements, full.n_elements)).round().astype(int).tolist()))
    fe = subset(full, index)
    meta = read_json(exp / "data" / "meta.json")
    split = load_split(exp / "data", "test")
    raw = np.asarray(split.images[:args.images])
    images, _ = batch_to_tensors(raw, np.zeros(raw.shape[:3], np.float32), input_decoding(meta))
    results, timing = {}, {}
    for text in [args.reference, *args.settings]:
        grid, samples = parse_setting(text)
        faithful = dataclasses.replace(cfg.faithful, field_grid=grid, image_spectral_samples=samples,
                                       metaatom_model="normal_incidence")
        t0 = time.perf_counter()
        arrays, _ = faithful_frontend(dataclasses.replace(cfg, faithful=faithful), fe, library, radii[index],
                                      progress=False)
        timing[text] = time.perf_counter() - t0
        results[text] = sensor_images(dataclasses.replace(fe, gains=arrays["gains"]), arrays["psfs"],
                                      cfg.faithful.flat_field, images)
        print(f"{text}: {timing[text]:.1f} s", file=sys.stderr)
    ref = results[args.reference]
    cheap = sensor_images(fe, fe.psfs[:1], False, images)
    rows, per_element = [], {}
    for text in [*args.settings, "cheap"]:
        values = rel_diff(cheap if text == "cheap" else results[text], ref)
        per_element[text] = values
        grid, samples = ((1, 1), 1) if text == "cheap" else parse_setting(text)
        median = statistics.median(values)
        rows.append({"setting": text, "field_grid": f"{grid[0]}x{grid[1]}", "spectral_samples": samples,
                     "n_psfs_per_element": grid[0] * grid[1] * samples,
                     "median_rel_diff": median, "max_rel_diff": max(values), "min_rel_diff": min(values),
                     "converged": text != "cheap" and median < args.tolerance,
                     "wall_s": timing.get(text, float("nan"))})
    converged = [r for r in rows if r["converged"]]
    recommended = min(converged, key=lambda r: (r["n_psfs_per_element"], r["median_rel_diff"]))["setting"] \
        if converged else None
    summary = {"reference": args.reference, "elements": index, "n_images": int(images.shape[0]),
               "image_size": list(images.shape[-2:]), "flat_field": cfg.faithful.flat_field,
               "relative_illumination": cfg.faithful.relative_illumination, "rows": rows,
               "tolerance": args.tolerance, "recommended": recommended,
               "per_element_rel_diff": per_element, "reference_wall_s": timing[args.reference]}
    write_csv(out / "faithful_image_convergence.csv", rows)
    write_json(out / "faithful_image_convergence.json", summary)
    for row in rows:
        print(f"{row['setting']:>8}: sensor images vs {args.reference}: median {row['median_rel_diff']:.4f}, "
              f"max {row['max_rel_diff']:.4f} ({row['n_psfs_per_element']} PSFs per element, {row['wall_s']:.1f} s)")
    print(f"cheapest setting within {args.tolerance:g} of the reference: {recommended}")
    files = [out / "faithful_image_convergence.csv", out / "faithful_image_convergence.json"]
    if args.depth:
        summary["depth_rows"] = depth_convergence(cfg, exp, full, library, radii, args.depth, out)
        write_csv(out / "faithful_depth_convergence.csv", summary["depth_rows"])
        write_json(out / "faithful_image_convergence.json", summary)
        files.append(out / "faithful_depth_convergence.csv")
    if not args.no_mlflow:
        from dko.tracking import log_benchmark

        metrics = {f"{r['setting'].replace(':', '_s')}_{key}": r[key] for r in rows
                   for key in ("median_rel_diff", "max_rel_diff")}
        metrics.update({f"depth_{r['setting'].replace(':', '_s')}_{r['model']}_{key}": r[key]
                        for r in summary.get("depth_rows", []) for key in ("abs_rel", "abs_rel_rel_change")})
        log_benchmark("faithful_image_convergence", metrics,
                      {"reference": args.reference, "recommended": str(recommended), "tolerance": str(args.tolerance),
                       "elements": str(len(index)), "images": str(int(images.shape[0]))},
                      files=files, results_dir=out.parent.parent)
    return summary


if __name__ == "__main__":
    main()
