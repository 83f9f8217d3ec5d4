# Preparation (read the source once, write the split stores), masks and undersampling.


from kdmri.data.readers import dataset_spec, source_files


# Inputs are the dataset's source files (none for the demo): a changed file re-runs it.
rule prepare:
    input:
        lambda w: source_files(config["datasets"][w.dataset]),
    output:
        expand(f"{R}/data/{{{{dataset}}}}/{{split}}.h5", split=SPLITS),
        info=f"{R}/data/{{dataset}}/info.json",
    params:
        spec=lambda w: spec_json(dataset_spec(config["datasets"][w.dataset])),
    log:
        f"{R}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/prepare/{{dataset}}.tsv"
    threads: THREADS
    resources:
        **CPU_JOB,
    shell:
        "kdmri prepare --quiet --name {wildcards.dataset} --spec {params.spec:q}"
        " --out-dir {R}/data/{wildcards.dataset} 2> {log}"


def mask_spec(w):
    task = config["tasks"][w.task]
    if w.task == "sr":
        return spec_json({"kind": "lowres", "acceleration": float(w.acc)})
    return spec_json(dict(task["mask"], acceleration=float(w.acc)))


rule mask:
    input:
        like=f"{R}/data/{{dataset}}/train.h5",
    output:
        mask=f"{R}/{{task}}/{{dataset}}/acc{{acc}}/inputs/seed{{seed}}/mask.npy",
        sidecar=f"{R}/{{task}}/{{dataset}}/acc{{acc}}/inputs/seed{{seed}}/mask.json",
    params:
        spec=mask_spec,
    log:
        f"{R}/logs/mask/{{task}}_{{dataset}}_acc{{acc}}_seed{{seed}}.log",
    threads: 1
    shell:
        "kdmri mask --spec {params.spec:q} --like {input.like} --seed {wildcards.seed}"
        " --out {output.mask} 2> {log}"


rule undersample:
    input:
        data=expand(f"{R}/data/{{{{dataset}}}}/{{split}}.h5", split=SPLITS),
        mask=rules.mask.output.mask,
    output:
        expand(f"{R}/{{{{task}}}}/{{{{dataset}}}}/acc{{{{acc}}}}/inputs/seed{{{{seed}}}}/{{split}}.h5", split=SPLITS),
    log:
        f"{R}/logs/undersample/{{task}}_{{dataset}}_acc{{acc}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/undersample/{{task}}_{{dataset}}_acc{{acc}}_seed{{seed}}.tsv"
    threads: THREADS
    resources:
        **CPU_JOB,
    shell:
        "kdmri undersample --data-dir {R}/data/{wildcards.dataset} --mask {input.mask}"
        " --out-dir {R}/{wildcards.task}/{wildcards.dataset}/acc{wildcards.acc}/inputs/seed{wildcards.seed}"
        " 2> {log}"
