rule figures:
    input:
        curves=rules.aggregate.output.curves,
        provenance=rules.aggregate.output.provenance,
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
        figure=lambda w: next(f for f in experiment_cfg(w.experiment)["figures"] if f["name"] == w.fig),
        methods=lambda w: experiment_cfg(w.experiment)["methods"],
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/figures/{{experiment}}_{{fig}}.log",
    message:
        "Drawing figure {wildcards.fig} of {wildcards.experiment}"
    shell:
        f"{cli('figures')} --experiment {{wildcards.experiment}} --figure {{wildcards.fig}} > {{log}} 2>&1"
