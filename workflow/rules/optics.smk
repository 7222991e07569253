# Optics: the RCWA meta-atom library (dko.optics.metaatoms). The shipped table is copied when the settings
# equal it; otherwise a fresh table is solved with torcwa, with a convergence report (order n vs n + step).


rule metaatom_library:
    output:
        table=f"{EXP}/metaatoms/library.npz",
        report=f"{EXP}/metaatoms/convergence.json",
        plot=report(f"{EXP}/metaatoms/library.png", caption="../report/metaatoms.rst", category="Optics"),
    params:
        config=JOB_CONFIG("metaatom_library"),
    log:
        f"{EXP}/logs/metaatom_library.log",
    threads: lambda wc: CONF(wc)["threads"]
    conda:
        ENV
    script:
        "../scripts/metaatom_library.py"


# The faithful model's table t(r, lambda, incidence direction, polarisation) (dko.optics.oblique_table): the shipped
# one when the configuration's wavelengths, directions and physics are its own, otherwise solved (slow: the log says
# how slow) with one process per thread.
rule metaatom_oblique:
    output:
        table=f"{EXP}/metaatoms/oblique.npz",
        report=f"{EXP}/metaatoms/oblique.json",
    params:
        config=JOB_CONFIG("metaatom_oblique"),
    log:
        f"{EXP}/logs/metaatom_oblique.log",
    threads: lambda wc: CONF(wc)["threads"]
    conda:
        ENV
    script:
        "../scripts/metaatom_oblique.py"


TARGETS += [f"{EXP}/metaatoms/library.npz", f"{EXP}/metaatoms/library.png", f"{EXP}/metaatoms/oblique.json"]
