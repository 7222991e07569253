# DKO pipeline: see README.md and shared DESIGN.md. Domain logic lives in src/dko; rules only wire files.
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile is self-contained; config/config.yaml is the default otherwise.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


import re

from dko.config import config_from_dict, deep_merge, load_yaml_file, parse_config_overrides, resolve_config
from dko.sweep import sweep_points

# Validate (JSON Schema + semantic checks) before the DAG is built; config then holds every key.
# Snakemake's loaders let a duplicated key's last value win and read --config's nested values as
# strings: re-read each config file strictly, and re-apply the raw --config text with schema types.
try:
    for _path in workflow.configfiles:
        load_yaml_file(_path)
    _cli = parse_config_overrides(workflow.config_settings.config_args)
    _resolved = resolve_config(deep_merge(config, _cli))
except (ValueError, TypeError) as _err:
    raise WorkflowError(f"invalid configuration: {_err}")
config.clear()
config.update(_resolved)
CFG = config_from_dict(config)
try:
    SWEEP = sweep_points(config)  # {point id: resolved config}; empty without a sweep
except ValueError as _err:
    raise WorkflowError(f"invalid configuration: {_err}")

# Every output path starts with EXP. Rules read config values ONLY through CONF(wildcards), e.g.
#   params: settings=lambda wc: CONF(wc)["metaatoms"]
# and call expand(..., allow_missing=True): in a sweep EXP holds the wildcard {point} and every
# point has its own config. Rule files add their final outputs to TARGETS.
if SWEEP:
    EXP = f"{config['results_dir']}/{config['experiment']}/sweep/{{point}}"

    wildcard_constraints:
        point="|".join(re.escape(p) for p in SWEEP),

else:
    EXP = f"{config['results_dir']}/{config['experiment']}"
TARGETS = []


def CONF(wildcards=None):
    """The resolved config (a dict) that applies to a job with these wildcards."""
    if SWEEP:
        return SWEEP[wildcards.point]
    return config


report: "workflow/report/workflow.rst"


include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/optics.smk"
include: "workflow/rules/dko.smk"
include: "workflow/rules/e2e.smk"
# compare.smk stays LAST: it gathers every model that the files above add to EVAL_MODELS.
include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        expand(TARGETS, point=list(SWEEP)) if SWEEP else TARGETS,


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
