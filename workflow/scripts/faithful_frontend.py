"""Rule faithful_frontend: a design's GDSII radii -> its front end in the faithful optical model
(dko.frontend.faithful_frontend), the image formation of the opto-electronic evaluations."""

from dko.frontend.faithful_frontend import write_faithful_frontend
from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.oblique_table import ObliqueTable
from dko.workflow import run_job


def main(job):
    library = MetaAtomLibrary.load(job.input.library)
    oblique = ObliqueTable.load(job.input.oblique)
    summary = write_faithful_frontend(job.cfg, job.input.frontend, job.input.gds, library, job.output.frontend,
                                      job.output.summary, job.output.figure, oblique=oblique, device=job.device)
    cvf = summary["cheap_vs_faithful"]
    metrics = {key: cvf[key] for key in ("median_psf_rel_diff", "max_psf_rel_diff", "median_gain_ratio")}
    metrics.update(wall_s=summary["wall_s"], n_monochromatic_psfs=summary["n_monochromatic_psfs"])
    for node in summary["nodes"]:
        name = "node_{}_{}".format(*node["node"])
        metrics[f"window_light_{name}"] = node["median_window_light"]
        metrics[f"relative_illumination_{name}"] = node["relative_illumination"]
    job.tracker.log_metrics(metrics)
    job.tracker.log_params({"design": job.wildcards["design"], "field_grid": summary["field_grid"]})
    for name in ("summary", "figure"):
        job.tracker.log_artifact(job.output[name])


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
