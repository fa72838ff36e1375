rule compare:
    input:
        comparisons=expand(f"{RESULTS}/tables/{{name}}_comparison.csv", name=EXPERIMENTS + ANALYSES),
        figures=[f for e in EXPERIMENTS for f in figure_files(e)] + [f for a in ANALYSES for f in analysis_figure_files(a)],
    output:
        csv=report(f"{RESULTS}/tables/paper_comparison.csv", caption="../report/comparison.rst", category="Tables"),
        md=f"{RESULTS}/tables/paper_comparison.md",
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/compare.log",
    message:
        "Comparing our numbers with the papers' and logging them to W&B"
    shell:
        f"{cli('compare')} > {{log}} 2>&1"


rule sync_wandb:
    # Upload every offline W&B run of this scale once you have a key: snakemake sync_wandb --cores 1
    localrule: True
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/sync_wandb.log",
    message:
        "Syncing the offline W&B runs under {RESULTS}"
    shell:
        f"{cli('sync-wandb')} --dir {RESULTS}/wandb 2>&1 | tee {{log}}"


rule analysis:
    # Analyses of update equations (no training runs), e.g. Lillicrap's 1-1-1 dynamics: the numbers and the verdict.
    output:
        summary=f"{RESULTS}/tables/{{analysis}}_summary.json",
        comparison=report(
            f"{RESULTS}/tables/{{analysis}}_comparison.csv",
            caption="../report/analysis_comparison.rst",
            category="{analysis}",
        ),
    params:
        analysis=lambda w: config["analyses"][w.analysis],
        got=all_comparison_rows,  # read by the report's captions only
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/{{analysis}}.log",
    message:
        "Computing the analysis {wildcards.analysis}"
    shell:
        f"{cli('analysis')} --part tables --analysis {{wildcards.analysis}} > {{log}} 2>&1"


rule analysis_figure:
    # The analysis's figure, named after the paper's figure (config `analyses.<name>.name`, e.g. fig3_dynamics).
    output:
        figure=report(
            f"{RESULTS}/figures/{{analysis}}_{{fig}}.png", caption="../report/analysis.rst", category="{analysis}"
        ),
        pdf=f"{RESULTS}/figures/{{analysis}}_{{fig}}.pdf",
    wildcard_constraints:
        fig="|".join(a["name"] for a in config.get("analyses", {}).values()) or "^$",
    params:
        analysis=lambda w: config["analyses"][w.analysis],
        got=all_comparison_rows,  # read by the report's captions only
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/{{analysis}}_{{fig}}.log",
    message:
        "Drawing the figure of the analysis {wildcards.analysis}"
    shell:
        f"{cli('analysis')} --part figure --analysis {{wildcards.analysis}} > {{log}} 2>&1"


# One target per experiment or analysis, named after it: `snakemake lillicrap_linear --cores 2` regenerates
# that experiment's figures and comparison rows only.
for _name in EXPERIMENTS + ANALYSES:

    rule:
        name:
            _name
        input:
            figure_files(_name) if _name in EXPERIMENTS else analysis_figure_files(_name),
            f"{RESULTS}/tables/{_name}_comparison.csv",
            awaited_runs(_name) if _name in EXPERIMENTS else [],
        localrule: True
