"""Convergence of the meta-atom transmission (Fourier order, factorisation, grid, solver) and its angle dependence.

Run: ``.venv/bin/python benchmarks/metaatom_convergence.py [--threads 1] [--order11] [--json out.json]``
(default settings: ~5-6 min of one CPU core; ``--order11`` adds the order-11 solves of r = 120 nm at 460 nm,
~2 min more; ``--quick`` is a 15 s smoke test at orders - 4 on a 64x64 grid, not a measurement).

Prints, at the shipped table's physics (TiO2 n 2.4, h 600 nm, period 300 nm, SiO2 1.46, 256x256 grid):

A. t at normal incidence for 6 table radii (incl. the 460 nm resonances at 75 and 120 nm) at Fourier
   orders 5, 7, 9 (460 nm) and 5, 7 (550 / 640 nm), for torcwa's Laurent factorisation (order 7 is
   the shipped table, read from it) and for the normal-vector factorisation
   (:mod:`dko.optics.rcwa_oblique`), with the phase / |t| change between successive orders and the
   gap between the two factorisations;
B. meent (independent code) against torcwa at matched truncation and factorisation (Laurent, order 7,
   460 nm), and meent's own (Li) factorisation against normal-vector at order 9 (460 nm);
C. grid 512 vs 256 (order 7, r = 90 / 105 / 120 nm, 460 nm, both factorisations);
D. t(theta) at 0 / 10 / 20 / 30 degrees (in air) for r = 60 and 105 nm at the three wavelengths,
   s and p, normal-vector factorisation, order 7, and the diffraction onsets;
E. the resonance flags of the shipped table (|dt/dr| criterion) and the seconds per solve, with the
   extrapolated cost of a full t(r, lambda, theta, pol) table.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.rcwa_oblique import (
    diffraction_onset_angles_rad,
    difference_stats,
    flag_resonances,
    solve_transmission_meent,
    solve_transmission_oblique,
)

PHYS = dict(pillar_index=2.4, substrate_index=1.46, pillar_height_m=6e-7, period_m=3e-7)
RADII_NM = [45.0, 75.0, 90.0, 105.0, 120.0, 130.0]
BLUE, GREEN, RED = 4.6e-7, 5.5e-7, 6.4e-7
TIMES: dict[tuple[str, int], list[float]] = {}
SHIFT = 0  # --quick: every Fourier order minus 4 and a 64x64 grid (a smoke test of the script, not a measurement)
GRID = 256


def solve(radii_m, wls, angles, order, factorisation, grid_points=None, pols=("s", "p")):
    order, grid_points = order + SHIFT, grid_points or GRID
    t0 = time.perf_counter()
    t = solve_transmission_oblique(radii_m, wls, angles, order=order, factorisation=factorisation, polarisations=pols,
                                   grid_points=grid_points, **PHYS)
    n = len(radii_m) * len(wls) * len(angles)
    TIMES.setdefault((factorisation, order), []).append((time.perf_counter() - t0) / n)
    return t


def fmt(t: complex) -> str:
    return f"{abs(t):.3f} {np.angle(t):+.3f}"


def section_a(lib: MetaAtomLibrary, out: dict) -> dict:
    radii = np.array(RADII_NM) * 1e-9
    idx = [int(np.argmin(np.abs(lib.radii_m - r))) for r in radii]
    assert np.allclose(lib.radii_m[idx], radii, atol=1e-12), "benchmark radii must be table radii"
    plan = {BLUE: (5, 7, 9), GREEN: (5, 7), RED: (5, 7)}
    results: dict = {}
    for fac in ("laurent", "normal_vector"):
        for wl, orders in plan.items():
            for order in orders:
                if fac == "laurent" and order == 7 and SHIFT == 0:  # the shipped table (x = p, normal incidence)
                    iw = int(np.argmin(np.abs(lib.wavelengths_m - wl)))
                    t = lib.table[iw, idx]
                else:
                    t = solve(radii, [wl], [0.0], order, fac, pols=("p",))[:, 0, 0, 0]
                results[fac, wl, order] = t
    print("\nA. normal incidence, |t| and phase (rad) per Fourier order; L = Laurent (torcwa, table), "
          "NV = normal vector")
    for wl, orders in plan.items():
        print(f"\n  lambda {wl * 1e9:.0f} nm")
        head = "  r(nm) | " + " | ".join(f"{f} o{o:<2d}       " for f in ("L", "NV") for o in orders)
        print(head)
        for i, r in enumerate(RADII_NM):
            cells = [fmt(results[f, wl, o][i]) for f in ("laurent", "normal_vector") for o in orders]
            print(f"  {r:5.0f} | " + " | ".join(cells))
        for fac in ("laurent", "normal_vector"):
            for lo, hi in zip(orders, orders[1:]):
                st = difference_stats(results[fac, wl, lo], results[fac, wl, hi])
                out.setdefault("orders", {})[f"{fac} {wl:.3e} {lo}->{hi}"] = st
                print(f"  {fac:13s} o{lo}->o{hi}: dphase median {st['median_dphase_rad']:.3f} max "
                      f"{st['max_dphase_rad']:.3f} rad; d|t| median {st['median_damp']:.3f} max {st['max_damp']:.3f}")
        st = difference_stats(results["laurent", wl, orders[-1]], results["normal_vector", wl, orders[-1]])
        out.setdefault("factorisation_gap", {})[f"{wl:.3e} o{orders[-1]}"] = st
        print(f"  L vs NV at o{orders[-1]}: dphase median {st['median_dphase_rad']:.3f} max {st['max_dphase_rad']:.3f} "
              f"rad; d|t| median {st['median_damp']:.3f} max {st['max_damp']:.3f}")
    return results


def section_a11(results: dict, out: dict) -> None:
    print("\nA'. r = 120 nm at 460 nm, order 11 (both factorisations)")
    for fac in ("laurent", "normal_vector"):
        t11 = solve([1.2e-7], [BLUE], [0.0], 11, fac, pols=("p",))[0, 0, 0, 0]
        t9 = results[fac, BLUE, 9][RADII_NM.index(120.0)]
        out.setdefault("order11", {})[fac] = [abs(t11), float(np.angle(t11))]
        print(f"  {fac:13s} o9 {fmt(t9)}  o11 {fmt(t11)}  dphase {abs(np.angle(t11 * np.conj(t9))):.3f} rad, "
              f"d|t| {abs(abs(t11) - abs(t9)):.3f}")


def _meent_at_blue(order: int, factorisation: str) -> tuple[np.ndarray, float]:
    """meent's p-polarised t of RADII_NM at 460 nm, normal incidence, and its seconds per solve."""
    radii = np.array(RADII_NM) * 1e-9
    t0 = time.perf_counter()
    t = solve_transmission_meent(radii, [BLUE], [0.0], order=order + SHIFT, polarisations=("p",), grid_points=GRID,
                                 factorisation=factorisation, **PHYS)[:, 0, 0, 0]
    return t, (time.perf_counter() - t0) / len(radii)


