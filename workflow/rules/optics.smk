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


TARGETS += [f"{EXP}/metaatoms/library.npz", f"{EXP}/metaatoms/library.png"]
