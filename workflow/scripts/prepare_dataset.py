"""Rule prepare_dataset: synthetic scenes, or KITTI / NYUv2 converted to DKO's dataset format."""

from pathlib import Path

from dko.data.format import read_meta
from dko.data.prepare import prepare_dataset
from dko.plots import plot_dataset_preview
from dko.workflow import run_job


def main(job):
    data_dir = Path(job.output.meta).parent
    summary = prepare_dataset(job.cfg, data_dir)
    plot_dataset_preview(data_dir, job.output.preview, n_images=6)
    meta = read_meta(data_dir)
    job.tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    job.tracker.log_dict(meta, "meta.json")
    job.tracker.log_artifact(job.output.preview)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
