# biocredit: every paper figure and table as a target.
#   snakemake --cores 2                       # the scale in config.yaml (quick)
#   snakemake --cores 2 --config scale=paper  # paper scale
#   snakemake --report results/quick/report.html
import sys

from snakemake.utils import min_version, validate

min_version("8.10")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.compare.output,
        [s for e in EXPERIMENTS for s in awaited_runs(e)],  # runs the tables lack or hold with other settings
