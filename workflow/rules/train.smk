rule train:
    input:
        data=lambda w: dataset_marker(
            w.experiment, [f"{RESULTS}/runs/{w.experiment}/{w.method}/seed{w.seed}/summary.json"], runs=True
        ),
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
            data=lambda w, _exp=_exp: dataset_marker(
                _exp, [f"{RESULTS}/runs/{_exp}/{w.method}/seed{s}/summary.json" for s in seeds(config, _exp)], runs=True
            ),
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


# An experiment whose training length is chosen by a stopping rule (config `length_selection`, e.g. Lillicrap's
# "the same number of iterations for all, chosen when BP began to overfit"): one selection run on held-out
# training images, resumable, then its record (JSON + figure). Not part of `all`: at paper scale it is hours of
# training, run once and its result written into the scale's `epochs` by hand, with the record committed.
#   snakemake --cores 1 --config scale=paper -- length_selection
SELECTING = [e for e in EXPERIMENTS if experiment_cfg(e).get("length_selection")]


rule select_length:
    input:
        data=lambda w: dataset_marker(w.experiment, [f"{RESULTS}/length_selection/{w.experiment}/length_selection.json"]),
    output:
        record=f"{RESULTS}/length_selection/{{experiment}}/length_selection.json",
        figure=f"{RESULTS}/length_selection/{{experiment}}/length_selection.png",
    wildcard_constraints:
        experiment="|".join(SELECTING) or "^$",
    params:
        # The selection run's settings and the rule: a change reruns this job only.
        run=lambda w: selection_run_config(config, w.experiment, SCALE),
        rule=lambda w: experiment_cfg(w.experiment)["length_selection"],
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/length_selection/{{experiment}}.log",
    threads: config.get("threads", 1)
    resources:
        mem_mb=4000,
        runtime=2880,
    message:
        "Choosing the training length of {wildcards.experiment} by its stopping rule"
    shell:
        f"{cli('select-length')} --set threads={{threads}} --experiment {{wildcards.experiment}} > {{log}} 2>&1"


rule length_selection:
    input:
        expand(f"{RESULTS}/length_selection/{{experiment}}/length_selection.json", experiment=SELECTING),
