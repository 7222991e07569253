"""Rule train_electronic: stage 1, the supervised electronic depth CNN (see dko.depth.train)."""

from pathlib import Path

from dko.budget import numeric
from dko.depth.train import train_electronic
from dko.plots import plot_training_curves
from dko.workflow import run_job


def main(job):
    out_dir = Path(job.output.model).parent
    result = train_electronic(job.cfg, Path(job.input.meta).parent, out_dir,
                              on_metrics=job.tracker.metrics_callback(), device=job.device, keep_checkpoint=True)
    job.remove_after_success(result["checkpoint"])
    plot_training_curves(job.output.curves, job.output.plot, title=f"Stage 1 ({job.cfg.experiment})")
    job.tracker.log_metrics(numeric(result["budget"]))
    job.tracker.log_metrics({f"final_val_{k}": v for k, v in result["val"].items()})
    for path in (job.output.budget, job.output.curves, job.output.plot):
        job.tracker.log_artifact(path)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
