# Fabrication and the faithful optical model (dko.stage2, dko.frontend.faithful, dko.frontend.faithful_frontend):
# every design's front end (DKO's, each E2E variant's; dko.catalogue.DESIGNS) -> its GDSII layout -> the radii read
# back from it -> the faithful front end that the opto-electronic evaluations form their images with
# (frontend_faithful.npz); DKO's design also gets the per-element fidelity table in the faithful model.


wildcard_constraints:
    design="|".join(re.escape(d) for d in catalogue.DESIGNS),


rule metasurface_gds:
    input:
        frontend=f"{EXP}/{{design}}/frontend.npz",
    output:
        gds=f"{EXP}/{{design}}/array.gds",
        summary=f"{EXP}/{{design}}/gds_summary.json",
    params:
        config=JOB_CONFIG("metasurface_gds"),
    log:
        f"{EXP}/logs/metasurface_gds/{{design}}.log",
    conda:
        ENV
    script:
        "../scripts/metasurface_gds.py"


rule faithful_fidelity:
    input:
        gds=f"{EXP}/dko/array.gds",
        frontend=f"{EXP}/dko/frontend.npz",
        library=f"{EXP}/metaatoms/library.npz",
        oblique=f"{EXP}/metaatoms/oblique.npz",
    output:
        fidelity=f"{EXP}/dko/fidelity_faithful.csv",
        summary=f"{EXP}/dko/fidelity_faithful_summary.json",
        figure=report(f"{EXP}/dko/fidelity_faithful.png", caption="../report/dko_faithful.rst",
                      category="Stage 2 (DKO)"),
    params:
        config=JOB_CONFIG("faithful_fidelity"),
    log:
        f"{EXP}/logs/faithful_fidelity.log",
    threads: lambda wc: CONF(wc)["threads"]
    conda:
        ENV
    script:
        "../scripts/faithful_fidelity.py"


rule faithful_frontend:
    input:
        gds=f"{EXP}/{{design}}/array.gds",
        frontend=f"{EXP}/{{design}}/frontend.npz",
        library=f"{EXP}/metaatoms/library.npz",
        oblique=f"{EXP}/metaatoms/oblique.npz",
    output:
        frontend=f"{EXP}/{{design}}/frontend_faithful.npz",
        summary=f"{EXP}/{{design}}/frontend_faithful.json",
        figure=report(f"{EXP}/{{design}}/psf_field_map.png", caption="../report/faithful_frontend.rst",
                      category="Faithful optics", subcategory="{design}"),
    params:
        config=JOB_CONFIG("faithful_frontend"),
    log:
        f"{EXP}/logs/faithful_frontend/{{design}}.log",
    threads: lambda wc: CONF(wc)["threads"]
    conda:
        ENV
    script:
        "../scripts/faithful_frontend.py"


TARGETS += [
    f"{EXP}/dko/array.gds",
    f"{EXP}/dko/fidelity_faithful.csv",
    f"{EXP}/dko/fidelity_faithful_summary.json",
]
