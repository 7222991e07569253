"""E2E baselines (dko.e2e): budget plan, training outputs, frozen back-end, resume, divergence, evaluation."""

import csv
import json

import pytest
import torch

from dko.config import config_from_dict
from dko.depth.checkpoint import load_depthnet, save_depthnet
from dko.depth.model import DepthNet
from dko.e2e import CHECKPOINT_FILE, CURVE_COLUMNS, E2EDivergence, budget_plan, build_e2e, e2e_step, lr_factor, \
    optics_lr, train_e2e
from dko.frontend import design_radius, load_frontend

from tests.depth.conftest import write_row_dataset

TINY = {
    "seed": 1,
    "device": "cpu",
    "data": {"height": 32, "width": 64, "n_train": 6, "n_val": 2, "n_test": 3},
    "network": {"blocks_per_stage": [1, 1, 1, 1], "base_width": 4, "decoder_channels": [4, 4, 4, 8, 8]},
    "train": {"steps": 6, "batch_size": 2, "warmup_steps": 1, "lr": 0.01},
    "optics": {"n_superpixels": 16, "superpixel_m": 1.2e-6, "psf_size_px": 9, "sensor_distance_m": 1.0e-4},
    "dko": {"fidelity_distances_m": [10.0, 2.0]},
    "e2e": {"budget": "steps", "steps": 4, "n_val": 2, "log_every": 1, "checkpoint_every": 2, "lr_optics": 0.05,
            "lr_optics_scratch": None},
}


def _cfg(**e2e):
    raw = json.loads(json.dumps(TINY))
    raw["e2e"].update(e2e)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("e2e")
    data = write_row_dataset(root / "data")
    cfg = _cfg()
    torch.manual_seed(5)
    model = DepthNet.from_config(cfg.network, (cfg.data.min_depth_m, cfg.data.max_depth_m))
    stage1 = save_depthnet(model, root / "stage1" / "model.pt")
    return root, data, stage1


def test_budget_plan_bases_and_stages():
    s1, s2 = {"wall_s": 100.0, "cpu_s": 180.0}, {"wall_s": 10.0, "cpu_s": 15.0, "steps": 50}
    scratch = budget_plan(_cfg(budget="time", budget_basis="cpu"), "scratch", s1, s2)
    assert scratch["limit"] == 195.0 and scratch["stages"] == ["stage1", "stage2"] and scratch["basis"] == "cpu"
    optics = budget_plan(_cfg(budget="time", budget_basis="wall"), "optics", s1, s2)
    assert optics["limit"] == 10.0 and optics["stages"] == ["stage2"]
    both = budget_plan(_cfg(budget="time", budget_basis="wall", optics_budget="stage1+stage2", budget_scale=2.0),
                       "optics", s1, s2)
    assert both["limit"] == 220.0
    assert budget_plan(_cfg(), "optics")["limit"] == 4 and budget_plan(_cfg(), "optics")["mode"] == "steps"
    with pytest.raises(ValueError, match="cpu_s"):
        budget_plan(_cfg(budget="time"), "scratch", {"wall_s": 1.0}, s2)
    with pytest.raises(ValueError, match="e2e.variants"):
        budget_plan(_cfg(), "hybrid")
    with pytest.raises(ValueError, match="e2e.budget_basis"):
        config_from_dict({**TINY, "e2e": {"budget_basis": "gpu"}})


def test_optics_learning_rate_per_variant():
    assert optics_lr(_cfg(), "scratch") == optics_lr(_cfg(), "optics") == 0.05  # lr_optics_scratch null
    assert optics_lr(_cfg(lr_optics_scratch=2.0), "scratch") == 2.0
    assert optics_lr(_cfg(lr_optics_scratch=2.0), "optics") == 0.05


def test_lr_factor_warmup_and_cosine():
    assert lr_factor(0.0, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_factor(0.1, 0.1, "cosine") == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0.7, 0.1, "constant") == 1.0


