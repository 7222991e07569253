# Stage 1: the electronic depth CNN (dko.depth.train) and depth evaluation of every model (dko.depth.evaluate).

# Files the evaluate rule needs per model (later stages add theirs, e.g. EVAL_INPUTS["dko"] = {...}).
EVAL_INPUTS = {
    "electronic": {"model": f"{EXP}/stage1/model.pt"},
    "mean": {},
    "rowmean": {},
}
# Models evaluated by default and gathered by `compare`; later stages append theirs (e.g. "dko").
EVAL_MODELS = ["electronic", "mean", "rowmean"]


rule train_electronic:
    input:
        meta=f"{EXP}/data/meta.json",
    output:
        model=f"{EXP}/stage1/model.pt",
        budget=f"{EXP}/stage1/budget.json",
        curves=f"{EXP}/stage1/curves.csv",
        plot=report(f"{EXP}/stage1/curves.png", caption="../report/stage1.rst", category="Stage 1"),
    params:
        network=lambda wc: CONF(wc)["network"],
        train=lambda wc: CONF(wc)["train"],
        seed=lambda wc: CONF(wc)["seed"],
    log:
        f"{EXP}/logs/train_electronic.log",
    threads: lambda wc: CONF(wc)["threads"]
    resources:
        budget_timed=1,
    script:
        "../scripts/train_electronic.py"


def _evaluate_inputs(wc):
    if wc.model not in EVAL_INPUTS:
        raise WorkflowError(f"unknown model '{wc.model}' to evaluate (known: {sorted(EVAL_INPUTS)})")
    # Input functions' paths are not wildcard-expanded: fill in a sweep point's {point} here.
    files = {"meta": f"{EXP}/data/meta.json", **EVAL_INPUTS[wc.model]}
    return {name: path.replace("{point}", wc.point) if SWEEP else path for name, path in files.items()}


rule evaluate:
    input:
        unpack(_evaluate_inputs),
    output:
        metrics=f"{EXP}/evaluate/{{model}}/metrics.json",
        examples=f"{EXP}/evaluate/{{model}}/examples.npz",
        plot=report(f"{EXP}/evaluate/{{model}}/examples.png", caption="../report/evaluate.rst", category="Evaluation",
                    subcategory="{model}"),
    params:
        eval=lambda wc: CONF(wc)["eval"],
    log:
        f"{EXP}/logs/evaluate_{{model}}.log",
    threads: lambda wc: CONF(wc)["threads"]
    script:
        "../scripts/evaluate.py"


TARGETS += expand(
    [f"{EXP}/stage1/model.pt", f"{EXP}/stage1/curves.png", f"{EXP}/evaluate/{{model}}/metrics.json",
     f"{EXP}/evaluate/{{model}}/examples.png"],
    model=EVAL_MODELS,
    allow_missing=True,
)
