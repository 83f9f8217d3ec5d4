# Results tables and provenance.


rule tables:
    input:
        metrics_files(),
    output:
        summary=report(f"{R}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown=f"{R}/tables/summary.md",
        latex=f"{R}/tables/summary.tex",
        html=report(f"{R}/tables/summary.html", caption="../report/summary_html.rst", category="Tables"),
        kd_gain=report(f"{R}/tables/kd_gain.csv", caption="../report/kd_gain.rst", category="Tables"),
    log:
        f"{R}/logs/tables.log",
    threads: 1
    shell:
        "kdmri tables --metrics {input} --out-dir $(dirname {output.summary}) 2> {log}"


rule provenance:
    input:
        models=list(trained_models().values()),
        tables=rules.tables.output.summary,
    output:
        report(f"{R}/tables/provenance.json", caption="../report/provenance.rst", category="Provenance"),
    params:
        cfg=spec_json(config),
        models=" ".join(f"{k}={v}" for k, v in trained_models().items()),
    log:
        f"{R}/logs/provenance.log",
    threads: 1
    shell:
        "kdmri provenance --config-json {params.cfg:q} --models {params.models}"
        " --out {output} 2> {log}"
