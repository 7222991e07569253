# DKO pipeline: see README.md and shared DESIGN.md. Domain logic lives in src/dko; rules only wire files.
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile is self-contained; config/config.yaml is the default otherwise.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


from dko.config import config_from_dict, deep_merge, load_yaml_file, parse_config_overrides, resolve_config
import re

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

# A job reads config only through its params (`config=JOB_CONFIG(rule)`: the keys dko.catalogue declares for it),
# so a changed key reruns exactly the jobs that read it; dko.workflow.run_job enforces the declaration.

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


if SWEEP:

    wildcard_constraints:
        point="|".join(re.escape(p) for p in SWEEP),


include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/optics.smk"
include: "workflow/rules/dko.smk"
include: "workflow/rules/e2e.smk"
include: "workflow/rules/faithful.smk"
include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS(),


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
