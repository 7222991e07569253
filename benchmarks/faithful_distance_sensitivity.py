"""How much the faithful PSFs of the default design change with the object distance (the dko_layered question).

Run (after ``make run``): ``python benchmarks/faithful_distance_sensitivity.py [results/benchmarks/faithful_distance]
[--exp results/default] [--config config/config.yaml] [--field 0 0] [--threads 2] [--no-mlflow]``

The DKO design's radii read back from ``dko/array.gds``, the run's meta-atom tables (``faithful.metaatom_model`` as
configured: the oblique, unpolarised table by default), every element's band-integrated faithful PSF
(:func:`dko.optics.faithful.band_psf`, ``faithful.image_spectral_samples`` per passband) at the field angle
``--field`` (degrees, x y; it must be one of the table's directions: the axis or a ``faithful_frontend`` node) for
each of ``dko.fidelity_distances_m`` (the depth layers of the ``dko_layered`` evaluation) and the design distance.
Per distance the relative L2 difference of each element's PSF to the design distance's, median and max over the
elements. Writes ``faithful_distance_sensitivity.json`` and logs it to the MLflow experiment ``benchmarks``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from dko.config import load_config
from dko.frontend.design import element_pitch_m
from dko.frontend.faithful import _TableDispersion, filled_radii, read_gds_radii, transmission_fn
from dko.frontend.file import load_frontend
from dko.io import write_json
from dko.optics.faithful import FaithfulNumerics, band_psf
from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.oblique_table import ObliqueTable
from dko.optics.psf import OpticalSystem


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", default="results/benchmarks/faithful_distance")
    parser.add_argument("--exp", default="results/default")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--field", type=float, nargs=2, default=(0.0, 0.0), metavar=("X_DEG", "Y_DEG"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    exp, out = Path(args.exp), Path(args.out)
    cfg = load_config(args.config)
    fc = cfg.faithful
    frontend = load_frontend(exp / "dko" / "frontend.npz")
    system = OpticalSystem.from_config(cfg.optics)
    radii = read_gds_radii(exp / "dko" / "array.gds", frontend.element_centers_m, system.n_superpixels,
                           system.superpixel_m)
    radius = filled_radii(frontend, system, radii)
    table = _TableDispersion(MetaAtomLibrary.load(exp / "metaatoms" / "library.npz"))
    oblique = ObliqueTable.load(exp / "metaatoms" / "oblique.npz") if fc.metaatom_model == "oblique" else None
    pitch = element_pitch_m(cfg)
    numerics = FaithfulNumerics(samples_per_superpixel=fc.samples_per_superpixel, route=fc.route,
                                exact_pixels=fc.exact_pixels, fresnel=fc.fresnel,
                                substrate_index=cfg.metaatoms.substrate_index,
                                window_px=int(fc.image_window_px or frontend.psfs.shape[-1]), pad_factor=fc.pad_factor,
                                element_pitch_m=(pitch, pitch), max_batch=fc.batch_size)
    angle = tuple(math.radians(a) for a in args.field)
    design = frontend.distances[0]
    distances = [design] + [d for d in cfg.dko.fidelity_distances_m if d != design]
    bank = frontend.bank
    psfs = {}
    for d in distances:
        parts = []
        for c in sorted({int(v) for v in bank.in_channel.tolist()}):
            idx = torch.nonzero(bank.in_channel == c).flatten()
            fn = transmission_fn(cfg, table, oblique, radius[idx])
            psf, _ = band_psf(fn, system, numerics, float(bank.wavelength_m[int(idx[0])]), float(fc.passband_fwhm_m[c]),
                              shape=fc.passband_shape, n_samples=fc.image_spectral_samples, field_angle_rad=angle,
                              object_distance_m=d)
            parts.append((idx, psf))
        full = torch.zeros(bank.n_elements, *parts[0][1].shape[-2:], dtype=torch.float64)
        for idx, psf in parts:
            full[idx] = psf
        psfs[d] = full
    rows = []
    for d in distances[1:]:
        diff = ((psfs[d] - psfs[design]).flatten(1).norm(dim=1)
                / psfs[design].flatten(1).norm(dim=1).clamp_min(1e-300)).tolist()
        rows.append({"object_distance_m": d, "median_rel_diff": statistics.median(diff), "max_rel_diff": max(diff)})
        print(f"z_o = {d:g} m vs {design:g} m: faithful PSF relative L2 difference median {rows[-1]['median_rel_diff']:.2e}"
              f", max {rows[-1]['max_rel_diff']:.2e} ({bank.n_elements} elements, field {args.field} deg)")
    summary = {"design_distance_m": design, "field_angle_deg": list(args.field), "metaatom_model": fc.metaatom_model,
               "spectral_samples": fc.image_spectral_samples, "n_elements": bank.n_elements, "rows": rows}
    path = out / "faithful_distance_sensitivity.json"
    write_json(path, summary)
    if not args.no_mlflow:
        from dko.tracking import log_benchmark

        metrics = {f"z{r['object_distance_m']:g}m_{k}": r[k] for r in rows for k in ("median_rel_diff", "max_rel_diff")}
        log_benchmark("faithful_distance_sensitivity", metrics, {"field_deg": list(args.field)}, files=[path])
    return summary


if __name__ == "__main__":
    main()
