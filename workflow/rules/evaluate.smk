# Predict on the test split, then per-slice metrics.


rule predict:
    input:
        inputs=f"{R}/{{task}}/{{dataset}}/acc{{acc}}/inputs/seed{{seed}}/test.h5",
        model=predict_model_input,
    output:
        pred=f"{R}/{{task}}/{{dataset}}/acc{{acc}}/{{model}}/seed{{seed}}/test_pred.h5",
        info=f"{R}/{{task}}/{{dataset}}/acc{{acc}}/{{model}}/seed{{seed}}/predict.json",
    log:
        f"{R}/logs/predict/{{task}}_{{dataset}}_acc{{acc}}_{{model}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/predict/{{task}}_{{dataset}}_acc{{acc}}_{{model}}_seed{{seed}}.tsv"
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
        f"{R}/{{task}}/{{dataset}}/acc{{acc}}/{{model}}/seed{{seed}}/metrics.csv",
    log:
        f"{R}/logs/evaluate/{{task}}_{{dataset}}_acc{{acc}}_{{model}}_seed{{seed}}.log",
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
