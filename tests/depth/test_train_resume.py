"""Stage-1 training: outputs, and a killed run resumed from its checkpoint ends like an uninterrupted one."""

import csv
import json

import pytest
import torch

from dko.config import config_from_dict
from tests.depth.conftest import write_row_dataset
from dko.depth.checkpoint import load_depthnet
from dko.catalogue import evaluate_model
from dko.depth.train import CHECKPOINT_FILE, lr_factor, train_electronic

TINY = {
    "seed": 3,
    "device": "cpu",
    "data": {"height": 32, "width": 64, "n_train": 6, "n_val": 2, "n_test": 3},
    "network": {"blocks_per_stage": [1, 1, 1, 1], "base_width": 4, "decoder_channels": [4, 4, 4, 8, 8]},
    "train": {"steps": 6, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1,
              "val_every": 3, "lr": 0.01},
}


class Killed(RuntimeError):
    pass


def test_kill_and_resume_matches_uninterrupted(row_dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = config_from_dict(TINY)
    full = train_electronic(cfg, row_dataset, tmp_path / "full", device="cpu", progress=False)

    seen = []

    def kill_after_three(step, metrics):
        seen.append(step)
        if step == 3 and "train_loss" in metrics:
            raise Killed("simulated kill")

    with pytest.raises(Killed):
        train_electronic(cfg, row_dataset, tmp_path / "resumed", on_metrics=kill_after_three, device="cpu",
                         progress=False)
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).is_file()  # written at step 2
    assert not (tmp_path / "resumed" / "model.pt").exists()
    kept = torch.load(tmp_path / "resumed" / CHECKPOINT_FILE, weights_only=False)["budget"]
    again = train_electronic(cfg, row_dataset, tmp_path / "resumed", device="cpu", progress=False)
    assert again["resumed_from_step"] == 2 and full["resumed_from_step"] == 0

    a, _ = load_depthnet(tmp_path / "full" / "model.pt")
    b, _ = load_depthnet(tmp_path / "resumed" / "model.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x.double(), y.double(), atol=1e-6, rtol=0), name
    assert not (tmp_path / "resumed" / CHECKPOINT_FILE).exists()

    rows_full = list(csv.DictReader(open(tmp_path / "full" / "curves.csv")))
    rows_res = list(csv.DictReader(open(tmp_path / "resumed" / "curves.csv")))
    assert [r["step"] for r in rows_full] == [str(s) for s in range(1, 7)]
    assert [(r["step"], r["train_loss"]) for r in rows_res] == [(r["step"], r["train_loss"]) for r in rows_full]
    assert rows_full[2]["val_abs_rel"] != "" and rows_full[0]["val_abs_rel"] == ""

    budget = json.loads((tmp_path / "resumed" / "budget.json").read_text())
    assert budget["steps"] == 6 and budget["segments"] == 2 and budget["segment_steps"] == 4
    assert budget["flops_per_step"] > 0 and budget["flops_total"] == 6 * budget["flops_per_step"]
    assert budget["wall_s"] > budget["segment_wall_s"] > 0
    # what a resumed budget charges: the kept segment up to its checkpoint, then the resumed one; the killed
    # segment's step 3 (after the checkpoint) is redone and charged once
    assert kept["steps"] == 2
    assert budget["wall_s"] == pytest.approx(kept["wall_s"] + budget["segment_wall_s"], rel=1e-9)
    assert budget["cpu_s"] == pytest.approx(kept["cpu_s"] + budget["segment_cpu_s"], rel=1e-9)

    # The trained model evaluates through the same rule as every other model.
    res = evaluate_model(cfg, "electronic", row_dataset, tmp_path / "eval", inputs={"model": str(tmp_path / "full" / "model.pt")})
    assert res["n_images"] == 3 and 0 <= res["metrics"]["a1"] <= 1
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"] == "electronic"


def test_stale_checkpoint_of_other_settings_is_ignored(row_dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = config_from_dict(TINY)
    with pytest.raises(Killed):
        def kill(step, metrics):
            if step == 2:
                raise Killed()
        train_electronic(cfg, row_dataset, tmp_path / "o", on_metrics=kill, device="cpu", progress=False)
    other = config_from_dict({**TINY, "train": {**TINY["train"], "lr": 0.002}})
    res = train_electronic(other, row_dataset, tmp_path / "o", device="cpu", progress=False)
    assert res["resumed_from_step"] == 0


def test_lr_schedule():
    assert lr_factor(0, 100, 4, "cosine") == pytest.approx(0.2)
    assert lr_factor(4, 100, 4, "cosine") == pytest.approx(1.0)
    assert lr_factor(52, 100, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "step") == pytest.approx(0.01)
    assert lr_factor(50, 100, 0, "constant") == 1.0
    # an unknown schedule is the schema's to refuse (the entry point does not re-check it)
    with pytest.raises(ValueError, match="train.schedule"):
        config_from_dict({"train": {"schedule": "linear"}})


def test_run_key_ignores_bookkeeping_and_execution_keys_only():
    from dko.depth.train import run_key

    key = run_key(config_from_dict(TINY))
    bookkeeping = {**TINY, "results_dir": "/elsewhere", "threads": 3,
                   "train": {**TINY["train"], "log_every": 7, "val_every": 2, "checkpoint_every": 5}}
    assert run_key(config_from_dict(bookkeeping)) == key
    assert run_key(config_from_dict({**TINY, "train": {**TINY["train"], "batch_size": 2}})) != key
    assert run_key(config_from_dict({**TINY, "data": {**TINY["data"], "n_train": 5}})) != key
    assert run_key(config_from_dict({**TINY, "seed": 4})) != key


def test_run_key_changes_when_the_dataset_is_made_anew(tmp_path):
    """A job's config view lacks the data keys (they made the dataset, an input): the files' identity counts."""
    import os

    from dko.depth.train import run_key

    data = write_row_dataset(tmp_path / "data")
    cfg = config_from_dict(TINY)
    key = run_key(cfg, data)
    assert run_key(cfg, data) == key and run_key(cfg) != key
    meta = data / "meta.json"
    stat = meta.stat()
    os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert run_key(cfg, data) != key
