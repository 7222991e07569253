"""dko.catalogue: the models (builders, inputs, stages) and every job's config declaration."""

import re
from pathlib import Path

import numpy as np
import pytest

from dko import catalogue
from dko.catalogue import (CONDITIONAL_READS, E2E_VARIANTS, MODELS, RULE_CONFIG, STAGES, evaluate_model,
                           evaluated_models, job_config_keys, model, model_stages, section)
from dko.config import ConfigReads, config_from_dict

CFG = config_from_dict({}, check_paths=False)

from tests.depth.conftest import write_row_dataset

REPO = Path(__file__).resolve().parents[1]


def _rules_in_workflow() -> dict[str, str]:
    """{rule name: its block of text} from workflow/rules/*.smk."""
    blocks = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for match in re.finditer(r"^( *)rule (\w+):\n((?:\1 +.*\n|\n)*)", text, flags=re.M):
            blocks[match.group(2)] = match.group(3)
    return blocks


def test_every_rule_declares_its_config_through_the_catalogue():
    rules = _rules_in_workflow()
    assert {"prepare_dataset", "train_electronic", "evaluate", "train_e2e", "compare", "compare_sweep"} <= set(rules)
    for rule, block in rules.items():
        assert f'config=JOB_CONFIG("{rule}")' in block, f"rule {rule} does not pass JOB_CONFIG(\"{rule}\")"
        assert "conda:\n" in block and "ENV" in block, f"rule {rule} has no conda: ENV"
        assert "CONF(wc)[" not in block.split("threads:")[0].split("params:")[-1], f"rule {rule}: params beyond config"
    declared = {r.split("[")[0] for r in RULE_CONFIG} | {"evaluate"}
    assert set(rules) == declared


def test_models_name_their_inputs_and_stages():
    assert list(MODELS)[:3] == ["electronic", "mean", "rowmean"]
    for entry in MODELS.values():
        assert set(entry.stages) <= set(STAGES), entry.name
        assert all(not Path(p).is_absolute() for p in entry.inputs.values())
        ConfigReads(entry.reads, entry.name)  # every key exists
        assert entry.noisy == entry.name.endswith("_noisy") and ("sensor" in entry.reads) == entry.noisy
    assert model("e2e_optics_noisy").stages == ("stage1", "e2e/optics")
    assert model("e2e_scratch").inputs["model"] == "e2e/scratch/model.pt"
    assert model("dko_layered").variant == "layered" and model("mean").method == "reference"
    with pytest.raises(ValueError, match=r"unknown model 'dko_typo'.*electronic, mean"):
        model("dko_typo")


def test_a_config_evaluates_the_models_of_its_variants():
    full = evaluated_models(config_from_dict({}, check_paths=False))
    assert full == list(MODELS)
    scratch = evaluated_models(config_from_dict({"e2e": {"variants": ["scratch"]}}, check_paths=False))
    assert [m for m in scratch if m.startswith("e2e")] == ["e2e_scratch", "e2e_scratch_noisy", "e2e_scratch_cheap"]
    none = evaluated_models(config_from_dict({"e2e": {"variants": []}}, check_paths=False))
    assert none == ["electronic", "mean", "rowmean", "dko", "dko_noisy", "dko_layered", "dko_cheap"]
    assert model_stages(["dko", "e2e_scratch", "electronic"]) == ["stage1", "dko", "e2e/scratch"]
    assert set(E2E_VARIANTS) == {"optics", "scratch"}


def test_job_declarations_are_valid_config_keys():
    for rule in RULE_CONFIG:
        name, _, variant = rule.partition("[")
        keys = job_config_keys(name, {"variant": variant.rstrip("]")} if variant else {}, CFG)
        ConfigReads(keys, rule)  # unknown or execution keys raise
        assert list(keys) == sorted(set(keys))
    for job, conditionals in CONDITIONAL_READS.items():
        assert job in RULE_CONFIG
        for conditional in conditionals:
            ConfigReads(conditional.keys, job)
            assert not set(conditional.keys) & set(RULE_CONFIG[job]), f"{job}: {conditional.keys} also unconditional"
    for name in MODELS:
        assert job_config_keys("evaluate", {"model": name}, CFG)[0] == "eval"


