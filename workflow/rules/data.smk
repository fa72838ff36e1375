FOLDER_TO_DATASET = {folder: name for name, folder in DATASET_FOLDERS.items()}


rule prepare_data:
    output:
        f"{DATA}/{{folder}}/verified.json",
    params:
        dataset=lambda w: FOLDER_TO_DATASET[w.folder],
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/prepare_data/{{folder}}.log",
    message:
        "Preparing and verifying the {params.dataset} dataset"
    shell:
        f"{cli('prepare-data')} {{params.dataset}} > {{log}} 2>&1"
