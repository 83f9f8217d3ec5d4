# kdmri: knowledge distillation for MRI reconstruction and restoration (KD-MRI).
#   snakemake --cores all                       the demo study of config/config.yaml
#   snakemake --cores all --configfile config/test.yaml      a tiny study
#   snakemake --report results/report.html      the HTML report of the last run
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
