"""Rule assemble_frontend: shards -> frontend.npz, fidelity.csv, budget.json, figures (see dko.stage2)."""

from pathlib import Path

from dko.frontend import load_kernel_bank
from dko.optics.metaatoms import MetaAtomLibrary
from dko.stage2 import assemble_frontend
from dko.workflow import run_job


def main(job):
    bank, _ = load_kernel_bank(job.input.bank)
    library = MetaAtomLibrary.load(job.input.library)
    summary = assemble_frontend(job.cfg, bank, library, list(job.input.shards), Path(job.output.frontend).parent)
    job.tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for name in ("fidelity", "summary", "budget", "kernels_fit", "loss_curves", "fidelity_vs_distance", "frontend"):
        job.tracker.log_artifact(job.output[name])


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
