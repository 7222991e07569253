# Stage 2, direct kernel optimization (dko.frontend, dko.stage2): conv1 of the stage-1 network -> kernel bank
# -> one optimize_metasurface job per shard of output channels (parallel) -> assembled front end
# (frontend.npz, fidelity.csv, budget.json, figures); its GDSII and faithful re-simulation are in faithful.smk, the
# DKO models are evaluated by rule evaluate.


wildcard_constraints:
    shard=r"\d+",


rule extract_kernels:
    input:
        model=f"{EXP}/stage1/model.pt",
    output:
        bank=f"{EXP}/dko/kernels.pt",
        plot=report(f"{EXP}/dko/kernels.png", caption="../report/dko_kernels.rst", category="Stage 2 (DKO)"),
    params:
        config=JOB_CONFIG("extract_kernels"),
    log:
        f"{EXP}/logs/extract_kernels.log",
    conda:
        ENV
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
        config=JOB_CONFIG("optimize_metasurface"),
    log:
        f"{EXP}/logs/optimize_metasurface_{{shard}}.log",
    # one thread per shard: on a small machine the shards themselves are the parallelism
    threads: 1
    conda:
        ENV
    script:
        "../scripts/optimize_metasurface.py"


rule assemble_frontend:
    input:
        bank=f"{EXP}/dko/kernels.pt",
        library=f"{EXP}/metaatoms/library.npz",
        shards=SHARD_FILES,
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
        config=JOB_CONFIG("assemble_frontend"),
    log:
        f"{EXP}/logs/assemble_frontend.log",
    threads: lambda wc: CONF(wc)["threads"]
    conda:
        ENV
    script:
        "../scripts/assemble_frontend.py"


TARGETS += [
    f"{EXP}/dko/kernels.png",
    f"{EXP}/dko/frontend.npz",
    f"{EXP}/dko/fidelity.csv",
    f"{EXP}/dko/budget.json",
]
