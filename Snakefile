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
EXP = f"{config['results_dir']}/{config['experiment']}"


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
