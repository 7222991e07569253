"""Rule compare: summary table, stage costs, DKO-vs-E2E ratios and figures of every evaluated model (dko.compare)."""

from pathlib import Path

from dko.catalogue import evaluated_models
from dko.compare import compare_experiment
from dko.workflow import run_job


def main(job):
    figures = {name: job.output[name] for name in ("budget_curves", "stage_costs", "depth_maps", "psf_kernels")}
    point = job.wildcards.get("point")
    title = f"DKO comparison: experiment {job.cfg.experiment}" + (f", sweep point {point}" if point else "")
    out_dir = Path(job.output.summary).parent
    result = compare_experiment(out_dir.parent, evaluated_models(job.cfg), job.cfg.seed, out_dir, title=title,
                                figures=figures)
    summary = result["summary"].set_index("model")
    metrics = {f"{model}_{key}": summary.loc[model, key] for model in summary.index
               for key in ("abs_rel", "rmse", "a1", "train_s", "train_cpu_s", "peak_mem_mb", "flops")}
    job.tracker.log_metrics({**metrics, **result["headline"]})
    job.tracker.log_parent_metrics({**metrics, **result["headline"]}, prefix=f"{point}/" if point else "")
    job.tracker.log_params({"compare_models": ",".join(summary.index)})
    for path in result["files"].values():
        job.tracker.log_artifact(path, "compare")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
