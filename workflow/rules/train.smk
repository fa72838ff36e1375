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
