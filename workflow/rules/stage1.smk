# Stage 1: the electronic depth CNN (dko.depth.train) and depth evaluation of every catalogue model
# (dko.catalogue.evaluate_model; the models and their input files: dko.catalogue.MODELS).


rule train_electronic:
    input:
        meta=f"{EXP}/data/meta.json",
    output:
        model=f"{EXP}/stage1/model.pt",
        budget=f"{EXP}/stage1/budget.json",
        curves=f"{EXP}/stage1/curves.csv",
        plot=report(f"{EXP}/stage1/curves.png", caption="../report/stage1.rst", category="Stage 1"),
    params:
        config=JOB_CONFIG("train_electronic"),
    log:
        f"{EXP}/logs/train_electronic.log",
    threads: lambda wc: CONF(wc)["threads"]
    resources:
        budget_timed=1,
    conda:
        ENV
    script:
        "../scripts/train_electronic.py"


rule evaluate:
    input:
        unpack(EVALUATE_INPUTS),
    output:
        metrics=f"{EXP}/evaluate/{{model}}/metrics.json",
        examples=f"{EXP}/evaluate/{{model}}/examples.npz",
        plot=report(f"{EXP}/evaluate/{{model}}/examples.png", caption="../report/evaluate.rst", category="Evaluation",
                    subcategory="{model}"),
    params:
        config=JOB_CONFIG("evaluate"),
    log:
        f"{EXP}/logs/evaluate_{{model}}.log",
    threads: lambda wc: CONF(wc)["threads"]
    conda:
        ENV
    script:
        "../scripts/evaluate.py"


TARGETS += [f"{EXP}/stage1/model.pt", f"{EXP}/stage1/curves.png"]
