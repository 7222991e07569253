# E2E baselines (dko.e2e): the metasurface trained through the depth loss, one job per variant in
# e2e.variants, each given the compute DKO spent (stage1/budget.json + dko/budget.json of this run).


wildcard_constraints:
    variant="|".join(catalogue.E2E_VARIANTS),


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
        config=JOB_CONFIG("train_e2e"),
    log:
        f"{EXP}/logs/train_e2e_{{variant}}.log",
    threads: lambda wc: CONF(wc)["threads"]
    resources:
        budget_timed=1,
    conda:
        ENV
    script:
        "../scripts/train_e2e.py"
