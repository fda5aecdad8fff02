# A task's test images (MSD: dataset.json `test` or imagesTs/; nnU-Net v2: imagesTs/CASE_XXXX), segmented
# by each model with the ensemble of the study's folds (mean softmax), into RESULTS/TASK/MODEL/test_predictions/.
# Only tasks that have test images get the target; synthetic tasks have none.
from scnas.inference.testset import ensemble_targets, image_files

TEST_SET_TARGETS = ensemble_targets(CFG, L, TASKS)


rule predict_test_set:
    input:
        checkpoints=lambda wc: [L.checkpoint(wc.task, wc.model, fold) for fold in CFG.folds],
        images=lambda wc: image_files(dataset_dir(wc.task)),
    output:
        L.test_manifest("{task}", "{model}"),
    params:
        dataset=lambda wc: dataset_dir(wc.task),
        model=lambda wc: L.model(wc.task, wc.model),
        folds=" ".join(map(str, CFG.folds)),
        folder=lambda wc: L.test_predictions(wc.task, wc.model),
        settings=lambda wc: stage_settings(wc.task, "inference"),
    resources:
        launcher=lambda wc: launcher_settings(wc.task),
        gpu=lambda wc: gpus(wc.task, "predict"),
    log:
        L.log("{task}", "predict_test_set_{model}.log"),
    threads: HEAVY_THREADS
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} scnas predict --model {params.model:q} --folds {params.folds}"
        " --dataset {params.dataset:q} --test --out {params.folder:q} --task {wildcards.task}"
        " --config {params.settings:q} --launcher {resources.launcher:q} > {log:q} 2>&1"
