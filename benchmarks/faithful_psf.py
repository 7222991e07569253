"""Faithful PSF model (dko.optics.faithful): throughput vs the bare FFT pair of its own grid, and what each term does.

Run: ``python benchmarks/faithful_psf.py [--config config/config.yaml] [--elements 4] [--device cpu|cuda]
[--threads 2] [--repeats 3] [--skip-throughput] [--skip-terms]``

1. **Throughput** at the config's geometry, for each configured wavelength (each has its own grid: samples per
   superpixel m = ceil(4 s / lambda), M = m x padded_size(N, pad_factor)): median seconds of
   :func:`dko.optics.faithful.faithful_psf` for E random-phase elements (complex64, object at the first configured
   distance, on axis, warm caches) side by side with ``ifft2(fft2(u))`` of an (E, M, M) complex64 tensor, and the
   ratio (goal <= 2), on axis and at 41 deg, for the default support grid and the full M x M grid
   (``support_grid=False``). Interleaved repeats, same device and dtype.
2. **Terms**: an ideal lens (:func:`dko.optics.psf.ideal_lens_transmission`, focused at infinity) at the config's
   geometry and the middle configured wavelength, object at the first configured distance; the faithful model with
   every term on, then with one term changed at a time: window light (= efficiency), centre pixel, light on the
   simulated plane, relative L2 difference of the window to the faithful one, and the smallest odd window holding
   99 % of the plane's light. Rows: the cheap model (:func:`dko.optics.psf.psf_from_transmission`: one sample per
   superpixel, cell-constant pixels, no Fresnel), one sample per superpixel (FFT route, m = 1, exact pixels: the
   intensity is then aliased), the FFT route at the auto m (sampled staircase), cell-constant pixels, Fresnel off,
   band limit off, both routes at twice the auto m (the change when m doubles: the convergence test), a 5 deg field
   angle (the window is centred on the chief ray), and a 40 nm flat band (spectral samples by convergence).
Writes ``--out`` (JSON). Timings on a loaded machine are noisy: rerun on an idle one before quoting them.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import replace

import torch

from dko.config import load_config
from dko.io import write_json
from dko.optics.faithful import (FaithfulNumerics, auto_samples_per_superpixel, band_psf, faithful_psf,
                                 window_for_fraction)
from dko.optics.propagation import padded_size
from dko.optics.psf import OpticalSystem, ideal_lens_transmission, psf_from_transmission


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, device: torch.device, repeats: int) -> dict:
    """Median seconds of each callable, warm-up first, the callables alternating within every repeat."""
    for fn in fns.values():
        fn()
    _sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def throughput(system: OpticalSystem, wavelengths, distance_m, elements: int, device, repeats: int,
               angles_deg=(0.0, 41.0)) -> list[dict]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    phase = 2 * math.pi * torch.rand(elements, system.n_superpixels, system.n_superpixels, generator=gen)
    t = torch.polar(torch.ones_like(phase), phase).to(device)
    numerics = FaithfulNumerics()
    full = replace(numerics, support_grid=False)
    rows = []
    for wl in wavelengths:
        m = auto_samples_per_superpixel(system.superpixel_m, wl)
        big = m * padded_size(system.n_superpixels, system.pad_factor)
        field = torch.randn(elements, big, big, dtype=torch.complex64, generator=gen).to(device)
        for angle_deg in angles_deg:
            angle = (math.radians(angle_deg), 0.0)
            with torch.no_grad():
                med = interleaved({
                    "faithful": lambda: faithful_psf(t, wl, system, numerics, angle, object_distance_m=distance_m),
                    "full_grid": lambda: faithful_psf(t, wl, system, full, angle, object_distance_m=distance_m),
                    "fft_pair": lambda: torch.fft.ifft2(torch.fft.fft2(field))}, device, repeats)
            rows.append({"wavelength_m": wl, "field_angle_x_deg": angle_deg, "samples_per_superpixel": m,
                         "grid": big, "faithful_s": med["faithful"], "full_grid_s": med["full_grid"],
                         "fft_pair_s": med["fft_pair"], "ratio": med["faithful"] / med["fft_pair"],
                         "full_grid_ratio": med["full_grid"] / med["fft_pair"]})
        del field
    return rows


def terms(system: OpticalSystem, wavelength_m: float, distance_m, device) -> list[dict]:
    t = ideal_lens_transmission(system, wavelength_m, device=device)[None]
    base = FaithfulNumerics()
    ref = faithful_psf(t, wavelength_m, system, base, object_distance_m=distance_m)
    c = (base.window_px - 1) // 2

    def row(name, psf, window, plane, image=None):
        diff = float((psf - ref.psf[0]).norm() / ref.psf[0].norm())
        size = window_for_fraction(image, 0.99) if image is not None else None
        return {"variant": name, "window": float(window), "centre_px": float(psf[c, c]), "on_plane": float(plane),
                "rel_l2_vs_faithful": diff, "window_99_px": size}

    def variant(name, numerics, **kwargs):
        r = faithful_psf(t, wavelength_m, system, numerics, object_distance_m=distance_m, **kwargs)
        return row(name, r.psf[0], r.ledger["window"][0], r.ledger["on_plane"][0], r.image[0])

    cheap_system = replace(system, psf_size_px=base.window_px)
    cheap, eff = psf_from_transmission(t, wavelength_m, cheap_system, distance_m, return_efficiency=True)
    rows = [variant("faithful (all terms)", base),
            row("cheap model (dko.optics.psf)", cheap[0].double(), cheap[0].sum(), eff[0]),
            variant("one sample per superpixel (fft, m=1)", replace(base, route="fft", samples_per_superpixel=1)),
            variant("sampled staircase (fft route, auto m)", replace(base, route="fft")),
            variant("cell-constant pixels", replace(base, exact_pixels=False)),
            variant("Fresnel off", replace(base, fresnel=False)),
            variant("band limit off", replace(base, band_limit=False)),
            variant("field angle 5 deg (chief-ray window)", base, field_angle_rad=(math.radians(5.0), 0.0))]
    for route in ("exact", "fft"):  # samples per superpixel: change of the window when m doubles
        m = auto_samples_per_superpixel(system.superpixel_m, wavelength_m)
        doubled = faithful_psf(t, wavelength_m, system, replace(base, route=route, samples_per_superpixel=2 * m),
                               object_distance_m=distance_m)
        at_m = ref if route == "exact" else faithful_psf(t, wavelength_m, system, replace(base, route=route),
                                                         object_distance_m=distance_m)
        change = float((doubled.psf[0] - at_m.psf[0]).norm() / doubled.psf[0].norm())
        rows.append(row(f"{route} route, m={2 * m} (change m->2m {change:.1e})", doubled.psf[0],
                        doubled.ledger["window"][0], doubled.ledger["on_plane"][0], doubled.image[0]))
        del doubled
    band, info = band_psf(lambda wl, angle: t, system, base, wavelength_m, 4e-8, object_distance_m=distance_m)
    rows.append(row(f"40 nm flat band ({info['n_samples']} samples)", band[0], info["ledger"]["window"][0],
                    info["ledger"]["on_plane"][0]))
    return rows, ref


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config whose optics section is simulated")
    parser.add_argument("--elements", type=int, default=4, help="elements in the throughput batch (E)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-terms", action="store_true")
    parser.add_argument("--out", default="results/benchmarks/faithful_psf.json", help="JSON written here")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    system = OpticalSystem.from_config(cfg.optics)
    wavelengths = list(cfg.optics.wavelengths_m)
    distance_m = cfg.optics.object_distances_m[0]
    result = {"config": args.config, "device": str(device), "threads": args.threads, "elements": args.elements,
              "repeats": args.repeats, "n_superpixels": system.n_superpixels, "superpixel_m": system.superpixel_m,
              "sensor_distance_m": system.sensor_distance_m, "pixel_pitch_m": system.pixel_pitch_m,
              "pad_factor": system.pad_factor, "object_distance_m": distance_m,
              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print(f"geometry: N={system.n_superpixels} s={system.superpixel_m * 1e6:.2f} um "
          f"z_s={system.sensor_distance_m * 1e6:.0f} um p={system.pixel_pitch_m * 1e6:.2f} um pad={system.pad_factor} "
          f"z_o={distance_m} m; device={device} threads={args.threads} load average {result['load_average']}")
    if not args.skip_throughput:
        rows = throughput(system, wavelengths, distance_m, args.elements, device, args.repeats)
        result["throughput"] = rows
        print(f"\nthroughput, E={args.elements} random-phase elements, complex64, median of {args.repeats}")
        print(f"{'lambda nm':>9} {'angle':>5} {'m':>3} {'grid M':>7} {'faithful s':>11} {'full grid s':>11} "
              f"{'fft pair s':>11} {'ratio':>6} {'full':>6}")
        for r in rows:
            print(f"{r['wavelength_m'] * 1e9:9.0f} {r['field_angle_x_deg']:5.0f} {r['samples_per_superpixel']:3d} "
                  f"{r['grid']:7d} {r['faithful_s']:11.3f} {r['full_grid_s']:11.3f} {r['fft_pair_s']:11.3f} "
                  f"{r['ratio']:6.2f} {r['full_grid_ratio']:6.2f}")
    if not args.skip_terms:
        wl = wavelengths[len(wavelengths) // 2]
        rows, ref = terms(system, wl, distance_m, device)
        result["terms"] = rows
        result["faithful_ledger"] = {k: float(v[0]) for k, v in ref.ledger.items()}
        print(f"\nterms: ideal lens at {wl * 1e9:.0f} nm, window {FaithfulNumerics().window_px} px "
              f"(fractions of the incident power)")
        print(f"{'variant':42s} {'window':>7} {'centre':>7} {'plane':>7} {'L2 diff':>8} {'99% win':>8}")
        for r in rows:
            size = "-" if r["window_99_px"] is None else str(r["window_99_px"])
            print(f"{r['variant']:42s} {r['window']:7.4f} {r['centre_px']:7.4f} {r['on_plane']:7.4f} "
                  f"{r['rel_l2_vs_faithful']:8.4f} {size:>8}")
        print("\nfaithful ledger: " + ", ".join(f"{k} {v:.4f}" for k, v in result["faithful_ledger"].items()))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
