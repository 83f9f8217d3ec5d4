# Predict on the test split, then per-slice metrics.


rule predict:
    input:
        inputs=f"{model_dir(model='inputs')}/test.h5",
        model=predict_model_input,
    output:
        pred=f"{model_dir()}/test_pred.h5",
        info=f"{model_dir()}/predict.json",
    log:
        f"{R}/logs/predict/{job_key()}.log",
    benchmark:
        f"{R}/benchmarks/predict/{job_key()}.tsv"
    conda:
        "../envs/kdmri.yaml"
    threads: TRAIN_THREADS
    resources:
        **predict_resources(),
    params:
        model=lambda w, input: input.model if w.model != "zf" else "zf",
        trust=predict_trust,
        device=config["device"],
    shell:
        "kdmri predict --model {params.model}{params.trust} --inputs {input.inputs}"
        " --out {output.pred}"
        " --info {output.info} --device {params.device} --threads {threads} 2> {log}"


rule evaluate:
    input:
        inputs=rules.predict.input.inputs,
        pred=rules.predict.output.pred,
        info=rules.predict.output.info,
    output:
        f"{model_dir()}/metrics.csv",
    log:
        f"{R}/logs/evaluate/{job_key()}.log",
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    resources:
        **CPU_JOB,
    params:
        meta=lambda w: spec_json(
            {
                "task": w.task,
                "dataset": w.dataset,
                "acceleration": float(w.acc),
                "model": w.model,
                "seed": int(w.seed),
            }
        ),
    shell:
        "kdmri evaluate --inputs {input.inputs} --predictions {input.pred}"
        " --predict-info {input.info} --meta {params.meta:q} --out {output} 2> {log}"