def test_optics_variant_trains_only_the_designs(setup, tmp_path):
    root, data, stage1 = setup
    cfg = _cfg()
    out = tmp_path / "optics"
    result = train_e2e(cfg, "optics", data, out, stage1_model=stage1, progress=False)
    assert result["steps"] == 4 and result["plan"]["mode"] == "steps"
    assert not (out / CHECKPOINT_FILE).exists()
    # the back-end is the stage-1 network, unchanged (frozen, BN statistics included)
    ref, _ = load_depthnet(stage1)
    got, payload = load_depthnet(out / "model.pt")
    assert payload["e2e"]["variant"] == "optics"
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k
    # the designs moved away from DKO's initialisation
    _, front0 = build_e2e(cfg, "optics", meta={"min_depth_m": 1.0, "max_depth_m": 80.0}, stage1_model=stage1)
    fe = load_frontend(out / "frontend.npz")
    r0 = design_radius(front0.p.detach(), front0.bank, front0.library, front0.parametrization).float().numpy()
    assert abs(fe.radius_m - r0).max() > 1e-10
    assert fe.n_elements == 4 * 3 * 2 and fe.psfs.shape[:2] == (2, fe.n_elements)  # distances 10 m and 2 m
    assert fe.info["method"] == "e2e" and fe.info["variant"] == "optics"
    budget = json.loads((out / "budget.json").read_text())
    for key in ("wall_s", "cpu_s", "steps", "step_wall_s", "peak_rss_mb", "flops_per_step", "budget_basis",
                "val_wall_s", "train_cpu_s"):
        assert budget[key] is not None, key
    assert budget["steps"] == 4 and budget["budget_basis"] == "steps" and budget["flops_per_step"] > 0
    assert budget["fft_flops_total_est"] == 4 * budget["fft_flops_per_step_est"] > 0
    assert fe.distances == [10.0, 2.0]  # the design distance (trained at) first, as in DKO's frontend.npz
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert list(rows[0]) == CURVE_COLUMNS
    val_steps = [int(r["step"]) for r in rows if r["val_abs_rel"]]
    assert val_steps == [0, 2, 4]
    assert all(float(r["train_loss"]) > 0 for r in rows if r["train_loss"])


class Killed(RuntimeError):
    pass


