"""dko.depth.collapse: the collapse monitor shared by stage 1 and E2E (constant / saturated / no better than mean)."""

import numpy as np
import pytest

from dko.config import config_from_dict
from dko.data.format import Split
from dko.depth.collapse import (WARMUP_FRACTION, WARMUP_MIN_STEPS, CollapseMonitor, TrainingCollapse,
                                prediction_spread)
from dko.depth.evaluate import evaluate_predictor

META = {"protocol": "synthetic", "min_depth_m": 1.0, "max_depth_m": 80.0}


def _split(n=4, h=8, w=12, seed=0):
    """Depth varying by row and image (2..60 m), images unused by the fake predictors below."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(2.0, 60.0, h, dtype=np.float32)[:, None]
    depth = np.stack([np.repeat(rows, w, axis=1) * rng.uniform(0.7, 1.3) for _ in range(n)]).astype(np.float32)
    return Split(images=np.zeros((n, h, w, 3), np.uint8), depth=depth, names=[str(i) for i in range(n)])


def _validate(monitor, split, predict, step, fraction):
    """What dko.depth.trainer.validate does with the monitor: one pass of evaluate_predictor over the split."""
    seen = {"i": 0}

    def by_index(images):
        out = predict(split.depth[seen["i"]:seen["i"] + len(images)])
        seen["i"] += len(images)
        return out

    metrics = evaluate_predictor(monitor.wrap(by_index), split, META["protocol"], META["min_depth_m"],
                                 META["max_depth_m"], batch_size=3)["metrics"]
    return monitor.check(step, fraction, metrics)


def _monitor(split, **kw):
    return CollapseMonitor(_split(n=6, seed=1).depth, split, META, stage="stage 1", keys="train.lr (1)", **kw)


def test_constant_prediction_fails_naming_the_key():
    split = _split()
    with pytest.raises(TrainingCollapse, match=r"stage 1 collapsed at step 3: it predicts a constant depth.*"
                                               r"lower train\.lr \(1\)"):
        _validate(_monitor(split), split, lambda gt: np.full(gt.shape, 7.0, np.float32), step=3, fraction=0.1)


@pytest.mark.parametrize("low_share", [0.5, 0.25])
def test_saturated_disparity_fails(low_share):
    split = _split()

    def saturated(gt):  # min depth on the left part, max depth on the right part of every image
        out = np.full(gt.shape, 80.0, np.float32)
        out[..., :int(round(low_share * gt.shape[-1]))] = 1.0
        return out

    low = f"{100 * low_share:.1f} % at min_depth_m 1 m, {100 - 100 * low_share:.1f} % at max_depth_m 80 m"
    with pytest.raises(TrainingCollapse, match=r"saturated \(100\.0 % of the valid validation pixels predicted at a "
                                               r"depth bound: " + low) as err:
        _validate(_monitor(split), split, saturated, step=1, fraction=0.01)
    assert "validation AbsRel" in str(err.value) and "train.collapse_check" in str(err.value)


def test_no_better_than_the_mean_predictor_fails_only_after_the_warm_up():
    split = _split()
    rng = np.random.default_rng(2)

    def noise(gt):  # structure unrelated to the ground truth
        return rng.uniform(2.0, 60.0, gt.shape).astype(np.float32)

    monitor = _monitor(split)
    early = _validate(monitor, split, noise, step=10 * WARMUP_MIN_STEPS, fraction=0.9 * WARMUP_FRACTION)
    assert early["rmse_log_ms"] > monitor.reference["rmse_log"]  # worse, but still warming up
    _validate(monitor, split, noise, step=WARMUP_MIN_STEPS - 1, fraction=1.0)  # too few steps
    with pytest.raises(TrainingCollapse, match=r"no better than the mean-depth predictor \(median-scaled validation "
                                               r"rmse_log"):
        _validate(monitor, split, noise, step=WARMUP_MIN_STEPS, fraction=WARMUP_FRACTION)


def test_a_network_that_learned_something_passes():
    split = _split()
    monitor = _monitor(split)
    stats = _validate(monitor, split, lambda gt: 1.1 * gt + 0.5, step=WARMUP_MIN_STEPS, fraction=1.0)
    assert stats["log_depth_std"] > 0.1 and stats["saturated_fraction"] == 0.0
    assert stats["rmse_log_ms"] < monitor.reference["rmse_log"] and stats["a1_ms"] > monitor.reference["a1"]


def test_step_zero_and_a_disabled_monitor_check_nothing():
    split = _split()
    constant = lambda gt: np.full(gt.shape, 7.0, np.float32)  # noqa: E731
    assert _validate(_monitor(split), split, constant, step=0, fraction=0.0) is None  # E2E's validation before training
    assert _validate(_monitor(split, enabled=False), split, constant, step=5, fraction=1.0) is None


def test_prediction_spread_counts_valid_pixels_only():
    gt = np.array([[[0.0, 10.0, 20.0, 90.0]]], np.float32)  # 0 and 90 m are outside (1, 80): invalid
    pred = np.array([[[1.0, 10.0, 10.0, 80.0]]], np.float32)
    s = prediction_spread(gt, pred, "synthetic", 1.0, 80.0)
    assert s["n_pixels"] == 2 and s["log_depth_std"] == pytest.approx(0.0, abs=1e-9) and s["saturated_fraction"] == 0


def test_collapse_check_is_not_part_of_the_checkpoint_keys():
    from dko.depth.train import run_key
    from dko.e2e import budget_plan, run_key as e2e_run_key

    on, off = config_from_dict({}), config_from_dict({"train": {"collapse_check": False}})
    assert on.train.collapse_check is True and off.train.collapse_check is False
    assert run_key(on) == run_key(off)  # switching the check off resumes the same training
    plan = budget_plan(on, "optics", {"wall_s": 1.0, "cpu_s": 1.0}, {"wall_s": 1.0, "cpu_s": 1.0})
    assert e2e_run_key(on, "optics", plan) == e2e_run_key(off, "optics", plan)


# ----------------------------------------------------------------------------- in the training loops
def test_stage1_with_a_collapsing_learning_rate_fails_naming_train_lr(tmp_path):
    import torch

    from dko.depth.train import CHECKPOINT_FILE, train_electronic
    from tests.depth.conftest import write_row_dataset
    from tests.depth.test_train_resume import TINY

    torch.set_num_threads(1)
    data = write_row_dataset(tmp_path / "data")
    raw = {**TINY, "train": {**TINY["train"], "lr": 1.0}}  # the schema's maximum: the disparity saturates
    out = tmp_path / "stage1"
    with pytest.raises(TrainingCollapse, match=r"stage 1 collapsed at step 3: its disparity is saturated .*"
                                               r"lower train\.lr \(1\)"):
        train_electronic(config_from_dict(raw), data, out, device="cpu", progress=False)
    assert not (out / "model.pt").exists() and (out / CHECKPOINT_FILE).is_file()
    # switched off, the same training resumes from its checkpoint and keeps the collapsed network
    raw["train"]["collapse_check"] = False
    result = train_electronic(config_from_dict(raw), data, out, device="cpu", progress=False)
    assert result["resumed_from_step"] == 2 and (out / "model.pt").is_file()
    assert result["val"]["a1"] == 0.0


def test_e2e_with_a_collapsing_backend_learning_rate_fails_naming_it(tmp_path):
    import torch

    from dko.e2e import train_e2e
    from tests.depth.conftest import write_row_dataset
    from tests.test_e2e import _cfg

    torch.set_num_threads(1)
    data = write_row_dataset(tmp_path / "data")
    out = tmp_path / "scratch"
    with pytest.raises(TrainingCollapse, match=r"E2E scratch collapsed at step 2: its disparity is saturated .*"
                                               r"lower e2e\.lr_backend \(10\) or e2e\.lr_optics \(0\.05\)"):
        train_e2e(_cfg(lr_backend=10.0), "scratch", data, out, progress=False)
    assert not (out / "model.pt").exists() and not (out / "frontend.npz").exists()


def test_non_finite_predictions_fail_naming_the_key():
    split = _split()
    nan = lambda gt: np.full(gt.shape, np.nan, np.float32)  # noqa: E731
    with pytest.raises(TrainingCollapse, match=r"predicts 288 non-finite depths .*lower train\.lr \(1\)"):
        _validate(_monitor(split), split, nan, step=0, fraction=0.0)
