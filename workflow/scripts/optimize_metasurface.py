"""Rule optimize_metasurface: stage 2 (DKO) for one shard of output channels (see dko.stage2.optimize_shard)."""

from pathlib import Path

from dko.budget import numeric
from dko.frontend import load_kernel_bank
from dko.io import write_json
from dko.optics.metaatoms import MetaAtomLibrary
from dko.stage2 import optimize_shard
from dko.workflow import run_job


def main(job):
    bank, _ = load_kernel_bank(job.input.bank)
    library = MetaAtomLibrary.load(job.input.library)
    shard = int(job.wildcards["shard"])
    out = Path(job.output.shard)
    log_metrics = job.tracker.metrics_callback()

    def on_metrics(step, metrics):
        if step % job.cfg.dko.log_every == 0:
            log_metrics(step, metrics)

    checkpoint = out.with_suffix(".ckpt")
    budget = optimize_shard(job.cfg, bank, library, shard, out, checkpoint_path=checkpoint, device=job.device,
                            on_metrics=on_metrics, keep_checkpoint=True)
    job.remove_after_success(checkpoint)
    write_json(job.output.budget, budget)
    job.tracker.log_metrics(numeric(budget))
    job.tracker.log_artifact(job.output.budget)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
