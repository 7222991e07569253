# Comparison of every evaluated model (dko.compare): summary table, stage costs, DKO-vs-E2E ratios, figures;
# in a sweep, also one aggregate over all points.


rule compare:
    input:
        unpack(COMPARE_INPUTS),
    output:
        summary=report(f"{EXP}/compare/summary.csv", caption="../report/compare_summary.rst", category="Comparison"),
        markdown=f"{EXP}/compare/summary.md",
        costs=f"{EXP}/compare/stage_costs.csv",
        headline=f"{EXP}/compare/headline.json",
        budget_curves=report(f"{EXP}/compare/budget_curves.png", caption="../report/compare_budget.rst",
                             category="Comparison"),
        stage_costs=report(f"{EXP}/compare/stage_costs.png", caption="../report/compare_costs.rst",
                           category="Comparison"),
        depth_maps=report(f"{EXP}/compare/depth_maps.png", caption="../report/compare_depth.rst",
                          category="Comparison"),
        psf_kernels=report(f"{EXP}/compare/psf_kernels.png", caption="../report/compare_psf.rst",
                           category="Comparison"),
    params:
        config=JOB_CONFIG("compare"),
    log:
        f"{EXP}/logs/compare.log",
    conda:
        ENV
    script:
        "../scripts/compare.py"


TARGETS += [f"{EXP}/compare/summary.csv", f"{EXP}/compare/summary.md"]

if SWEEP:
    SWEEP_DIR = f"{config['results_dir']}/{config['experiment']}/compare"

    rule compare_sweep:
        input:
            summaries=expand(f"{EXP}/compare/summary.csv", point=list(SWEEP)),
            headlines=expand(f"{EXP}/compare/headline.json", point=list(SWEEP)),
        output:
            points=f"{SWEEP_DIR}/sweep_points.csv",
            summary=report(f"{SWEEP_DIR}/sweep_summary.csv", caption="../report/compare_sweep.rst",
                           category="Sweep"),
            headline=f"{SWEEP_DIR}/sweep_headline.csv",
            markdown=f"{SWEEP_DIR}/sweep_summary.md",
            figure=report(f"{SWEEP_DIR}/sweep_abs_rel.png", caption="../report/compare_sweep.rst", category="Sweep"),
        params:
            config=JOB_CONFIG("compare_sweep"),
        log:
            f"{SWEEP_DIR}/compare_sweep.log",
        conda:
            ENV
        script:
            "../scripts/compare_sweep.py"

    TARGETS += [f"{SWEEP_DIR}/sweep_summary.csv", f"{SWEEP_DIR}/sweep_summary.md"]
