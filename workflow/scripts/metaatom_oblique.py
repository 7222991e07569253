"""Rule metaatom_oblique: the faithful model's meta-atom table t(r, lambda, direction, polarisation)
(dko.optics.oblique_table), for the wavelengths and field directions of this configuration."""

from dko.frontend.faithful import oblique_table_settings
from dko.optics.oblique_table import prepare_oblique_table
from dko.workflow import run_job


def main(job):
    summary = prepare_oblique_table(oblique_table_settings(job.cfg), job.output.table, job.output.report,
                                    workers=job.threads)
    job.tracker.log_metrics({k: float(v) for k, v in summary.items()})
    job.tracker.log_artifact(job.output.report)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
