# Results tables and provenance.


# Every file `kdmri tables` writes is an output: ablation.csv exactly where the study
# evaluates kd_imitation or kd_attention (writes_ablation), compression.csv/.md exactly
# where it has compression students (writes_compression), methods.csv/.md/.tex where it
# compares two or more distilled methods (writes_methods), which the tool writes then,
# reading the history.csv of their hint stages (hint_histories) for the validation PSNR at
# the end of each.
# Each swept model's candidates' validation PSNR (their model.pt), the choice by it, and
# sweep.csv / .md; the tables then show the chosen candidate under the model's name.
rule sweep:
    input:
        models=list(SWEEP_FILES.values()),
    output:
        table=report(
            f"{R}/tables/sweep.csv",
            caption="../report/sweep_table.rst",
            category="Sweeps",
        ),
        markdown=f"{R}/tables/sweep.md",
    log:
        f"{R}/logs/sweep.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    params:
        plan=spec_json(SWEEP_PLAN),
        models=lambda w, input: " ".join(
            f"{key}={path}" for key, path in zip(SWEEP_FILES, input.models)
        ),
        out_dir=output_dir("table"),
    shell:
        "kdmri sweep --plan {params.plan:q} --models {params.models}"
        " --out-dir {params.out_dir} 2> {log}"


rule tables:
    input:
        metrics=metrics_files(),
        histories=list(hint_histories().values()),
        sweep=[f"{R}/tables/sweep.csv"] if writes_sweep() else [],
    output:
        **(
            {
                "ablation": report(
                    f"{R}/tables/ablation.csv",
                    caption="../report/ablation.rst",
                    category="Tables",
                )
            }
            if writes_ablation()
            else {}
        ),
        **(
            {
                "compression": report(
                    f"{R}/tables/compression.csv",
                    caption="../report/compression_table.rst",
                    category="Tables",
                ),
                "compression_md": f"{R}/tables/compression.md",
            }
            if writes_compression()
            else {}
        ),
        **(
            {
                "methods": report(
                    f"{R}/tables/methods.csv",
                    caption="../report/methods_table.rst",
                    category="Tables",
                ),
                "methods_md": f"{R}/tables/methods.md",
                "methods_tex": f"{R}/tables/methods.tex",
            }
            if writes_methods()
            else {}
        ),
        summary=report(
            f"{R}/tables/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        markdown=f"{R}/tables/summary.md",
        latex=f"{R}/tables/summary.tex",
        html=report(
            f"{R}/tables/summary.html",
            caption="../report/summary_html.rst",
            category="Tables",
        ),
        kd_gain=report(
            f"{R}/tables/kd_gain.csv",
            caption="../report/kd_gain.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/tables.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    params:
        out_dir=output_dir("summary"),
        methods=methods_options(),
        sweep=lambda w, input: f" --sweep {input.sweep[0]}" if input.sweep else "",
    shell:
        "kdmri tables --metrics {input.metrics} --out-dir {params.out_dir}"
        " {params.methods}{params.sweep} 2> {log}"


rule provenance:
    input:
        models=list(trained_models().values()),
        tables=rules.tables.output.summary,
    output:
        report(
            f"{R}/tables/provenance.json",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        f"{R}/logs/provenance.log",
    localrule: True
    conda:
        "../envs/kdmri.yaml"
    threads: 1
    params:
        cfg=spec_json(recorded_config(config)),
        # name=path of every trained model, the paths being this job's inputs
        models=lambda w, input: " ".join(
            f"{name}={path}" for name, path in zip(trained_models(), input.models)
        ),
    shell:
        "kdmri provenance --config-json {params.cfg:q} --models {params.models}"
        " --out {output} 2> {log}"
