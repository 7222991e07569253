"""Rule faithful_fidelity: the radii written to the GDSII re-simulated in the faithful model (dko.frontend.faithful)."""

from dko.frontend.faithful import flat_metrics, write_faithful_fidelity
from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.oblique_table import ObliqueTable
from dko.workflow import run_job


def main(job):
    library = MetaAtomLibrary.load(job.input.library)
    oblique = ObliqueTable.load(job.input.oblique)
    summary = write_faithful_fidelity(job.cfg, job.input.frontend, job.input.gds, library, job.output.fidelity,
                                      job.output.summary, job.output.figure, oblique=oblique, device=job.device)
    job.tracker.log_metrics(flat_metrics(summary))
    for name in ("fidelity", "summary", "figure"):
        job.tracker.log_artifact(job.output[name])


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
