"""dko.workflow.run_job with the real rule scripts: an interruption after training (Ctrl-C while plotting) costs
no retraining, since the final checkpoint outlives everything the job does after training (issue 13)."""

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dko.catalogue import job_config_keys
from dko.config import config_from_dict, declared_config, resolve_config
from dko.depth.checkpoint import load_depthnet
from dko.depth.train import CHECKPOINT_FILE
from tests.depth.conftest import write_row_dataset
from tests.depth.test_train_resume import TINY as STAGE1_TINY

REPO = Path(__file__).resolve().parents[1]
TINY = {**STAGE1_TINY, "threads": 1, "tracking": {"enabled": False},
        "train": {**STAGE1_TINY["train"], "checkpoint_every": 4}}


class CtrlC(KeyboardInterrupt):
    pass


def _fake_snakemake(rule: str, config: dict, inputs: dict, outputs: dict, log: Path,
                    wildcards: dict | None = None) -> SimpleNamespace:
    params = SimpleNamespace(config=declared_config(config, job_config_keys(rule, wildcards, config_from_dict(config))))
    return SimpleNamespace(rule=rule, config=config, input=SimpleNamespace(**inputs),
                           output=SimpleNamespace(**outputs), params=params, wildcards=dict(wildcards or {}),
                           threads=1, log=[str(log)])


def _run_script(name: str, smk: SimpleNamespace) -> None:
    runpy.run_path(str(REPO / "workflow" / "scripts" / f"{name}.py"), init_globals={"snakemake": smk})


def test_ctrl_c_while_plotting_after_stage1_costs_no_retraining(tmp_path, monkeypatch):
    data = write_row_dataset(tmp_path / "data")
    out = tmp_path / "stage1"
    outputs = {"model": out / "model.pt", "budget": out / "budget.json", "curves": out / "curves.csv",
               "plot": out / "curves.png"}
    smk = _fake_snakemake("train_electronic", resolve_config(TINY), {"meta": data / "meta.json"},
                          {k: str(v) for k, v in outputs.items()}, tmp_path / "train_electronic.log")

    def interrupted(*args, **kwargs):
        raise CtrlC

    monkeypatch.setattr("dko.plots.plot_training_curves", interrupted)
    with pytest.raises(CtrlC):
        _run_script("train_electronic", smk)
    assert (out / CHECKPOINT_FILE).is_file() and outputs["model"].is_file() and not outputs["plot"].exists()
    trained, _ = load_depthnet(outputs["model"])
    first_budget = json.loads(outputs["budget"].read_text())
    for path in outputs.values():  # what Snakemake does with the outputs of an incomplete job before its rerun
        path.unlink(missing_ok=True)
    monkeypatch.undo()

    _run_script("train_electronic", smk)
    budget = json.loads(outputs["budget"].read_text())
    assert budget["resumed_from_step"] == 6 and budget["segment_steps"] == 0 and budget["steps"] == 6
    assert budget["segments"] == 2 and budget["flops_per_step"] == first_budget["flops_per_step"]
    again, _ = load_depthnet(outputs["model"])
    for (name, x), (_, y) in zip(trained.state_dict().items(), again.state_dict().items()):
        assert torch.equal(x, y), name
    assert outputs["plot"].stat().st_size > 1000
    assert not (out / CHECKPOINT_FILE).exists()  # removed once the job was done
