# SCNAS study: dataset check -> splits -> preprocessing -> per-fold search -> retraining -> sliding-window
# prediction -> metrics -> cross-validation tables. Rules live in workflow/rules/; every key of the
# config is described in scnas/resources/config.schema.yaml.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "scnas/resources/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        study_targets(),
    default_target: True
