rule aggregate:
    input:
        lambda w: run_summaries(w.experiment),
    output:
        runs=f"{RESULTS}/tables/{{experiment}}_runs.csv",
        curves=f"{RESULTS}/tables/{{experiment}}_curves.csv",
        comparison=report(
            f"{RESULTS}/tables/{{experiment}}_comparison.csv",
            caption="../report/experiment_comparison.rst",
            category="{experiment}",
        ),
        provenance=f"{RESULTS}/tables/{{experiment}}_provenance.json",
    params:
        reported=lambda w: [experiment_cfg(w.experiment).get(k, []) for k in ("reported", "claims")],
        got=all_comparison_rows,  # read by the report's caption only
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/aggregate/{{experiment}}.log",
    message:
        "Aggregating the runs of {wildcards.experiment}"
    shell:
        f"{cli('aggregate')} --experiment {{wildcards.experiment}} > {{log}} 2>&1"
