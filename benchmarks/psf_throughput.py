"""PSF simulation throughput vs the bare batched FFT pair on the same padded grid (goal: ratio <= 2).

Run: ``python benchmarks/psf_throughput.py [--elements 96] [--n 128] [--device cpu|cuda] [--repeats 5]``

Times, side by side in one run and on the same device and dtype:
- ``psf``: :func:`dko.optics.psf.psf_from_transmission` for E elements (3 wavelengths, point source at
  the configured distance): illumination x transmission, zero padding, FFT, transfer function,
  inverse FFT, |U|^2, area resampling onto sensor pixels, normalisation;
- ``fft pair``: ``ifft2(fft2(u))`` of an (E, M, M) complex tensor, M the padded grid size;
- the same two with a backward pass (gradient w.r.t. the phase / the field).
Prints the medians and the ratios. Transfer functions and grids are cached (warm-up run first).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pathlib import Path

from dko.config import load_config
from dko.io import write_json
from dko.optics.psf import OpticalSystem, psf_from_phase
from dko.tracking import log_benchmark


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (caches, allocator, cuFFT plans)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=96, help="elements in the batch (E)")
    parser.add_argument("--config", default="config/config.yaml", help="config whose optics section is simulated")
    parser.add_argument("--n", type=int, default=None, help="superpixels per side (default: the config's)")
    parser.add_argument("--pad-factor", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/benchmarks/psf_throughput.json", help="JSON written here")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {"pad_factor": args.pad_factor}
    if args.n is not None:
        overrides["n_superpixels"] = args.n
    system = OpticalSystem.from_config(cfg.optics, **overrides)
    args.n = system.n_superpixels
    colours = tuple(cfg.optics.wavelengths_m)
    wavelengths = [colours[e % len(colours)] for e in range(args.elements)]
    distance_m = cfg.optics.object_distances_m[0]
    gen = torch.Generator(device="cpu").manual_seed(0)
    phase = (2 * torch.pi * torch.rand(args.elements, args.n, args.n, generator=gen)).to(device)
    m = system.padded_sim_size
    field = torch.randn(args.elements, m, m, dtype=torch.complex64, generator=gen).to(device)

    def psf_forward():
        with torch.no_grad():
            return psf_from_phase(phase, wavelengths, system, distance_m)

    def fft_forward():
        with torch.no_grad():
            return torch.fft.ifft2(torch.fft.fft2(field))

    phase_g = phase.clone().requires_grad_(True)
    field_g = field.clone().requires_grad_(True)

    def psf_backward():
        psf_from_phase(phase_g, wavelengths, system, distance_m).square().sum().backward()

    def fft_backward():
        out = torch.fft.ifft2(torch.fft.fft2(field_g))
        (out.real.square() + out.imag.square()).sum().backward()

    results = {
        "psf_forward_s": timeit(psf_forward, device, args.repeats),
        "fft_pair_forward_s": timeit(fft_forward, device, args.repeats),
        "psf_forward_backward_s": timeit(psf_backward, device, args.repeats),
        "fft_pair_forward_backward_s": timeit(fft_backward, device, args.repeats),
    }
    results["ratio_forward"] = results["psf_forward_s"] / results["fft_pair_forward_s"]
    results["ratio_forward_backward"] = results["psf_forward_backward_s"] / results["fft_pair_forward_backward_s"]
    print(f"device={device} threads={args.threads} E={args.elements} N={args.n} padded grid {m}x{m} complex64")
    print(f"  forward:          psf {results['psf_forward_s'] * 1e3:9.1f} ms   fft pair "
          f"{results['fft_pair_forward_s'] * 1e3:9.1f} ms   ratio {results['ratio_forward']:.2f}")
    print(f"  forward+backward: psf {results['psf_forward_backward_s'] * 1e3:9.1f} ms   fft pair "
          f"{results['fft_pair_forward_backward_s'] * 1e3:9.1f} ms   ratio {results['ratio_forward_backward']:.2f}")
    settings = {"device": str(device), "threads": args.threads, "elements": args.elements, "n_superpixels": args.n,
                "padded_grid": m, "pad_factor": args.pad_factor, "repeats": args.repeats, "config": args.config}
    write_json(args.out, {**settings, **results})
    print(f"wrote {args.out}")
    if not args.no_mlflow:
        log_benchmark("psf_throughput", results, settings, files=[args.out], results_dir=Path(args.out).parents[1])
    return results


if __name__ == "__main__":
    main()
