"""Rule train_e2e: E2E baseline {variant} at DKO's budget (see dko.e2e)."""

from pathlib import Path

from dko.budget import numeric
from dko.e2e import train_e2e
from dko.plots import plot_training_curves
from dko.workflow import run_job


def main(job):
    variant = job.wildcards["variant"]
    result = train_e2e(job.cfg, variant, Path(job.input.meta).parent, Path(job.output.model).parent,
                       stage1_model=job.input.stage1_model, stage1_budget=job.input.stage1_budget,
                       dko_budget=job.input.dko_budget, library_path=job.input.library,
                       on_metrics=job.tracker.metrics_callback(), device=job.device, keep_checkpoint=True)
    job.remove_after_success(result["checkpoint"])
    plot_training_curves(job.output.curves, job.output.plot, title=f"E2E {variant} ({job.cfg.experiment})")
    job.tracker.log_params({"e2e_variant": variant, "e2e_budget_mode": result["plan"]["mode"],
                            "e2e_budget_basis": result["plan"]["basis"], "e2e_budget_limit": result["plan"]["limit"]})
    job.tracker.log_metrics(numeric(result["budget"]))
    job.tracker.log_metrics({f"final_val_{k}": v for k, v in result["val"].items()})
    for path in (job.output.budget, job.output.curves, job.output.plot, job.output.frontend):
        job.tracker.log_artifact(path)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
