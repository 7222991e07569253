"""Rule metasurface_gds: GDSII of the assembled metasurface array, read back and checked (dko.optics.gds)."""

from dko.io import write_json
from dko.stage2 import write_frontend_gds
from dko.workflow import run_job


def main(job):
    summary = write_frontend_gds(job.input.frontend, job.output.gds, period_m=job.cfg.metaatoms.period_m,
                                 radius_step_m=job.cfg.dko.gds_radius_step_m)
    write_json(job.output.summary, summary)
    job.tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    job.tracker.log_artifact(job.output.summary)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
