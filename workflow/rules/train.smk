# Training through the one trainer (`kdmri train`): one rule per stage, so the rule graph
# shows the paper's procedure; a stage's models share its rule (e.g. train_imitation makes
# kd and kd_imitation). model.pt holds the best weights, and a stage with outputs of its
# own writes them beside it (train_sft: sft_student.pt, the student cascades the *_sft
# methods start from). checkpoint/last.pt (not a declared output, so Snakemake never
# deletes it) lets a re-run after a crash resume from the last finished epoch. A training
# job's priority is the cost of the chain it heads, and a teacher's cache ranks above
# every training job (kdmri.priorities, through common.smk).

for _stage in STAGES:

    rule:
        name:
            f"train_{_stage}"
        input:
            unpack(train_inputs),
        output:
            **stage_outputs(_stage),
            model=f"{model_dir()}/model.pt",
            history=f"{model_dir()}/history.csv",
        log:
            f"{R}/logs/train/{job_key()}.log",
        benchmark:
            f"{R}/benchmarks/train/{job_key()}.tsv"
        wildcard_constraints:
            model=stage_models(_stage),
        priority: job_priority("train")
        conda:
            "../envs/kdmri.yaml"
        threads: TRAIN_THREADS
        resources:
            **GPU_JOB,
            gpu=GPU,
        params:
            spec=train_spec,
            options=lambda w, input: train_options(w, input),
            device=config["device"],
            inputs_dir=input_dir("data"),
            out_dir=output_dir("model"),
        shell:
            "kdmri train --spec {params.spec:q} --inputs-dir {params.inputs_dir}"
            " {params.options} --out-dir {params.out_dir}"
            " --device {params.device} --threads {threads} 2> {log}"


# One cache per teacher (the teacher-stage model a method names) and cell.
rule cache_teacher:
    input:
        teacher=f"{model_dir()}/model.pt",
        data=[f"{model_dir(model='inputs')}/{s}.h5" for s in ("train", "val")],
    output:
        cache=[f"{model_dir()}/cache/{s}.h5" for s in ("train", "val")],
    log:
        f"{R}/logs/cache_teacher/{job_key()}.log",
    benchmark:
        f"{R}/benchmarks/cache_teacher/{job_key()}.tsv"
    wildcard_constraints:
        model=teacher_models(),
    priority: job_priority("cache")
    conda:
        "../envs/kdmri.yaml"
    threads: TRAIN_THREADS
    resources:
        **GPU_JOB,
        gpu=GPU,
    params:
        spec=lambda w: spec_json(teacher_cache_spec(config, w.task)),
        trust=lambda w: trust_code(teacher_cache_spec(config, w.task)["teacher_net"]),
        device=config["device"],
        inputs_dir=input_dir("data"),
        out_dir=output_dir("cache"),
    shell:
        "kdmri cache-teacher --teacher {input.teacher}{params.trust} --spec {params.spec:q}"
        " --inputs-dir {params.inputs_dir} --out-dir {params.out_dir}"
        " --device {params.device} --threads {threads} 2> {log}"
