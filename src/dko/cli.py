"""``dko`` command line: one sub-command per user task.

Adding a command: write ``_add_<name>(subparsers)`` that creates its sub-parser and sets
``func=<callable(args) -> int | None>``, and append it to :data:`COMMANDS`. Heavy imports go inside
the command function so that ``dko --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Callable

log = logging.getLogger("dko.cli")

DEFAULT_CONFIG = "config/config.yaml"


def _load_cfg(path: str | None):
    from dko.config import config_from_dict, load_config

    if path is None:
        if Path(DEFAULT_CONFIG).is_file():
            return load_config(DEFAULT_CONFIG, check_paths=False)
        log.info("no --config and no %s: using the schema defaults", DEFAULT_CONFIG)
        return config_from_dict({}, check_paths=False)
    return load_config(path, check_paths=False)


def _distance(text: str) -> float | None:
    if text.lower() in ("inf", "infinity", "none", "null"):
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"object distance must be positive or 'inf', got {text}")
    return value


# ----------------------------------------------------------------------------- dko psf
def _add_psf(subparsers) -> None:
    p = subparsers.add_parser(
        "psf", help="simulate and plot the PSF of an ideal lens or of a saved metasurface design",
        description="Simulate PSFs with dko.optics.psf and save a figure (PNG) and the arrays (.npz next to it). "
                    "A design file is an .npz with 'wavelength_m' (E,) and one of 'radius_m' (E,N,N, metres; needs "
                    "the meta-atom library), 'phase' (E,N,N, radians) or 'transmission' (E,N,N complex).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ideal", action="store_true", help="hyperbolic lens per configured wavelength")
    source.add_argument("--design", type=Path, help="design .npz (see above)")
    p.add_argument("--config", help=f"config YAML (default {DEFAULT_CONFIG} if present, else schema defaults)")
    p.add_argument("--out", type=Path, default=Path("psf.png"), help="output figure (PNG); arrays go to <out>.npz")
    p.add_argument("--object-distance", type=_distance, nargs="+", dest="object_distances",
                   help="object distances in metres ('inf' = infinity; default optics.object_distances_m)")
    p.add_argument("--focus", type=_distance, default=None,
                   help="--ideal: object distance the lens is focused at (default infinity)")
    p.add_argument("--max-panels", type=int, default=12, help="elements shown per object distance")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=_run_psf)


def _design_transmission(path: Path, system, device):
    import numpy as np
    import torch

    if not path.is_file():
        raise ValueError(f"design file '{path}' does not exist")
    data = np.load(path)
    if "wavelength_m" not in data:
        raise ValueError(f"design file '{path}' lacks 'wavelength_m'")
    wavelengths = [float(w) for w in np.asarray(data["wavelength_m"]).reshape(-1)]
    if "transmission" in data:
        t = torch.as_tensor(np.asarray(data["transmission"]), device=device)
    elif "phase" in data:
        phase = torch.as_tensor(np.asarray(data["phase"], dtype=np.float64), device=device)
        t = torch.polar(torch.ones_like(phase), phase)
    elif "radius_m" in data:
        from dko.optics.metaatoms import MetaAtomLibrary
        from dko.optics.psf import transmission_for_elements

        radius = torch.as_tensor(np.asarray(data["radius_m"], dtype=np.float64), device=device)
        t = transmission_for_elements(MetaAtomLibrary.default(), radius, wavelengths)
    else:
        raise ValueError(f"design file '{path}' needs one of 'radius_m', 'phase', 'transmission'")
    if t.ndim == 2:
        t = t[None]
    if t.shape[0] != len(wavelengths):
        raise ValueError(f"design file '{path}': {t.shape[0]} elements but {len(wavelengths)} wavelengths")
    return t.to(system.dtype), wavelengths


def _run_psf(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.colors import PowerNorm

    from dko.config import resolve_device
    from dko.io import atomic_path
    from dko.optics.psf import (OpticalSystem, airy_first_zero_m, ideal_lens_transmission, psf_from_transmission)

    cfg = _load_cfg(args.config)
    device = resolve_device(args.device)
    system = OpticalSystem.from_config(cfg.optics)
    distances = args.object_distances or list(cfg.optics.object_distances_m)
    if args.ideal:
        wavelengths = list(cfg.optics.wavelengths_m)
        transmission = ideal_lens_transmission(system, wavelengths, args.focus, device=device)
        title = f"ideal lens, D = {system.aperture_m * 1e6:.1f} um, z_s = {system.sensor_distance_m * 1e3:.3f} mm"
    else:
        transmission, wavelengths = _design_transmission(args.design, system, device)
        title = f"design {args.design.name}"
    psfs, effs = [], []
    with torch.no_grad():
        for z in distances:
            psf, eff = psf_from_transmission(transmission, wavelengths, system, z, return_efficiency=True)
            psfs.append(psf.cpu().numpy())
            effs.append(eff.cpu().numpy())
    psfs, effs = np.stack(psfs), np.stack(effs)  # (D, E, P, P), (D, E)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    npz = args.out.with_suffix(".npz")
    with atomic_path(npz) as tmp:
        np.savez(tmp, psf=psfs, efficiency=effs, wavelength_m=np.asarray(wavelengths),
                 object_distance_m=np.asarray([math.inf if z is None else z for z in distances]),
                 pixel_pitch_m=system.pixel_pitch_m)

    n_show = min(len(wavelengths), args.max_panels)
    extra = 1 if args.ideal else 0
    fig, axes = plt.subplots(len(distances), n_show + extra, figsize=(2.6 * (n_show + extra), 2.6 * len(distances)),
                             squeeze=False)
    half = system.psf_size_px * system.pixel_pitch_m * 1e6 / 2
    c = system.psf_size_px // 2
    for d, z in enumerate(distances):
        zname = "inf" if z is None else f"{z:g} m"
        for e in range(n_show):
            ax = axes[d, e]
            ax.imshow(psfs[d, e], cmap="magma", extent=(-half, half, -half, half),
                      norm=PowerNorm(0.5, vmin=0.0))
            ax.set_title(f"{wavelengths[e] * 1e9:.0f} nm, z_o {zname}\nsum {psfs[d, e].sum():.3f} "
                         f"(all {effs[d, e]:.3f})", fontsize=7)
            ax.set_xlabel("x [um]", fontsize=7)
            ax.tick_params(labelsize=6)
        if extra:
            ax = axes[d, -1]
            x = (np.arange(system.psf_size_px) - c) * system.pixel_pitch_m * 1e6
            for e in range(n_show):
                ax.plot(x, psfs[d, e][c], marker=".", label=f"{wavelengths[e] * 1e9:.0f} nm")
                r0 = airy_first_zero_m(wavelengths[e], system.sensor_distance_m, system.aperture_m) * 1e6
                ax.axvline(r0, color=f"C{e}", ls=":", lw=0.8)
            ax.set_title("central row (dotted: Airy zeros)", fontsize=7)
            ax.set_xlabel("x [um]", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6)
    fig.suptitle(f"{title}; pixel {system.pixel_pitch_m * 1e6:.2f} um; images in sqrt scale", fontsize=8)
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    log.info("wrote %s and %s", args.out, npz)
    print(f"PSF figure: {args.out}  arrays: {npz}")
    for d, z in enumerate(distances):
        for e in range(len(wavelengths)):
            centre = psfs[d, e][c, c] / max(psfs[d, e].sum(), 1e-30)
            print(f"  z_o={'inf' if z is None else z} lambda={wavelengths[e]:.3e} m: window sum {psfs[d, e].sum():.4f}, "
                  f"efficiency {effs[d, e]:.4f}, centre-pixel fraction {centre:.3f}")
    return 0


COMMANDS: list[Callable] = [_add_psf]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dko", description="DKO: opto-electronic CNN design tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dko`` console script.

    From the console (``argv`` None) a ValueError / TypeError (bad input) prints one line and returns 2;
    called with an explicit ``argv`` (tests, other tools) it propagates.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        if argv is not None:
            raise
        print(f"dko {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
