# kdmri: knowledge distillation for MRI reconstruction and restoration (KD-MRI).
#   snakemake --cores all                       the demo study of config/config.yaml
#   snakemake --cores all --configfile config/test.yaml      a tiny study
#   snakemake --report results/report.html      the HTML report of the last run
# The workflow is workflow/Snakefile (the Snakemake workflow catalog's layout). This file
# runs it from the repository as a module, exactly as another workflow uses it
# (config/README.md); an `include:` would not do, since Snakemake keeps the including
# file's default target, and the workflow's is its rule `all`.
import os

# The demo study unless --configfile names another study, which then replaces it whole
# (keys it does not give take the schema's defaults); --config KEY=VALUE overrides either.
if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


module kdmri:
    snakefile:
        "workflow/Snakefile"
    config:
        config


use rule * from kdmri
