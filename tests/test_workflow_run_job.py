"""dko.workflow.run_job: the job's config view (declared keys only), the params check, logging, clean-up."""

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from dko.catalogue import job_config_keys
from dko.config import UndeclaredConfigRead, config_from_dict, declared_config, resolve_config
from dko.workflow import Job, check_params_config, run_job

RAW = resolve_config({"tracking": {"enabled": False}, "threads": 1, "device": "cpu", "seed": 3,
                      "dko": {"gds_radius_step_m": 2e-9}}, check_paths=False)
CFG = config_from_dict(RAW, check_paths=False)


def _smk(tmp_path: Path, rule: str = "metasurface_gds", params: dict | None = None, wildcards: dict | None = None,
         config: dict | None = None) -> SimpleNamespace:
    config = RAW if config is None else config
    if params is None:
        params = {"config": declared_config(config, job_config_keys(rule, wildcards, config_from_dict(config)))}
    return SimpleNamespace(rule=rule, config=config, input=SimpleNamespace(), output=SimpleNamespace(),
                           params=SimpleNamespace(**params), wildcards=dict(wildcards or {}), threads=4,
                           log=[str(tmp_path / "logs" / f"{rule}.log")])


def test_the_job_reads_its_declared_keys_and_the_log_lists_them(tmp_path):
    seen = {}

    def main(job: Job):
        seen["step"] = job.cfg.dko.gds_radius_step_m
        seen["period"] = job.cfg.metaatoms.period_m
        seen["device"], seen["threads"] = str(job.device), job.threads
        return "done"

    assert run_job(_smk(tmp_path), main) == "done"
    assert seen == {"step": 2e-9, "period": RAW["metaatoms"]["period_m"], "device": "cpu", "threads": 1}
    text = (tmp_path / "logs" / "metasurface_gds.log").read_text()
    assert "config keys read: dko.gds_radius_step_m, metaatoms.period_m" in text
    assert "finished in" in text


def test_an_undeclared_read_fails_the_job_naming_the_key_and_the_job(tmp_path):
    def main(job: Job):
        return job.cfg.dko.steps  # metasurface_gds declares only dko.gds_radius_step_m of dko

    with pytest.raises(UndeclaredConfigRead, match=r"metasurface_gds.*'dko\.steps'.*dko\.catalogue"):
        run_job(_smk(tmp_path), main)
    assert "rule metasurface_gds failed" in (tmp_path / "logs" / "metasurface_gds.log").read_text()


def test_execution_keys_are_readable_by_every_job_and_not_recorded(tmp_path):
    def main(job: Job):
        return job.cfg.experiment, job.cfg.tracking.enabled, job.cfg.device, job.cfg.results_dir

    assert run_job(_smk(tmp_path), main) == (RAW["experiment"], False, "cpu", RAW["results_dir"])
    assert "config keys read: none" in (tmp_path / "logs" / "metasurface_gds.log").read_text()


def test_params_without_the_config_or_with_other_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"rule metasurface_gds has no 'config' in its params.*JOB_CONFIG"):
        run_job(_smk(tmp_path, params={"period_m": 3e-7}), lambda job: None)
    stale = declared_config(RAW, ["dko"])
    with pytest.raises(ValueError, match=r"params.config holds .*dko.steps.*but the job reads"):
        run_job(_smk(tmp_path, params={"config": stale}), lambda job: None)
    changed = declared_config({**RAW, "dko": {**RAW["dko"], "gds_radius_step_m": 5e-9}},
                              job_config_keys("metasurface_gds", {}, CFG))
    with pytest.raises(ValueError, match="params.config"):
        check_params_config("metasurface_gds", changed, declared_config(RAW, job_config_keys("metasurface_gds", {}, CFG)))


def test_a_rule_without_a_declaration_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"rule 'no_such_rule' has no config declaration"):
        run_job(_smk(tmp_path, rule="no_such_rule", params={"config": {}}), lambda job: None)


def test_evaluate_jobs_declare_per_model(tmp_path):
    def main(job: Job):
        job.cfg.eval.n_figure_images
        return job.cfg.sensor.read_noise_e

    assert run_job(_smk(tmp_path, rule="evaluate", wildcards={"model": "dko_noisy"}), main) == \
        RAW["sensor"]["read_noise_e"]
    with pytest.raises(UndeclaredConfigRead, match="sensor.read_noise_e"):
        run_job(_smk(tmp_path, rule="evaluate", wildcards={"model": "dko"}), main)


def test_remove_after_success_only_after_success(tmp_path):
    keep = tmp_path / "ckpt_a.pt"
    keep.write_text("x")

    def failing(job: Job):
        job.remove_after_success(keep)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_job(_smk(tmp_path), failing)
    assert keep.is_file()

    def ok(job: Job):
        job.remove_after_success(keep)
        job.remove_after_success(None)

    run_job(_smk(tmp_path), ok)
    assert not keep.exists()


def test_seeds_come_from_the_config(tmp_path):
    import numpy as np
    import torch

    def draw(job: Job):
        return float(torch.rand(1)), float(np.random.rand())

    first = run_job(_smk(tmp_path), draw)
    assert run_job(_smk(tmp_path), draw) == first
    other = resolve_config({**RAW, "seed": 4}, check_paths=False)
    assert run_job(_smk(tmp_path, config=other), draw) != first


def test_logging_goes_to_the_rule_log(tmp_path):
    def main(job: Job):
        logging.getLogger("dko.test").info("hello from the job")

    run_job(_smk(tmp_path), main)
    assert "hello from the job" in (tmp_path / "logs" / "metasurface_gds.log").read_text()
