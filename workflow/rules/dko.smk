# Stage 2, direct kernel optimization (dko.kernels, dko.stage2, dko.frontend): conv1 of the stage-1 network ->
# kernel bank -> one optimize_metasurface job per shard of output channels (parallel) -> assembled front end
# (frontend.npz, fidelity.csv, budget.json, figures) -> GDSII; the DKO models join the evaluate rule.
import math


def _n_shards(wc):
    cfg = CONF(wc)
    return math.ceil(cfg["network"]["base_width"] / cfg["dko"]["shard_size"])


def _dko_path(wc, path):
    return path.replace("{point}", wc.point) if SWEEP else path


wildcard_constraints:
    shard=r"\d+",


rule extract_kernels:
    input:
        model=f"{EXP}/stage1/model.pt",
    output:
        bank=f"{EXP}/dko/kernels.pt",
        plot=report(f"{EXP}/dko/kernels.png", caption="../report/dko_kernels.rst", category="Stage 2 (DKO)"),
    params:
        wavelengths_m=lambda wc: CONF(wc)["optics"]["wavelengths_m"],
    log:
        f"{EXP}/logs/extract_kernels.log",
    script:
        "../scripts/extract_kernels.py"


rule optimize_metasurface:
    input:
        bank=f"{EXP}/dko/kernels.pt",
        library=f"{EXP}/metaatoms/library.npz",
    output:
        shard=f"{EXP}/dko/shards/shard_{{shard}}.pt",
        budget=f"{EXP}/dko/shards/shard_{{shard}}_budget.json",
    params:
        dko=lambda wc: CONF(wc)["dko"],
        optics=lambda wc: CONF(wc)["optics"],
        seed=lambda wc: CONF(wc)["seed"],
    log:
        f"{EXP}/logs/optimize_metasurface_{{shard}}.log",
    # one thread per shard: on a small machine the shards themselves are the parallelism
    threads: 1
    script:
        "../scripts/optimize_metasurface.py"


def _shard_files(wc):
    return [_dko_path(wc, f"{EXP}/dko/shards/shard_{s}.pt") for s in range(_n_shards(wc))]


rule assemble_frontend:
    input:
        bank=f"{EXP}/dko/kernels.pt",
        library=f"{EXP}/metaatoms/library.npz",
        shards=_shard_files,
    output:
        frontend=f"{EXP}/dko/frontend.npz",
        fidelity=f"{EXP}/dko/fidelity.csv",
        summary=f"{EXP}/dko/fidelity_summary.json",
        budget=f"{EXP}/dko/budget.json",
        kernels_fit=report(f"{EXP}/dko/kernels_fit.png", caption="../report/dko_fit.rst", category="Stage 2 (DKO)"),
        loss_curves=report(f"{EXP}/dko/loss_curves.png", caption="../report/dko_loss.rst", category="Stage 2 (DKO)"),
        fidelity_vs_distance=report(f"{EXP}/dko/fidelity_vs_distance.png", caption="../report/dko_distance.rst",
                                    category="Stage 2 (DKO)"),
    params:
        dko=lambda wc: CONF(wc)["dko"],
        optics=lambda wc: CONF(wc)["optics"],
    log:
        f"{EXP}/logs/assemble_frontend.log",
    threads: lambda wc: CONF(wc)["threads"]
    script:
        "../scripts/assemble_frontend.py"


rule metasurface_gds:
    input:
        frontend=f"{EXP}/dko/frontend.npz",
    output:
        gds=f"{EXP}/dko/array.gds",
        summary=f"{EXP}/dko/gds_summary.json",
    params:
        period_m=lambda wc: CONF(wc)["metaatoms"]["period_m"],
        radius_step_m=lambda wc: CONF(wc)["dko"]["gds_radius_step_m"],
    log:
        f"{EXP}/logs/metasurface_gds.log",
    script:
        "../scripts/metasurface_gds.py"


_DKO_EVAL = {
    "model": f"{EXP}/stage1/model.pt",
    "frontend": f"{EXP}/dko/frontend.npz",
    "teacher": f"{EXP}/stage1/model.pt",
}
for _name in ("dko", "dko_noisy", "dko_layered"):
    EVAL_INPUTS[_name] = dict(_DKO_EVAL)
EVAL_MODELS += ["dko", "dko_noisy", "dko_layered"]

TARGETS += [
    f"{EXP}/dko/kernels.png",
    f"{EXP}/dko/frontend.npz",
    f"{EXP}/dko/fidelity.csv",
    f"{EXP}/dko/budget.json",
    f"{EXP}/dko/array.gds",
] + [f"{EXP}/evaluate/{m}/metrics.json" for m in ("dko", "dko_noisy", "dko_layered")]
