rule train:
    input:
        plans=L.plans("{task}"),
        splits=L.splits("{task}"),
        genotype=genotype_for,
    output:
        L.checkpoint("{task}", "{model}", "{fold}"),
    params:
        preprocessed=lambda wc: L.preprocessed(wc.task),
        folder=lambda wc: L.fold(wc.task, wc.model, wc.fold),
        settings=lambda wc: stage_settings(wc.task, "train"),
        genotype=lambda wc, input: f"--genotype {input.genotype}" if input.genotype else "",
        model=lambda wc: model_of(wc.model),
    resources:
        launcher=lambda wc: launcher_settings(wc.task),
        gpu=lambda wc: gpus(wc.task, "train"),
    log:
        L.log("{task}", "train_{model}_fold_{fold}.log"),
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} scnas train --model {params.model} {params.genotype}"
        " --preprocessed {params.preprocessed:q} --splits {input.splits:q} --fold {wildcards.fold}"
        " --out {params.folder:q} --task {wildcards.task} --config {params.settings:q}"
        " --launcher {resources.launcher:q} > {log:q} 2>&1"
