"""Stage 2 as pipeline steps: shard optimisation, assembly (frontend.npz, fidelity.csv, budget.json), GDSII."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from dko.config import config_from_dict
from dko.frontend import build_kernel_bank, evaluation_distances, ideal_psfs, initial_designs, load_frontend, shards
from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.psf import OpticalSystem
from dko.stage2 import (aggregate_budgets, assemble_frontend, fidelity_table, load_shard, optimize_shard,
                        summarize_fidelity, write_frontend_gds)

torch.set_num_threads(2)
WLS = [6.4e-7, 5.5e-7, 4.6e-7]


def _cfg(tmp_path, **dko):
    return config_from_dict({
        "results_dir": str(tmp_path), "seed": 1,
        "optics": {"n_superpixels": 24, "superpixel_m": 1.2e-6, "sensor_distance_m": 2.0e-4, "psf_size_px": 15, "object_distances_m": [10.0, 2.0]},
        "dko": {"steps": 6, "shard_size": 1, "lr": 0.05, "plateau_patience": 0, "checkpoint_every": 2,
                "fidelity_distances_m": [1.0, None, 10.0], **dko},
    })


@pytest.fixture(scope="module")
def library():
    return MetaAtomLibrary.default()


@pytest.fixture(scope="module")
def bank():
    torch.manual_seed(0)
    w = torch.randn(2, 3, 7, 7)
    w[1, 2] = w[1, 2].abs()  # an all-positive kernel part: its negative element is dropped
    return build_kernel_bank(w, 0.45, 0.225, WLS, stride=2)


def test_n_shards():
    from dko.catalogue import n_shards

    assert n_shards(16, 4) == 4 and n_shards(16, 5) == 4 and n_shards(3, 8) == 1


def test_fidelity_of_perfect_psfs(bank):
    psf = ideal_psfs(bank, 15) * 0.6  # 60 % of the incident light, all of it inside the kernel window
    rows = fidelity_table(psf[None], torch.full((1, bank.n_elements), 0.6), bank, [10.0], 2.0)
    assert len(rows) == bank.n_elements
    for r in rows:
        assert r["rel_l2"] == pytest.approx(0.0, abs=1e-6) and r["ncc"] == pytest.approx(1.0, abs=1e-6)
        assert r["energy_k"] == pytest.approx(1.0) and r["energy_2k"] == pytest.approx(1.0)
        assert r["energy_k_incident"] == pytest.approx(0.6, rel=1e-5)
    s = summarize_fidelity(rows, 10.0)
    assert s["criterion"]["passed"] and s["median_rel_l2"] < 1e-6
    # half the light scattered outside the simulated window: energy_k halves, the shape is untouched
    rows = fidelity_table(psf[None], torch.full((1, bank.n_elements), 1.2), bank, [10.0], 2.0)
    assert rows[0]["energy_k"] == pytest.approx(0.5) and rows[0]["rel_l2"] == pytest.approx(0.0, abs=1e-6)
    assert not summarize_fidelity(rows, 10.0)["criterion"]["passed"]


def test_shards_assemble_and_gds(tmp_path, bank, library):
    cfg = _cfg(tmp_path)
    parts = shards(bank, cfg.dko.shard_size)
    assert len(parts) == 2
    files = []
    for s in range(2):
        out = tmp_path / f"shard_{s}.pt"
        budget = optimize_shard(cfg, bank, library, s, out, checkpoint_path=tmp_path / f"shard_{s}.ckpt", progress=False)
        assert budget["steps"] == 6 and budget["n_elements"] == len(parts[s])
        assert budget["flops_per_step"] > 0 and budget["wall_s"] > 0 and budget["fft_flops_per_step_est"] > 0
        assert not (tmp_path / f"shard_{s}.ckpt").exists()
        payload = load_shard(out)
        assert torch.equal(payload["index"], parts[s])
        hist = payload["history"]
        assert len(hist) == 6 and min(h["loss"] for h in hist[1:]) < hist[0]["loss"]  # the optimiser descends
        files.append(out)
    # an element's initialisation does not depend on the sharding
    system = OpticalSystem.from_config(cfg.optics)
    p0 = initial_designs(bank, system, library, noise_std=cfg.dko.init_noise_std, seed=cfg.seed)
    one = _cfg(tmp_path / "one", steps=1, shard_size=2, plateau_patience=0)
    optimize_shard(one, bank, library, 0, tmp_path / "one.pt", progress=False)
    ref1 = load_shard(tmp_path / "one.pt")
    assert torch.equal(ref1["index"], torch.arange(bank.n_elements))
    assert float((ref1["design"] - p0).abs().max()) <= 0.05 * 1.01  # one Adam step of at most lr

    with pytest.raises(ValueError, match="in no shard file"):
        assemble_frontend(cfg, bank, library, files[:1], tmp_path / "dko_bad")
    with pytest.raises(ValueError, match="overlaps"):
        assemble_frontend(cfg, bank, library, [files[0], files[0], files[1]], tmp_path / "dko_bad")

    out_dir = tmp_path / "dko"
    summary = assemble_frontend(cfg, bank, library, files, out_dir)
    for name in ("frontend.npz", "fidelity.csv", "fidelity_summary.json", "budget.json", "kernels_fit.png",
                 "loss_curves.png", "fidelity_vs_distance.png"):
        assert (out_dir / name).stat().st_size > 0, name
    fe = load_frontend(out_dir / "frontend.npz")
    dists = evaluation_distances(cfg)
    assert fe.psfs.shape == (len(dists), bank.n_elements, 15, 15) and fe.distances == dists
    assert torch.equal(fe.bank.gains, bank.gains) and torch.equal(fe.bank.targets, bank.targets)
    # gain_calibration=total: gain x PSF sum = kernel gain at the design distance
    assert np.allclose(fe.gains * fe.psfs[0].sum(axis=(-2, -1)), fe.bank.gains.numpy(), rtol=1e-4)
    radii = fe.radius_m
    assert radii.min() >= library.radius_min_m * (1 - 1e-6) and radii.max() <= library.radius_max_m * (1 + 1e-6)
    with open(out_dir / "fidelity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == bank.n_elements * len(dists)
    assert {"rel_l2", "energy_k", "energy_2k", "energy_k_incident", "ncc", "object_distance_m"} <= set(rows[0])
    assert {float(r["object_distance_m"]) for r in rows} == {10.0, 1.0, math.inf}
    for r in rows:
        assert 0 <= float(r["energy_k"]) <= float(r["energy_2k"]) + 1e-9 <= 1 + 1e-6
    budget = json.loads((out_dir / "budget.json").read_text())
    assert budget["n_jobs"] == 2 and budget["steps"] == 12 and len(budget["shards"]) == 2
    assert budget["wall_s"] == pytest.approx(sum(b["wall_s"] for b in budget["shards"]))
    assert budget["flops_total"] == sum(b["flops_total"] for b in budget["shards"])
    assert summary["n_elements"] == bank.n_elements

    gds = write_frontend_gds(out_dir / "frontend.npz", out_dir / "array.gds", period_m=cfg.metaatoms.period_m)
    mask = system.superpixel_aperture_mask()
    assert gds["n_elements"] == bank.n_elements
    assert gds["n_pillars"] == bank.n_elements * int(mask.sum()) * 16  # 1.2 um superpixels of 4 x 4 pillars
    from dko.optics.gds import read_array_summary

    back = read_array_summary(out_dir / "array.gds")
    centers = sorted(tuple(np.round(np.array(v["center_m"]) * 1e9)) for v in back["elements"].values())
    assert centers == sorted(tuple(np.round(c * 1e9)) for c in fe.element_centers_m)


def test_aggregate_budgets():
    shards_ = [{"shard": 0, "wall_s": 2.0, "cpu_s": 1.5, "steps": 10, "peak_rss_mb": 300.0, "flops_total": 100,
                "fft_flops_total_est": 7, "n_elements": 3, "device": "cpu"},
               {"shard": 1, "wall_s": 3.0, "cpu_s": 2.5, "steps": 8, "peak_rss_mb": 350.0, "flops_total": 50,
                "fft_flops_total_est": 5, "n_elements": 2, "device": "cpu"}]
    agg = aggregate_budgets(shards_)
    assert (agg["wall_s"], agg["cpu_s"], agg["steps"], agg["peak_rss_mb"], agg["flops_total"], agg["n_jobs"]) == \
        (5.0, 4.0, 18, 350.0, 150, 2)
    assert agg["element_steps"] == 46 and agg["fft_flops_total_est"] == 12 and agg["shards"] == shards_
    with pytest.raises(ValueError):
        aggregate_budgets([])


def test_kept_final_checkpoint_rewrites_the_shard_without_another_step(tmp_path, bank, library):
    """The budget travels inside the shard's checkpoint; the final one, kept, gives the same shard on a rerun."""
    cfg = _cfg(tmp_path)
    out, ckpt = tmp_path / "shard_0.pt", tmp_path / "shard_0.ckpt"
    first = optimize_shard(cfg, bank, library, 0, out, checkpoint_path=ckpt, progress=False, keep_checkpoint=True)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=False)["extra"]["budget"]["steps"] == 6
    design = load_shard(out)["design"]
    out.unlink()
    again = optimize_shard(cfg, bank, library, 0, out, checkpoint_path=ckpt, progress=False)
    assert again["steps"] == 6 and again["segment_steps"] == 0 and again["segments"] == 2
    assert again["wall_s"] >= first["wall_s"] * 0.9  # the earlier segment's time, carried over
    assert torch.equal(load_shard(out)["design"], design) and not ckpt.exists()


def test_shard_run_key_ignores_bookkeeping_but_not_what_the_fit_depends_on(tmp_path, bank):
    from dko.stage2 import shard_run_key

    idx = shards(bank, 1)[0]
    key = shard_run_key(_cfg(tmp_path), bank, idx)
    # a longer run continues; output-only settings and the results folder (an execution key) do not count
    assert shard_run_key(_cfg(tmp_path / "elsewhere", steps=60, log_every=3, gain_calibration="none"), bank, idx) == key
    assert shard_run_key(_cfg(tmp_path, lr=0.01), bank, idx) != key
    assert shard_run_key(_cfg(tmp_path), bank, shards(bank, 1)[1]) != key
    assert shard_run_key(_cfg(tmp_path), bank.replace(targets=bank.targets * 2), idx) != key
    # the meta-atom table: its settings are not in the shard's config view, its content is hashed
    from dko.optics.metaatoms import MetaAtomLibrary

    library = MetaAtomLibrary.default()
    with_table = shard_run_key(_cfg(tmp_path), bank, idx, library)
    assert with_table != key and shard_run_key(_cfg(tmp_path), bank, idx, library) == with_table
    library.table = library.table * 0.5
    assert shard_run_key(_cfg(tmp_path), bank, idx, library) != with_table
