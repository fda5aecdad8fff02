# nnU-Net v2 as the study's reference (tasks.TASK.nnunet_folds): nnU-Net plans, preprocesses, trains and
# predicts by itself, with the study's splits, batch size and number of training iterations
# (workflow/scripts/nnunet_reference.py); its predictions are scored by the same `evaluate` rule as every
# other model, in the model folder nnunet. Needs the `study` extra (nnunetv2).
NNUNET_SCRIPT = os.path.join(workflow.basedir, "workflow", "scripts", "nnunet_reference.py")


ruleorder: nnunet_train > predict


rule nnunet_prepare:
    input:
        check=L.check("{task}"),
        splits=L.splits("{task}"),
    output:
        L.nnunet_prepared("{task}"),
    params:
        script=NNUNET_SCRIPT,
        dataset=lambda wc: dataset_dir(wc.task),
        work=lambda wc: L.nnunet_work(wc.task),
        batch=lambda wc: CFG.settings(wc.task).train.batch_size,
    log:
        L.log("{task}", "nnunet_prepare.log"),
    # As many as a training: a job that needs every core waits, one core idle, until all trainings end.
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "python {params.script:q} prepare --dataset {params.dataset:q} --splits {input.splits:q}"
        " --work {params.work:q} --batch-size {params.batch} --processes {threads} > {log:q} 2>&1"


rule nnunet_train:
    input:
        L.nnunet_prepared("{task}"),
    output:
        L.manifest("{task}", "nnunet", "{fold}"),
    params:
        script=NNUNET_SCRIPT,
        work=lambda wc: L.nnunet_work(wc.task),
        folder=lambda wc: L.predictions(wc.task, "nnunet", wc.fold),
        epochs=lambda wc: CFG.settings(wc.task).train.max_epochs,
        iterations=lambda wc: CFG.settings(wc.task).train.iterations_per_epoch,
        seed=CFG.seed,
    log:
        L.log("{task}", "nnunet_train_fold_{fold}.log"),
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python {params.script:q} train --work {params.work:q} --fold {wildcards.fold}"
        " --epochs {params.epochs} --iterations {params.iterations} --seed {params.seed} --threads {threads}"
        " --out {params.folder:q} > {log:q} 2>&1"
