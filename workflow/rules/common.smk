# Shared definitions for the rule files (which hold rules only). Here are experiment paths, each job's config, the model
# catalogue's targets and inputs. Included first. The domain knowledge is in the library: the models, the
# stages and the config keys each job reads are declared in dko.catalogue.
from dko import catalogue
from dko.config import config_from_dict, declared_config

# Every output path starts with EXP. In a sweep EXP holds the wildcard {point} (constrained in the Snakefile to
# the point ids) and every point has its own config.
if SWEEP:
    EXP = f"{config['results_dir']}/{config['experiment']}/sweep/{{point}}"
else:
    EXP = f"{config['results_dir']}/{config['experiment']}"

# Every rule's software: envs/dko.yaml (used with --sdm conda; the venv of `make` otherwise).
ENV = "../../envs/dko.yaml"

# Targets of the default rule `all` that every configuration has; rule files add theirs.
TARGETS = []

_TYPED = {}


def CONF(wildcards=None):
    """The resolved config (a dict) that applies to a job with these wildcards."""
    point = getattr(wildcards, "point", None) if SWEEP else None
    return SWEEP[point] if point else config  # a sweep's own jobs (compare_sweep): the top-level config


def TYPED(wildcards=None):
    """The typed dko.config.Config of a job with these wildcards."""
    key = getattr(wildcards, "point", None) if SWEEP else None
    if key not in _TYPED:
        _TYPED[key] = config_from_dict(CONF(wildcards), check_paths=False)
    return _TYPED[key]


def AT(wildcards, path):
    """``path`` with the sweep point filled in (input functions' paths are not wildcard-expanded)."""
    return path.replace("{point}", wildcards.point) if SWEEP else path


def JOB_CONFIG(rule):
    """A rule's params entry: exactly the config keys its job reads (dko.catalogue.job_config_keys)."""

    def params(wildcards):
        keys = catalogue.job_config_keys(rule, dict(wildcards.items()), TYPED(wildcards))
        return declared_config(CONF(wildcards), keys)

    return params


def EVALUATE_INPUTS(wildcards):
    """The dataset and the files of the catalogue entry of model {model}."""
    try:
        entry = catalogue.model(wildcards.model)
    except ValueError as err:
        raise WorkflowError(str(err))
    files = {"meta": f"{EXP}/data/meta.json", **{k: f"{EXP}/{p}" for k, p in entry.inputs.items()}}
    return {name: AT(wildcards, path) for name, path in files.items()}


def SHARD_FILES(wildcards):
    """One optimize_metasurface output per shard of conv1's output channels."""
    conf = TYPED(wildcards)
    return [AT(wildcards, f"{EXP}/dko/shards/shard_{s}.pt")
            for s in range(catalogue.n_shards(conf.network.base_width, conf.dko.shard_size))]


def COMPARE_INPUTS(wildcards):
    """Only what the point's models need: a config that disables a stage has fewer models and files."""
    from dko.compare import required_files

    files = required_files(catalogue.evaluated_models(TYPED(wildcards)))
    return {kind: [AT(wildcards, f"{EXP}/{path}") for path in paths] for kind, paths in files.items() if paths}


def ALL_TARGETS():
    """The default target's files: TARGETS, and per model / E2E variant of each point's configuration."""
    out = []
    for point, conf in SWEEP.items() if SWEEP else [(None, config)]:
        typed = config_from_dict(conf, check_paths=False)
        exp = EXP.replace("{point}", point) if point else EXP
        out += [t.replace("{point}", point) if point else t for t in TARGETS]
        for name in catalogue.evaluated_models(typed):
            out += [f"{exp}/evaluate/{name}/metrics.json", f"{exp}/evaluate/{name}/examples.png"]
        for variant in typed.e2e.variants:
            out += [f"{exp}/e2e/{variant}/budget.json", f"{exp}/e2e/{variant}/curves.png"]
    return list(dict.fromkeys(out))
