# DKO pipeline: see README.md and shared DESIGN.md. Domain logic lives in src/dko; rules only wire files.
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile is self-contained; config/config.yaml is the default otherwise.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


from dko.config import config_from_dict, resolve_config

# Validate (JSON Schema + semantic checks) before the DAG is built; config then holds every key.
try:
    _resolved = resolve_config(config)
except (ValueError, TypeError) as _err:
    raise WorkflowError(f"invalid configuration: {_err}")
config.clear()
config.update(_resolved)
CFG = config_from_dict(config)
# Every output path starts with EXP. Rules read config values ONLY through CONF(wildcards), e.g.
#   params: settings=lambda wc: CONF(wc)["metaatoms"]
# and call expand(..., allow_missing=True), so that a sweep (issue 7) can turn EXP into a pattern
# with a per-combination wildcard and give every combination its own config.
EXP = f"{config['results_dir']}/{config['experiment']}"


def CONF(wildcards=None):
    """The resolved config (a dict) that applies to a job with these wildcards."""
    return config


report: "workflow/report/workflow.rst"


include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        f"{EXP}/data/meta.json",
        f"{EXP}/data/preview.png",


onstart:
    if CFG.tracking.enabled:
        from dko.tracking import start_pipeline

        try:
            start_pipeline(CFG, tags={"dko.invocation": "snakemake"})
        except Exception as _exc:
            print(f"WARNING: MLflow tracking could not start ({_exc}); results on disk are unaffected")


onsuccess:
    if CFG.tracking.enabled:
        from dko.tracking import finish_pipeline

        finish_pipeline(CFG, "FINISHED")


onerror:
    if CFG.tracking.enabled:
        from dko.tracking import finish_pipeline

        finish_pipeline(CFG, "FAILED")
