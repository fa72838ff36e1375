rule figure_data:
    # What a figure drawn from the runs' weights shows (receptive fields, filters, reconstructions), read from
    # the first seed's checkpoints into a small file committed with the tables: run folders are not committed,
    # so a fresh clone redraws these figures from it without retraining.
    input:
        runs=lambda w: expand(
            f"{RESULTS}/runs/{w.experiment}/{{method}}/seed{seeds(config, w.experiment)[0]}/summary.json",
            method=figure_cfg(w).get("methods") or list(experiment_cfg(w.experiment)["methods"]),
        ),
        data=lambda w: (
            dataset_marker(w.experiment, [f"{RESULTS}/figure_data/{w.experiment}_{w.fig}.npz"])
            if figure_cfg(w)["kind"] == "reconstructions"
            else []
        ),
    output:
        f"{RESULTS}/figure_data/{{experiment}}_{{fig}}.npz",
    params:
        figure=figure_cfg,
        # the panel titles kept in the file: a renamed method or experiment reads them again
        title=lambda w: experiment_cfg(w.experiment).get("title"),
        labels=lambda w: {m: spec.get("label") for m, spec in experiment_cfg(w.experiment)["methods"].items()},
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/figure_data/{{experiment}}_{{fig}}.log",
    message:
        "Reading the weights that figure {wildcards.fig} of {wildcards.experiment} shows"
    shell:
        f"{cli('figure-data')} --experiment {{wildcards.experiment}} --figure {{wildcards.fig}} > {{log}} 2>&1"


rule figures:
    input:
        unpack(figure_inputs),
    output:
        [
            report(
                f"{RESULTS}/figures/{{experiment}}_{{fig}}.png",
                caption="../report/figure.rst",
                category="{experiment}",
            ),
            f"{RESULTS}/figures/{{experiment}}_{{fig}}.pdf",
        ],
    params:
        figure=figure_cfg,
        methods=lambda w: experiment_cfg(w.experiment)["methods"],
        title=lambda w: experiment_cfg(w.experiment).get("title"),  # drawn above a figure without its own
        got=comparison_rows,  # read by the report's caption only
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/figures/{{experiment}}_{{fig}}.log",
    message:
        "Drawing figure {wildcards.fig} of {wildcards.experiment}"
    shell:
        f"{cli('figures')} --experiment {{wildcards.experiment}} --figure {{wildcards.fig}} > {{log}} 2>&1"
