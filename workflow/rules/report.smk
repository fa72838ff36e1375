rule compare:
    input:
        comparisons=expand(f"{RESULTS}/tables/{{experiment}}_comparison.csv", experiment=EXPERIMENTS),
        figures=[f for e in EXPERIMENTS for f in figure_files(e)],
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
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/sync_wandb.log",
    message:
        "Syncing the offline W&B runs under {RESULTS}"
    shell:
        f"{cli('sync-wandb')} --dir {RESULTS}/wandb 2>&1 | tee {{log}}"
