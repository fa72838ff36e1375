rule prepare_data:
    output:
        f"{DATA}/{{folder}}/verified.json",
    params:
        dataset=lambda w: FOLDER_TO_DATASET[w.folder],
        # The data settings as flags, not the scale's merged config: the data folder is shared by every scale,
        # and a command that differed per scale would re-verify the data each time the scale changes.
        source=data_source_flags(),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/prepare_data/{{folder}}.log",
    message:
        "Preparing and verifying the {params.dataset} dataset"
    shell:
        f"{PY} -m biocredit prepare-data {{params.dataset}} --data-dir {shlex.quote(DATA)} {{params.source}} > {{log}} 2>&1"
