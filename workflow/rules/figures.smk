# Figures: reconstruction panel, training curves and mask of every study cell; the
# compression curve where the study has one.


rule figure_panel:
    input:
        unpack(panel_inputs),
        test=f"{model_dir(model='inputs')}/test.h5",
    output:
        report(
            f"{figure_dir()}/panel.png",
            caption="../report/panel.rst",
            category="Reconstructions",
            subcategory="{task} {dataset}",
            labels={
                "task": "{task}",
                "dataset": "{dataset}",
                "acceleration": "{acc}",
                "seed": "{seed}",
            },
        ),
    log:
        f"{R}/logs/figures/panel_{job_key(model=False)}.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    params:
        preds=lambda w, input: " ".join(f"{m}={input[m]}" for m in config["models"]),
    shell:
        "kdmri figures --kind panel --inputs {input.test} --pred {params.preds}"
        " --title '{wildcards.task} {wildcards.dataset} {wildcards.acc}x (seed {wildcards.seed})'"
        " --out {output} 2> {log}"


rule figure_curves:
    input:
        unpack(curve_inputs),
    output:
        report(
            f"{figure_dir()}/curves.png",
            caption="../report/curves.rst",
            category="Training curves",
            subcategory="{task} {dataset}",
            labels={
                "task": "{task}",
                "dataset": "{dataset}",
                "acceleration": "{acc}",
                "seed": "{seed}",
            },
        ),
    log:
        f"{R}/logs/figures/curves_{job_key(model=False)}.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    params:
        histories=lambda w, input: " ".join(f"{m}={input[m]}" for m in curve_inputs(w)),
    shell:
        "kdmri figures --kind curves --history {params.histories}"
        " --title '{wildcards.task} {wildcards.dataset} {wildcards.acc}x (seed {wildcards.seed})'"
        " --out {output} 2> {log}"


rule figure_mask:
    input:
        rules.mask.output.mask,
    output:
        report(
            f"{figure_dir()}/mask.png",
            caption="../report/mask.rst",
            category="Masks",
            labels={
                "task": "{task}",
                "dataset": "{dataset}",
                "acceleration": "{acc}",
                "seed": "{seed}",
            },
        ),
    log:
        f"{R}/logs/figures/mask_{job_key(model=False)}.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    shell:
        "kdmri figures --kind mask --mask {input}"
        " --title '{wildcards.task} {wildcards.dataset} {wildcards.acc}x mask' --out {output} 2> {log}"


rule figure_compression:
    input:
        f"{R}/tables/compression.csv",
    output:
        report(
            f"{R}/figures/compression.png",
            caption="../report/compression.rst",
            category="Compression",
        ),
    log:
        f"{R}/logs/figures/compression.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    shell:
        "kdmri figures --kind compression --table {input} --out {output} 2> {log}"


rule figure_methods:
    input:
        f"{R}/tables/methods.csv",
    output:
        report(
            f"{R}/figures/methods.png",
            caption="../report/methods.rst",
            category="Methods",
        ),
    log:
        f"{R}/logs/figures/methods.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    shell:
        "kdmri figures --kind methods --table {input} --out {output} 2> {log}"


rule figure_sweep:
    input:
        f"{R}/tables/sweep.csv",
    output:
        report(
            f"{R}/figures/sweep.png",
            caption="../report/sweep.rst",
            category="Sweeps",
        ),
    log:
        f"{R}/logs/figures/sweep.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    shell:
        "kdmri figures --kind sweep --table {input} --out {output} 2> {log}"
