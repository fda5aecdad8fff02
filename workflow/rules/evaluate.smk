from scnas.evaluation.study import TABLE_FILES


rule predict:
    input:
        checkpoint=L.checkpoint("{task}", "{model}", "{fold}"),
        splits=L.splits("{task}"),
    output:
        L.manifest("{task}", "{model}", "{fold}"),
    params:
        dataset=lambda wc: dataset_dir(wc.task),
        folder=lambda wc: L.predictions(wc.task, wc.model, wc.fold),
        settings=lambda wc: stage_settings(wc.task, "inference"),
    resources:
        launcher=lambda wc: launcher_settings(wc.task),
        gpu=lambda wc: gpus(wc.task, "predict"),
    log:
        L.log("{task}", "predict_{model}_fold_{fold}.log"),
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} scnas predict --model {input.checkpoint:q} --dataset {params.dataset:q}"
        " --splits {input.splits:q} --fold {wildcards.fold} --out {params.folder:q} --task {wildcards.task}"
        " --config {params.settings:q} --launcher {resources.launcher:q} > {log:q} 2>&1"


rule evaluate:
    input:
        predictions=L.manifest("{task}", "{model}", "{fold}"),
        splits=L.splits("{task}"),
    output:
        metrics=L.metrics("{task}", "{model}", "{fold}"),
        summary=L.summary("{task}", "{model}", "{fold}"),
    params:
        dataset=lambda wc: dataset_dir(wc.task),
        predictions=lambda wc: L.predictions(wc.task, wc.model, wc.fold),
        folder=lambda wc: L.fold(wc.task, wc.model, wc.fold),
        settings=lambda wc: stage_settings(wc.task, "evaluation"),
    log:
        L.log("{task}", "evaluate_{model}_fold_{fold}.log"),
    conda:
        ENV
    shell:
        "scnas evaluate --predictions {params.predictions:q} --dataset {params.dataset:q}"
        " --splits {input.splits:q} --fold {wildcards.fold} --out {params.folder:q}"
        " --config {params.settings:q} > {log:q} 2>&1"


rule cv_table_task:
    input:
        lambda wc: fold_metrics(wc.task),
    output:
        multiext(L.cv_table("{task}"), *TABLE_FILES),
    params:
        prefix=lambda wc, output: output[0][: -len(".csv")],
    log:
        L.log("{task}", "cv_table.log"),
    conda:
        ENV
    shell:
        "scnas table --metrics {input:q} --out {params.prefix:q} > {log:q} 2>&1"


rule cv_table:
    input:
        [fold_metrics(task) for task in TASKS],
    output:
        multiext(L.cv_table(), *TABLE_FILES),
    params:
        prefix=lambda wc, output: output[0][: -len(".csv")],
    log:
        L.log(None, "cv_table.log"),
    conda:
        ENV
    shell:
        "scnas table --metrics {input:q} --out {params.prefix:q} > {log:q} 2>&1"