def section_b(results: dict, out: dict) -> None:
    m, sec = _meent_at_blue(7, "laurent")
    st = difference_stats(results["laurent", BLUE, 7], m)
    out["meent_laurent_vs_torcwa_o7"] = dict(st, seconds_per_solve=sec)
    print(f"\nB. meent (Laurent) vs torcwa (Laurent, table) at order 7, 460 nm, 6 radii: dphase median "
          f"{st['median_dphase_rad']:.2e} "
          f"max {st['max_dphase_rad']:.2e} rad; d|t| max {st['max_damp']:.2e} ({sec:.1f} s per meent solve)")
    li, sec = _meent_at_blue(9, "li")
    st = difference_stats(results["normal_vector", BLUE, 9], li)
    out["meent_li_vs_nv_o9"] = dict(st, seconds_per_solve=sec)
    print(f"  meent (Li) vs torcwa NV at order 9, 460 nm: dphase median {st['median_dphase_rad']:.3f} max "
          f"{st['max_dphase_rad']:.3f} rad; d|t| max {st['max_damp']:.3f} ({sec:.1f} s per meent solve)")
    print("  r(nm) | meent Li o9   | NV o9")
    for i, r in enumerate(RADII_NM):
        print(f"  {r:5.0f} | {fmt(li[i])} | {fmt(results['normal_vector', BLUE, 9][i])}")


def section_c(results: dict, out: dict) -> None:
    radii_nm = [90.0, 105.0, 120.0]
    print(f"\nC. grid {2 * GRID} vs {GRID} (order 7, r = {radii_nm} nm, 460 nm)")
    for fac in ("laurent", "normal_vector"):
        t512 = solve(np.array(radii_nm) * 1e-9, [BLUE], [0.0], 7, fac, grid_points=2 * GRID, pols=("p",))[:, 0, 0, 0]
        for i, r in enumerate(radii_nm):
            t256 = results[fac, BLUE, 7][RADII_NM.index(r)]
            dphi = abs(float(np.angle(t512[i] * np.conj(t256))))
            out.setdefault("grid", {})[f"{fac} {r:.0f}"] = [abs(abs(t512[i]) - abs(t256)), dphi]
            print(f"  {fac:13s} r {r:3.0f}: {GRID} {fmt(t256)}  {2 * GRID} {fmt(t512[i])}  dphase {dphi:.4f} rad")


