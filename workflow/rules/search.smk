rule search:
    input:
        plans=L.plans("{task}"),
        splits=L.splits("{task}"),
    output:
        L.genotype("{task}", "{fold}"),
    params:
        preprocessed=lambda wc: L.preprocessed(wc.task),
        folder=lambda wc: L.search(wc.task, wc.fold),
        settings=lambda wc: stage_settings(wc.task, "search"),
    resources:
        launcher=lambda wc: launcher_settings(wc.task),
        gpu=lambda wc: gpus(wc.task, "search"),
    log:
        L.log("{task}", "search_fold_{fold}.log"),
    threads: HEAVY_THREADS
    # Before the trainings that are ready too: the SCNAS training of the fold waits on the search.
    priority: 10
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} scnas search --preprocessed {params.preprocessed:q} --splits {input.splits:q}"
        " --fold {wildcards.fold} --out {params.folder:q} --task {wildcards.task}"
        " --config {params.settings:q} --launcher {resources.launcher:q} > {log:q} 2>&1"


rule random_genotype:
    output:
        L.random_genotype("{task}", "{draw}"),
    params:
        seed=CFG.seed,
    log:
        L.log("{task}", "random_genotype_{draw}.log"),
    conda:
        ENV
    shell:
        "scnas random-genotype --seed {params.seed} --draw {wildcards.draw} --out {output:q} > {log:q} 2>&1"
