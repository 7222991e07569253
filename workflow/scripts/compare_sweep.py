"""Rule compare_sweep: one table over all sweep points and mean / spread per group (dko.compare.compare_sweep)."""

from pathlib import Path

from dko.compare import compare_sweep
from dko.workflow import run_job


def main(job):
    summaries = {Path(path).parents[1].name: path for path in job.input.summaries}  # <point>/compare/summary.csv
    out_dir = Path(job.output.summary).parent
    sweep = {"grid": job.cfg.sweep.grid, "table": job.cfg.sweep.table}
    result = compare_sweep({"sweep": sweep}, summaries, out_dir, title=f"DKO sweep: experiment {job.cfg.experiment}",
                           figure=job.output.figure)
    ratios = result["ratios"]
    if len(ratios):  # headline ratios averaged over each group (e.g. over seeds)
        keys = [c for c in ratios.columns if c not in ("n",) and not c.startswith("value_")]
        job.tracker.log_metrics({"__".join(str(r[k]) for k in keys) + "_mean": r["value_mean"]
                                 for _, r in ratios.iterrows()})
    job.tracker.log_params({"sweep_points": len(summaries)})
    for path in result["files"].values():
        job.tracker.log_artifact(path, "sweep")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
