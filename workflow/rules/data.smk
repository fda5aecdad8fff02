rule synth:
    output:
        os.path.join(L.raw("{task}"), "dataset.json"),
    params:
        spec=lambda wc: CFG.task(wc.task).synthetic,
        folder=lambda wc, output: os.path.dirname(output[0]),
    log:
        L.log("{task}", "synth.log"),
    conda:
        ENV
    wildcard_constraints:
        task=_alternatives(SYNTHETIC),
    shell:
        "scnas synth --kind {params.spec.kind} --cases {params.spec.cases} --seed {params.spec.seed}"
        " --size {params.spec.size} --out {params.folder:q} > {log:q} 2>&1"


rule check:
    input:
        dataset_json,
    output:
        L.check("{task}"),
    params:
        dataset=lambda wc: dataset_dir(wc.task),
    log:
        L.log("{task}", "check.log"),
    threads: 2
    conda:
        ENV
    shell:
        "scnas check --dataset {params.dataset:q} --threads {threads} --report {output:q} > {log:q} 2>&1"


rule splits:
    input:
        check=L.check("{task}"),
        nnunet=lambda wc: (
            os.path.join(dataset_dir(wc.task), CFG.task(wc.task).splits_file)
            if CFG.task(wc.task).splits_file
            else []
        ),
    output:
        L.splits("{task}"),
    params:
        dataset=lambda wc: dataset_dir(wc.task),
        folds=CFG.num_folds,
        seed=CFG.seed,
        nnunet=lambda wc, input: f"--nnunet {input.nnunet}" if input.nnunet else "",
    log:
        L.log("{task}", "splits.log"),
    conda:
        ENV
    shell:
        "scnas splits --dataset {params.dataset:q} --out {output:q} --folds {params.folds}"
        " --seed {params.seed} {params.nnunet} > {log:q} 2>&1"


rule preprocess:
    input:
        L.check("{task}"),
    output:
        L.plans("{task}"),
    params:
        dataset=lambda wc: dataset_dir(wc.task),
        folder=lambda wc: L.preprocessed(wc.task),
        settings=lambda wc: stage_settings(wc.task, "preprocess", "plan"),
    log:
        L.log("{task}", "preprocess.log"),
    threads: lambda wc: CFG.settings(wc.task).preprocess.threads
    conda:
        ENV
    shell:
        "scnas preprocess --dataset {params.dataset:q} --out {params.folder:q} --threads {threads}"
        " --task {wildcards.task} --config {params.settings:q} > {log:q} 2>&1"
