# SCNAS study: dataset check -> splits -> preprocessing -> per-fold search -> retraining -> sliding-window
# prediction -> metrics -> cross-validation tables. Rules live in workflow/rules/; every key of the
# config is described in scnas/resources/config.schema.yaml, and workflow/rules/common.smk validates it
# (schema and cross-field rules) with the same code as the `scnas` command, one line per error.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/test_set.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        study_targets(),
        TEST_SET_TARGETS,
        FIGS.targets(),
    default_target: True
