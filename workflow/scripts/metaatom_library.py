"""Rule metaatom_library: RCWA table of TiO2 pillars, t(radius, wavelength) (see dko.optics.metaatoms)."""

from pathlib import Path

from dko.optics.metaatoms import prepare_library
from dko.workflow import run_job


def main(job):
    summary = prepare_library(job.cfg, Path(job.output.table).parent, device=job.device)
    job.tracker.log_metrics(summary)
    for path in (job.output.report, job.output.plot):
        job.tracker.log_artifact(path)
    job.tracker.log_dict(summary, "summary.json")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
