# E2E baselines (dko.e2e): the metasurface trained through the depth loss, one job per variant in
# e2e.variants, each given the compute DKO spent (stage1/budget.json + dko/budget.json of this run).


def _e2e_variants():
    """Variants of every configuration (a sweep may select different ones per point)."""
    confs = list(SWEEP.values()) if SWEEP else [config]
    return sorted({v for c in confs for v in c["e2e"]["variants"]})


wildcard_constraints:
    variant="|".join(["optics", "scratch"]),


rule train_e2e:
    input:
        meta=f"{EXP}/data/meta.json",
        stage1_model=f"{EXP}/stage1/model.pt",
        stage1_budget=f"{EXP}/stage1/budget.json",
        dko_budget=f"{EXP}/dko/budget.json",
        library=f"{EXP}/metaatoms/library.npz",
    output:
        model=f"{EXP}/e2e/{{variant}}/model.pt",
        frontend=f"{EXP}/e2e/{{variant}}/frontend.npz",
        budget=f"{EXP}/e2e/{{variant}}/budget.json",
        curves=f"{EXP}/e2e/{{variant}}/curves.csv",
        plot=report(f"{EXP}/e2e/{{variant}}/curves.png", caption="../report/e2e.rst", category="E2E",
                    subcategory="{variant}"),
    params:
        e2e=lambda wc: CONF(wc)["e2e"],
        optics=lambda wc: CONF(wc)["optics"],
        train=lambda wc: CONF(wc)["train"],
        seed=lambda wc: CONF(wc)["seed"],
    log:
        f"{EXP}/logs/train_e2e_{{variant}}.log",
    threads: lambda wc: CONF(wc)["threads"]
    resources:
        budget_timed=1,
    script:
        "../scripts/train_e2e.py"


for _variant in _e2e_variants():
    EVAL_INPUTS[f"e2e_{_variant}"] = EVAL_INPUTS[f"e2e_{_variant}_noisy"] = {
        "model": f"{EXP}/e2e/{_variant}/model.pt",
        "frontend": f"{EXP}/e2e/{_variant}/frontend.npz",
        "teacher": f"{EXP}/stage1/model.pt",
    }
    EVAL_MODELS += [f"e2e_{_variant}", f"e2e_{_variant}_noisy"]
    TARGETS += expand(
        [f"{EXP}/e2e/{_variant}/budget.json", f"{EXP}/e2e/{_variant}/curves.png",
         f"{EXP}/evaluate/e2e_{_variant}/metrics.json", f"{EXP}/evaluate/e2e_{_variant}_noisy/metrics.json"],
        allow_missing=True,
    )
