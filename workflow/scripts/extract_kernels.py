"""Rule extract_kernels: conv1 of the stage-1 network -> kernel bank (targets, gains, bias; see dko.frontend.bank)."""

from dko.depth.checkpoint import load_depthnet
from dko.frontend import extract_kernel_bank, plot_kernel_bank, save_kernel_bank
from dko.workflow import run_job


def main(job):
    model, _ = load_depthnet(job.input.model)
    bank = extract_kernel_bank(model, job.cfg.optics.wavelengths_m)
    save_kernel_bank(bank, job.output.bank, model=str(job.input.model))
    plot_kernel_bank(bank, job.output.plot)
    job.tracker.log_metrics({"n_elements": bank.n_elements, "n_out": bank.n_out, "n_in": bank.n_in})
    job.tracker.log_artifact(job.output.plot)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