def test_scratch_kill_and_resume_matches_uninterrupted(setup, tmp_path):
    root, data, _ = setup
    cfg = _cfg()
    full = train_e2e(cfg, "scratch", data, tmp_path / "full", progress=False)

    def kill(step, metrics):
        if step == 3 and "train_loss" in metrics:
            raise Killed("simulated kill")

    with pytest.raises(Killed):
        train_e2e(cfg, "scratch", data, tmp_path / "resumed", on_metrics=kill, progress=False)
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).is_file()
    resumed = train_e2e(cfg, "scratch", data, tmp_path / "resumed", progress=False)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == full["steps"] == 4
    a, _ = load_depthnet(tmp_path / "full" / "model.pt")
    b, _ = load_depthnet(tmp_path / "resumed" / "model.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    fa, fb = load_frontend(tmp_path / "full" / "frontend.npz"), load_frontend(tmp_path / "resumed" / "frontend.npz")
    assert (fa.radius_m == fb.radius_m).all() and (fa.gains == fb.gains).all()
    assert torch.equal(fa.bank.bias, fb.bank.bias)
    # scratch learns the electronic gains: they differ from the untrained conv1's split
    _, front0 = build_e2e(cfg, "scratch", meta={"min_depth_m": 1.0, "max_depth_m": 80.0})
    assert fa.n_elements == 4 * 3 * 2 and "UNTRAINED" in fa.info["targets"]
    assert abs(fa.bank.gains - front0.kernel_gains.detach()).max() > 0
    assert abs(fa.bank.bias - front0.bias.detach()).max() > 0
    assert json.loads((tmp_path / "resumed" / "budget.json").read_text())["segments"] == 2


def test_time_budget_stops_at_the_limit(setup, tmp_path):
    root, data, stage1 = setup
    cfg = _cfg(budget="time", budget_basis="wall", n_val=1)
    result = train_e2e(cfg, "optics", data, tmp_path / "t", stage1_model=stage1,
                       dko_budget={"wall_s": 0.5, "cpu_s": 99.0}, progress=False)
    budget = json.loads((tmp_path / "t" / "budget.json").read_text())
    assert result["steps"] >= 1 and budget["budget_limit"] == 0.5 and budget["budget_basis"] == "wall"
    assert budget["budget_used"] >= 0.5 and budget["train_wall_s"] == pytest.approx(budget["budget_used"])
    # validation is recorded but not charged
    assert budget["wall_s"] == pytest.approx(budget["train_wall_s"] + budget["val_wall_s"], rel=1e-6)


@pytest.mark.parametrize("variant", ["optics", "scratch"])
def test_a_time_budget_job_reads_exactly_its_declared_keys(setup, tmp_path, variant):
    """Under the workflow's view of the config (dko.catalogue's declaration for a time budget, where the smoke
    run has a steps budget), training reads every declared key and no other."""
    from dko.catalogue import job_config_keys
    from dko.config import restrict_config

    root, data, stage1 = setup
    cfg = _cfg(budget="time", budget_basis="wall", n_val=1, max_steps=3)
    declared = job_config_keys("train_e2e", {"variant": variant}, cfg)
    view, reads = restrict_config(cfg, declared, job=f"train_e2e[{variant}]")
    train_e2e(view, variant, data, tmp_path / variant, stage1_model=stage1, library_path=None,
              stage1_budget={"wall_s": 0.3, "cpu_s": 9.0}, dko_budget={"wall_s": 0.3, "cpu_s": 9.0}, progress=False)
    unread = [d for d in declared if not any(k == d or k.startswith(d + ".") for k in reads.read)]
    assert not unread and "e2e.steps" not in reads.read and "e2e.budget_scale" in reads.read


def test_non_finite_loss_is_reported(setup):
    root, data, stage1 = setup
    cfg = _cfg()
    model, front = build_e2e(cfg, "optics", meta={"min_depth_m": 1.0, "max_depth_m": 80.0}, stage1_model=stage1)
    opt = torch.optim.Adam([front.p], lr=0.1)
    images = torch.full((1, 3, 32, 64), float("nan"))
    depth = torch.full((1, 1, 32, 64), 5.0)
    with pytest.raises(E2EDivergence, match="e2e.lr_optics"):
        e2e_step(model, front, [opt], images, depth, depth > 0, 0.85)


def test_e2e_models_evaluate_with_and_without_noise(setup, tmp_path):
    from dko.catalogue import evaluate_model

    root, data, stage1 = setup
    cfg = _cfg(steps=1, n_val=1)
    out = tmp_path / "e2e"
    train_e2e(cfg, "optics", data, out, stage1_model=stage1, progress=False)
    inputs = {"model": str(out / "model.pt"), "frontend": str(out / "frontend.npz"), "teacher": str(stage1)}
    clean = evaluate_model(cfg, "e2e_optics", data, tmp_path / "ev", inputs=inputs)
    noisy = evaluate_model(cfg, "e2e_optics_noisy", data, tmp_path / "evn", inputs=inputs)
    assert clean["n_images"] == noisy["n_images"] == 3
    assert clean["metrics"]["abs_rel"] != noisy["metrics"]["abs_rel"]


def test_kept_final_checkpoint_rewrites_the_outputs_without_training(setup, tmp_path):
    """keep_checkpoint (the workflow job): the final state outlives the outputs, so a rerun after an interruption
    past training (Ctrl-C while plotting) writes the same outputs again without another step."""
    root, data, stage1 = setup
    cfg = _cfg()
    out = tmp_path / "optics"
    first = train_e2e(cfg, "optics", data, out, stage1_model=stage1, progress=False, keep_checkpoint=True)
    assert first["checkpoint"] == str(out / CHECKPOINT_FILE) and (out / CHECKPOINT_FILE).is_file()
    radius = load_frontend(out / "frontend.npz").radius_m.copy()
    for name in ("model.pt", "frontend.npz", "budget.json", "curves.csv"):
        (out / name).unlink()
    again = train_e2e(cfg, "optics", data, out, stage1_model=stage1, progress=False)
    assert again["resumed_from_step"] == again["steps"] == first["steps"] == 4
    assert again["budget"]["segment_steps"] == 0 and again["val"] == first["val"] and again["checkpoint"] is None
    assert (load_frontend(out / "frontend.npz").radius_m == radius).all()
    assert not (out / CHECKPOINT_FILE).exists()


def test_run_key_per_variant_and_plan_ignoring_bookkeeping():
    from dko.e2e import run_key

    cfg = _cfg()
    plan = budget_plan(cfg, "optics")
    key = run_key(cfg, "optics", plan)
    assert run_key(_cfg(log_every=3, checkpoint_every=5, variants=["scratch"]), "optics", plan) == key
    assert run_key(cfg, "scratch", plan) != key
    assert run_key(_cfg(lr_optics=0.01), "optics", plan) != key
    assert run_key(cfg, "optics", {**plan, "limit": 5}) != key


@pytest.mark.parametrize("key, value", [("budget", "flops"), ("budget_basis", "gpu"), ("optics_budget", "stage1"),
                                        ("schedule", "step")])
def test_budget_and_schedule_names_are_the_schemas_to_refuse(key, value):
    """budget_plan / lr_factor do not re-check these names: the schema refuses them, naming the key."""
    with pytest.raises(ValueError, match=rf"e2e\.{key}"):
        _cfg(**{key: value})