def test_conditional_reads_follow_the_config():
    steps = config_from_dict({"e2e": {"budget": "steps", "lr_optics_scratch": None}, "dko": {"element_pitch_m": 1e-3}},
                             check_paths=False)
    optics_time = set(job_config_keys("train_e2e", {"variant": "optics"}, CFG))
    optics_steps = set(job_config_keys("train_e2e", {"variant": "optics"}, steps))
    assert optics_time - optics_steps == {"e2e.budget_basis", "e2e.budget_scale", "e2e.max_steps",
                                          "e2e.optics_budget", "data.height", "data.width"}
    assert optics_steps - optics_time == {"e2e.steps"}
    assert "e2e.lr_optics" not in job_config_keys("train_e2e", {"variant": "scratch"}, CFG)
    assert "e2e.lr_optics" in job_config_keys("train_e2e", {"variant": "scratch"}, steps)
    kitti = config_from_dict({"data": {"source": "kitti", "root": "/x"}}, check_paths=False)
    nyu = config_from_dict({"data": {"source": "nyu", "root": "/x"}}, check_paths=False)
    kitti_keys = {"data.protocol", "data.splits_dir", "data.train_split", "data.test_split", "data.train_gt",
                  "data.gt_dir"}
    assert {"data.root", "data.linear_light", *kitti_keys} <= set(job_config_keys("prepare_dataset", {}, kitti))
    assert {"data.root", "data.linear_light"} <= set(job_config_keys("prepare_dataset", {}, nyu))
    assert not kitti_keys & set(job_config_keys("prepare_dataset", {}, nyu))
    assert not {"data.root", "data.linear_light", "data.workers", *kitti_keys} & set(
        job_config_keys("prepare_dataset", {}, CFG))


def test_job_declarations_differ_where_the_jobs_differ():
    optics = set(job_config_keys("train_e2e", {"variant": "optics"}, CFG))
    scratch = set(job_config_keys("train_e2e", {"variant": "scratch"}, CFG))
    assert scratch - optics == {"e2e.lr_optics_scratch", "network", "train.weight_decay"}
    assert optics - scratch == {"e2e.lr_optics", "e2e.optics_budget"}
    assert "e2e.variants" not in optics  # it decides which jobs exist, not what one computes
    assert "sensor" in job_config_keys("evaluate", {"model": "dko_noisy"}, CFG)
    assert "sensor" not in job_config_keys("evaluate", {"model": "dko"}, CFG)
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        job_config_keys("train_e2e", {"variant": "nope"}, CFG)
    with pytest.raises(ValueError, match="lack 'model'"):
        job_config_keys("evaluate", {}, CFG)
    with pytest.raises(ValueError, match="no config declaration"):
        job_config_keys("nonexistent_rule", {}, CFG)


def test_section_expands_a_config_section():
    keys = section("sensor", without=("exposure",))
    assert keys == ("sensor.full_well_e", "sensor.read_noise_e", "sensor.bit_depth")
    with pytest.raises(ValueError, match="do not exist"):
        section("sensor", without=("nonsense",))
    with pytest.raises(ValueError, match="do not exist"):
        section("nosection")


def test_evaluate_model_dispatches_through_the_catalogue(tmp_path):
    row_dataset = write_row_dataset(tmp_path / "data")
    cfg = config_from_dict({"eval": {"n_figure_images": 1}})
    res = evaluate_model(cfg, "rowmean", row_dataset, tmp_path / "rowmean")
    assert res["model"] == "rowmean" and res["metrics"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert np.load(tmp_path / "rowmean" / "examples.npz")["pred"].shape[0] == 1
    with pytest.raises(ValueError, match=r"needs the input\(s\) \['model'\] \(stage1/model.pt\)"):
        evaluate_model(cfg, "electronic", row_dataset, tmp_path / "e")
    with pytest.raises(ValueError, match="unknown model"):
        evaluate_model(cfg, "nonexistent", row_dataset, tmp_path / "x")
    assert catalogue.MODELS["electronic"].build is catalogue.build_electronic
