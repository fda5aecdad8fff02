rule train:
    input:
        plans=f"{RES}/{{task}}/preprocessed/plans.json",
        splits=f"{RES}/{{task}}/splits_final.json",
        genotype=genotype_for,
    output:
        f"{RES}/{{task}}/{{model}}/fold_{{fold}}/checkpoint_final.pt",
    params:
        folder=lambda wc, output: os.path.dirname(output[0]),
        settings=lambda wc: stage_settings(wc.task, "train"),
        genotype=lambda wc, input: f"--genotype {input.genotype}" if input.genotype else "",
    resources:
        launcher=lambda wc: launcher_settings(wc.task),
    log:
        f"{RES}/{{task}}/logs/train_{{model}}_fold_{{fold}}.log",
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} scnas train --model {wildcards.model} {params.genotype}"
        " --preprocessed $(dirname {input.plans:q}) --splits {input.splits:q} --fold {wildcards.fold}"
        " --out {params.folder:q} --task {wildcards.task} --config {params.settings:q}"
        " --launcher {resources.launcher:q} > {log:q} 2>&1"
