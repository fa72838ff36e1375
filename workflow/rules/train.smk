rule train:
    input:
        data=lambda w: dataset_marker(w.experiment),
    output:
        summary=f"{RESULTS}/runs/{{experiment}}/{{method}}/seed{{seed}}/summary.json",
        metrics=f"{RESULTS}/runs/{{experiment}}/{{method}}/seed{{seed}}/metrics.csv",
    params:
        # Everything that determines the run's numbers: a change reruns this job only.
        run=lambda w: resolve_run(config, w.experiment, w.method, int(w.seed)),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/train/{{experiment}}/{{method}}/seed{{seed}}.log",
    threads: config.get("threads", 1)
    resources:
        mem_mb=4000,
        runtime=240,
    message:
        "Training {wildcards.experiment} / {wildcards.method} / seed {wildcards.seed}"
    shell:
        f"{cli('train')} --set threads={{threads}} --experiment {{wildcards.experiment}}"
        f" --method {{wildcards.method}} --seed {{wildcards.seed}} > {{log}} 2>&1"


# The seeds of a synthetic cell (experiment × method with train.ensemble_seeds: true) train in ONE job, as one
# stacked ensemble (biocredit.ensemble): the same per-seed files and numbers as the per-seed `train` jobs, a
# fraction of the wall time. One rule per experiment (its seed list is fixed by the scale); `ruleorder` makes it
# win over `train` for its cells. `--config ensembles=false` switches back to one job per seed.
for _exp in EXPERIMENTS:
    _cells = ensemble_methods(_exp)
    if not _cells:
        continue

    rule:
        name:
            f"train_ensemble_{_exp}"
        input:
            data=dataset_marker(_exp),
        output:
            summaries=expand(f"{RESULTS}/runs/{_exp}/{{{{method}}}}/seed{{seed}}/summary.json", seed=seeds(config, _exp)),
            metrics=expand(f"{RESULTS}/runs/{_exp}/{{{{method}}}}/seed{{seed}}/metrics.csv", seed=seeds(config, _exp)),
        wildcard_constraints:
            method="|".join(_cells),
        params:
            # Everything that determines the runs' numbers: a change reruns this job only.
            runs=lambda w, _exp=_exp: [resolve_run(config, _exp, w.method, s) for s in seeds(config, _exp)],
            seeds=seeds_label(seeds(config, _exp)),
            experiment=_exp,
        conda:
            "../../environment.yml"
        log:
            f"{RESULTS}/logs/train/{_exp}/{{method}}/seeds{seeds_label(seeds(config, _exp))}.log",
        threads: config.get("threads", 1)
        resources:
            mem_mb=4000,
            runtime=240,
        message:
            f"Training {_exp} / {{wildcards.method}} / seeds {{params.seeds}} as one ensemble"
        shell:
            f"{cli('train')} --set threads={{threads}} --experiment {{params.experiment}}"
            f" --method {{wildcards.method}} --seeds {{params.seeds}} > {{log}} 2>&1"

    workflow.ruleorder(f"train_ensemble_{_exp}", "train")
