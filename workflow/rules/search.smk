rule search:
    input:
        plans=f"{RES}/{{task}}/preprocessed/plans.json",
        splits=f"{RES}/{{task}}/splits_final.json",
    output:
        f"{RES}/{{task}}/search/fold_{{fold}}/genotype.json",
    params:
        folder=lambda wc, output: os.path.dirname(output[0]),
        settings=lambda wc: stage_settings(wc.task, "search"),
    resources:
        launcher=lambda wc: launcher_settings(wc.task),
    log:
        f"{RES}/{{task}}/logs/search_fold_{{fold}}.log",
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} scnas search --preprocessed $(dirname {input.plans:q}) --splits {input.splits:q}"
        " --fold {wildcards.fold} --out {params.folder:q} --task {wildcards.task}"
        " --config {params.settings:q} --launcher {resources.launcher:q} > {log:q} 2>&1"