def section_d(out: dict) -> None:
    radii_nm, degs, wls = [60.0, 105.0], [0.0, 10.0, 20.0, 30.0], [BLUE, GREEN, RED]
    t = solve(np.array(radii_nm) * 1e-9, wls, np.radians(degs), 7, "normal_vector")
    print("\nD. angle dependence (angle in air, plane of incidence x-z), NV order 7: |t| phase (rad); "
          "d = phase change vs 0 deg")
    for j, wl in enumerate(wls):
        on = diffraction_onset_angles_rad(wl, period_m=PHYS["period_m"], substrate_index=PHYS["substrate_index"])
        onset = ", ".join(f"{k} {math.degrees(v):.1f} deg" if v is not None else f"{k} none" for k, v in on.items())
        print(f"\n  lambda {wl * 1e9:.0f} nm (first diffraction order opens: {onset})")
        print("  r(nm) pol | " + " | ".join(f"{d:4.0f} deg            " for d in degs))
        for i, r in enumerate(radii_nm):
            for q, pol in enumerate(("s", "p")):
                cells = []
                for k in range(len(degs)):
                    dphi = np.angle(t[i, j, k, q] * np.conj(t[i, j, 0, q]))
                    cells.append(f"{fmt(t[i, j, k, q])} d{dphi:+.2f}")
                print(f"  {r:5.0f}  {pol}  | " + " | ".join(cells))
    out["angles"] = {"radii_nm": radii_nm, "degrees": degs, "wavelengths_m": wls,
                     "abs": np.abs(t).tolist(), "phase_rad": np.angle(t).tolist()}


def section_e(lib: MetaAtomLibrary, out: dict) -> None:
    print("\nE. resonance flags of the shipped table (order 7, Laurent; |dt/dr| > 4 x median, margin 1)")
    mask, det = flag_resonances(lib.table.T, lib.radii_m, return_details=True)
    print(f"  flagged {mask.sum()} of {mask.size} radii: {np.round(lib.radii_m[mask] * 1e9, 1).tolist()} nm")
    for iw, wl in enumerate(lib.wavelengths_m):
        m = flag_resonances(lib.table[iw][:, None], lib.radii_m)
        print(f"  {wl * 1e9:.0f} nm alone: {np.round(lib.radii_m[m] * 1e9, 1).tolist()}")
    out["flags_nm"] = (lib.radii_m[mask] * 1e9).tolist()
    print("\n  seconds per solve (this run; one solve gives s and p):")
    for (fac, order), ts in sorted(TIMES.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  {fac:13s} order {order:2d}: {np.median(ts):6.2f} s")
    out["seconds_per_solve"] = {f"{f} {o}": float(np.median(ts)) for (f, o), ts in TIMES.items()}
    n_r, n_wl = lib.radii_m.size, lib.wavelengths_m.size
    for (fac, order), ts in sorted(TIMES.items()):
        if fac != "normal_vector":
            continue
        for n_ang in (4, 7):
            hours = n_r * n_wl * n_ang * float(np.median(ts)) / 3600
            print(f"  full table {n_r} radii x {n_wl} wl x {n_ang} angles x 2 pol, NV order {order}: "
                  f"{hours:.2f} core-hours (one core, this machine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--order11", action="store_true", help="also solve r = 120 nm at 460 nm at order 11")
    parser.add_argument("--json", default=None, help="write the numbers to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke test: orders - 4, 64x64 grid (seconds)")
    args = parser.parse_args()
    global SHIFT, GRID
    if args.quick:
        SHIFT, GRID = -4, 64
        print("QUICK MODE: orders below are nominal; solved at nominal - 4 on a 64x64 grid")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lib = MetaAtomLibrary.default()
    out: dict = {"settings": dict(PHYS, grid_points=256, radii_nm=RADII_NM)}
    results = section_a(lib, out)
    if args.order11:
        section_a11(results, out)
    section_b(results, out)
    section_c(results, out)
    section_d(out)
    section_e(lib, out)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s with {args.threads} thread(s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
