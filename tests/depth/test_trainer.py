"""dko.depth.trainer: the one training loop of stage 1 and E2E, driven by a toy task (one parameter)."""

import csv

import pytest
import torch

from dko.depth.trainer import (CHECKPOINT_FILE, CHECKPOINT_FORMAT, BudgetPlan, Trainer, TrainingData,
                               TrainingDivergence, TrainingTask, Validation)


class Toy(TrainingTask):
    """A scalar ``w`` pulled to the batch's mean (augmented) brightness and depth; ``losses`` (per step) overrides
    the loss it reports."""

    stage = "toy"
    lr_keys = "toy.lr (0.1)"
    curve_columns = ["step", "budget_used", "lr", "train_loss", "val_abs_rel"]

    def __init__(self, losses=None):
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.opt = torch.optim.SGD([self.w], lr=0.1)
        self.losses = losses
        self.steps_seen: list[tuple[int, float]] = []
        self.probes = 0

    def state_dict(self):
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])

    def flop_probe(self):
        def probe(x, gt):
            self.probes += 1
            (x.flatten(1) @ x.flatten(1).T).sum()  # a matmul, so that there are FLOPs to count

        return probe

    def train_step(self, step, images, depth, valid, fraction):
        self.steps_seen.append((step, fraction))
        loss = (self.w - images.mean() - depth[valid].mean() / 100) ** 2
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(self.losses[step]) if self.losses is not None else float(loss.detach())

    def curve_values(self):
        return {"lr": self.opt.param_groups[0]["lr"]}

    def validate(self, split, meta, batch_size, predict_wrapper):
        return {"abs_rel": self.w.item()}


def _trainer(task, data, out, plan, validation=Validation(every_steps=2), **kw):
    args = dict(run_key="k", name="toy", plan=plan, batch_size=2, flip=True, color_jitter=0.1, seed=0, log_every=1,
                checkpoint_every=2, validation=validation, collapse_check=False)
    return Trainer(task, data, out, **{**args, **kw})


def _rows(out):
    return list(csv.DictReader(open(out / "curves.csv")))


def test_steps_budget_validation_schedule_and_probe(row_dataset, tmp_path):
    data = TrainingData.load(row_dataset)
    task = Toy()
    trainer = _trainer(task, data, tmp_path / "a", BudgetPlan.steps(5))
    result = trainer.run(progress=False)
    assert result.steps == 5 and result.resumed_from_step == 0 and result.stopped_by == "budget"
    assert [s for s, _ in task.steps_seen] == [0, 1, 2, 3, 4]
    assert [f for _, f in task.steps_seen] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])  # fraction before each step
    assert task.probes == 1
    rows = _rows(tmp_path / "a")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["step"] for r in rows if r["val_abs_rel"]] == ["2", "4", "5"]  # every 2 steps and the last one
    summary, kept = trainer.finish({"note": 1}, keep_checkpoint=False)
    assert summary["steps"] == 5 and summary["flops_per_step"] > 0 and summary["note"] == 1  # probe not charged
    assert summary["resumed_from_step"] == 0 and summary["batch_size"] == 2
    assert kept is None and not (tmp_path / "a" / CHECKPOINT_FILE).exists()


def test_fraction_validation_with_an_initial_one_and_max_steps(row_dataset, tmp_path):
    data = TrainingData.load(row_dataset)
    plan = BudgetPlan("time", "cpu", 1e9, max_steps=4)  # a time budget never reached: max_steps stops it
    trainer = _trainer(Toy(), data, tmp_path / "b", plan, validation=Validation(n_fractions=3, initial=True),
                       log_every=10)
    result = trainer.run(progress=False)
    assert result.steps == 4 and result.stopped_by == "max_steps"
    rows = _rows(tmp_path / "b")
    # step 0 (the initialisation), then the last step (the budget's thirds are never reached)
    assert [(r["step"], r["val_abs_rel"] != "") for r in rows] == [("0", True), ("4", True)]


def test_divergence_is_raised_naming_the_key_and_the_checkpoint_before_stays(row_dataset, tmp_path):
    data = TrainingData.load(row_dataset)
    losses = [1.0, 1.0, 1.5, 9.0, 1.0]
    with pytest.raises(TrainingDivergence, match=r"toy diverged at step 4: mean training loss 9 > "
                                                 r"toy\.divergence_factor \(5\.0\) x the first window's 1; "
                                                 r"lower toy\.lr \(0\.1\)"):
        _trainer(Toy(losses), data, tmp_path / "c", BudgetPlan.steps(5), divergence_factor=5.0,
                 divergence_key="toy.divergence_factor").run(progress=False)
    ckpt = torch.load(tmp_path / "c" / CHECKPOINT_FILE, weights_only=False)
    assert ckpt["step"] == 2 and ckpt["format"] == CHECKPOINT_FORMAT and ckpt["first_window"] == 1.0
    # without the check the same losses train to the end (after resuming from step 2)
    result = _trainer(Toy(losses), data, tmp_path / "c", BudgetPlan.steps(5)).run(progress=False)
    assert result.steps == 5 and result.resumed_from_step == 2


def test_resumed_run_ends_like_an_uninterrupted_one_and_a_kept_final_checkpoint_trains_nothing(row_dataset,
                                                                                                 tmp_path):
    data = TrainingData.load(row_dataset)
    full = Toy()
    _trainer(full, data, tmp_path / "full", BudgetPlan.steps(5)).run(progress=False)

    class Killed(RuntimeError):
        pass

    def kill(step, metrics):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        _trainer(Toy(), data, tmp_path / "r", BudgetPlan.steps(5)).run(on_metrics=kill, progress=False)
    resumed = Toy()
    trainer = _trainer(resumed, data, tmp_path / "r", BudgetPlan.steps(5))
    result = trainer.run(progress=False)
    assert result.resumed_from_step == 2 and [s for s, _ in resumed.steps_seen] == [2, 3, 4]
    assert resumed.probes == 0  # the FLOPs came with the checkpoint
    assert resumed.w.item() == full.w.item()  # same data order and augmentation after the resume
    assert _rows(tmp_path / "r") == _rows(tmp_path / "full")
    _, kept = trainer.finish({}, keep_checkpoint=True)
    assert kept == str(tmp_path / "r" / CHECKPOINT_FILE)
    again = Toy()
    result = _trainer(again, data, tmp_path / "r", BudgetPlan.steps(5)).run(progress=False)
    assert result.resumed_from_step == 5 and again.steps_seen == [] and again.w.item() == full.w.item()
    # another run key (other settings) starts over
    other = Toy()
    assert _trainer(other, data, tmp_path / "r", BudgetPlan.steps(5), run_key="k2").run(progress=False) \
        .resumed_from_step == 0


def test_a_checkpoint_of_another_format_is_not_resumed(row_dataset, tmp_path, caplog):
    import logging

    data = TrainingData.load(row_dataset)
    _trainer(Toy(), data, tmp_path / "f", BudgetPlan.steps(3)).run(progress=False)
    path = tmp_path / "f" / CHECKPOINT_FILE
    state = torch.load(path, weights_only=False)
    torch.save({**state, "format": "dko.other/1"}, path)
    task = Toy()
    with caplog.at_level(logging.WARNING, logger="dko.io"):
        result = _trainer(task, data, tmp_path / "f", BudgetPlan.steps(3)).run(progress=False)
    assert result.resumed_from_step == 0 and [s for s, _ in task.steps_seen] == [0, 1, 2]
    assert f"is not a {CHECKPOINT_FORMAT} file" in caplog.text
