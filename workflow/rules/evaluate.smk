rule predict:
    input:
        checkpoint=f"{RES}/{{task}}/{{model}}/fold_{{fold}}/checkpoint_final.pt",
        splits=f"{RES}/{{task}}/splits_final.json",
    output:
        f"{RES}/{{task}}/{{model}}/fold_{{fold}}/predictions/predictions.json",
    params:
        dataset=lambda wc: dataset_dir(wc.task),
        folder=lambda wc, output: os.path.dirname(output[0]),
        settings=lambda wc: stage_settings(wc.task, "inference"),
    resources:
        launcher=lambda wc: launcher_settings(wc.task),
    log:
        f"{RES}/{{task}}/logs/predict_{{model}}_fold_{{fold}}.log",
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} scnas predict --model {input.checkpoint:q} --dataset {params.dataset:q}"
        " --splits {input.splits:q} --fold {wildcards.fold} --out {params.folder:q} --task {wildcards.task}"
        " --config {params.settings:q} --launcher {resources.launcher:q} > {log:q} 2>&1"


rule evaluate:
    input:
        predictions=f"{RES}/{{task}}/{{model}}/fold_{{fold}}/predictions/predictions.json",
        splits=f"{RES}/{{task}}/splits_final.json",
    output:
        metrics=f"{RES}/{{task}}/{{model}}/fold_{{fold}}/metrics.csv",
        summary=f"{RES}/{{task}}/{{model}}/fold_{{fold}}/summary.json",
    params:
        dataset=lambda wc: dataset_dir(wc.task),
        settings=lambda wc: stage_settings(wc.task, "evaluation"),
    log:
        f"{RES}/{{task}}/logs/evaluate_{{model}}_fold_{{fold}}.log",
    conda:
        ENV
    shell:
        "scnas evaluate --predictions $(dirname {input.predictions:q}) --dataset {params.dataset:q}"
        " --splits {input.splits:q} --fold {wildcards.fold} --out $(dirname {output.metrics:q})"
        " --config {params.settings:q} > {log:q} 2>&1"


rule cv_table_task:
    input:
        lambda wc: fold_metrics(wc.task),
    output:
        multiext(f"{RES}/{{task}}/cv_table", ".csv", ".md", ".tex"),
    params:
        prefix=lambda wc, output: output[0][: -len(".csv")],
    log:
        f"{RES}/{{task}}/logs/cv_table.log",
    conda:
        ENV
    shell:
        "scnas table --metrics {input:q} --out {params.prefix:q} > {log:q} 2>&1"


rule cv_table:
    input:
        [fold_metrics(task) for task in TASKS],
    output:
        multiext(f"{RES}/cv_table", ".csv", ".md", ".tex"),
    params:
        prefix=lambda wc, output: output[0][: -len(".csv")],
    log:
        f"{RES}/logs/cv_table.log",
    conda:
        ENV
    shell:
        "scnas table --metrics {input:q} --out {params.prefix:q} > {log:q} 2>&1"
