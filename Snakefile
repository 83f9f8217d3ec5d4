# kdmri: knowledge distillation for MRI reconstruction and restoration (KD-MRI).
#   snakemake --cores all                       the demo study of config/config.yaml
#   snakemake --cores all --configfile config/test.yaml      a tiny study
#   snakemake --report results/report.html      the HTML report of the last run
import os

from snakemake.utils import min_version

min_version("9.0")


# The demo study unless --configfile names another study, which then replaces it whole
# (keys it does not give take the schema's defaults); --config KEY=VALUE overrides either.
if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


# Jobs too light to be worth a cluster job: under --executor slurm the Snakemake process
# itself runs them (a local run runs every job locally anyway).
localrules:
    all,
    mask,
    tables,
    provenance,
    figure_panel,
    figure_curves,
    figure_mask,


rule all:
    input:
        all_outputs(),
    default_target: True
