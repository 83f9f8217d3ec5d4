# Preparation (read the source once, write the split stores), masks and undersampling.


# Inputs are the dataset's source files (none for the demo): a changed file re-runs it.
rule prepare:
    input:
        lambda w: source_files(config["datasets"][w.dataset]),
    output:
        stores=expand(f"{R}/data/{{{{dataset}}}}/{{split}}.h5", split=SPLITS),
        info=f"{R}/data/{{dataset}}/info.json",
    log:
        f"{R}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/prepare/{{dataset}}.tsv"
    priority: job_priority("prepare")
    conda:
        "../envs/kdmri.yaml"
    threads: THREADS
    resources:
        **CPU_JOB,
    params:
        spec=lambda w: spec_json(dataset_spec(config["datasets"][w.dataset])),
        out_dir=output_dir("info"),
    shell:
        "kdmri prepare --quiet --name {wildcards.dataset} --spec {params.spec:q}"
        " --out-dir {params.out_dir} 2> {log}"


# A cell's mask and undersampled stores are made from its dataset's stores (an
# evaluation-only cell's: those of the dataset it is evaluated on, at that size).
rule mask:
    input:
        like=lambda w: f"{R}/data/{data_name(w.dataset)}/train.h5",
    output:
        mask=f"{model_dir(model='inputs')}/mask.npy",
        sidecar=f"{model_dir(model='inputs')}/mask.json",
    log:
        f"{R}/logs/mask/{job_key(model=False)}.log",
    priority: job_priority("inputs")
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    params:
        spec=mask_spec,
    shell:
        "kdmri mask --spec {params.spec:q} --like {input.like} --seed {wildcards.seed}"
        " --out {output.mask} 2> {log}"


rule undersample:
    input:
        data=split_stores,
        mask=rules.mask.output.mask,
    output:
        stores=expand(
            f"{model_dir(model='inputs')}/{{split}}.h5",
            split=SPLITS,
            allow_missing=True,
        ),
    log:
        f"{R}/logs/undersample/{job_key(model=False)}.log",
    benchmark:
        f"{R}/benchmarks/undersample/{job_key(model=False)}.tsv"
    priority: job_priority("inputs")
    conda:
        "../envs/kdmri.yaml"
    threads: THREADS
    resources:
        **CPU_JOB,
    params:
        data_dir=input_dir("data"),
        out_dir=output_dir("stores"),
    shell:
        "kdmri undersample --data-dir {params.data_dir} --mask {input.mask}"
        " --out-dir {params.out_dir} 2> {log}"
