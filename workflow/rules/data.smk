# Stage 0: the dataset in DKO's on-disk format (dko.data.format) and its preview figure.


rule prepare_dataset:
    output:
        meta=f"{EXP}/data/meta.json",
        preview=report(f"{EXP}/data/preview.png", caption="../report/dataset.rst", category="Data"),
    params:
        config=JOB_CONFIG("prepare_dataset"),
    log:
        f"{EXP}/logs/prepare_dataset.log",
    threads: lambda wc: CONF(wc)["data"]["workers"]
    conda:
        ENV
    script:
        "../scripts/prepare_dataset.py"


TARGETS += [f"{EXP}/data/meta.json", f"{EXP}/data/preview.png"]
