"""Rule evaluate: depth metrics of catalogue model {model} on the test split (see dko.catalogue.evaluate_model)."""

from pathlib import Path

from dko.catalogue import evaluate_model
from dko.workflow import run_job


def main(job):
    model = job.wildcards["model"]
    inputs = {k: str(v) for k, v in job.input.items() if k != "meta"}
    result = evaluate_model(job.cfg, model, Path(job.input.meta).parent, Path(job.output.metrics).parent,
                            inputs=inputs, device=job.device, figure=job.output.plot, examples=job.output.examples)
    job.tracker.log_metrics({f"test_{k}": v for k, v in result["metrics"].items()})
    job.tracker.log_params({"eval_model": model, "median_scaling": result["median_scaling"]})
    job.tracker.log_artifact(job.output.metrics)
    job.tracker.log_artifact(job.output.plot)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
