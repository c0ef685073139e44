"""Nodes of the evaluate pipeline (paper Sec. 4.1, Table 1) over ``fluxir.evaluation``; heavy modules are imported
inside the nodes, so building the pipeline stays light."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.evaluation.config import EvaluateConfig

log = logging.getLogger(__name__)


def prepare_benchmark(
    benchmark: dict[str, Any],
    folders: dict[str, Path | None],
    prepared_benchmarks: Path,
    config: EvaluateConfig,
    degradation: dict[str, Any],
) -> Any:
    """A ``PreparedBenchmark`` from the ``folders`` of catalog entry ``<key>_benchmark``, skipped when missing."""
    from fluxir.evaluation import testsets

    return testsets.prepare_benchmark(
        testsets.BenchmarkSpec.from_params(benchmark, folders), prepared_benchmarks, degradation
    )


def collect_benchmarks(*prepared: Any) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One manifest of the ready benchmarks and a status per benchmark."""
    from fluxir.evaluation.testsets import collect

    return collect(list(prepared))


def _restore(
    methods: list[str],
    manifest: pd.DataFrame,
    eval_outputs: Path,
    config: EvaluateConfig,
    adapter: Any = None,
    baselines: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(outputs table, run info) of ``methods`` on ``evaluate.num_processes`` processes: several run ``accelerate
    launch -m fluxir.evaluation`` first, then this process restores what is left and lists the outputs."""
    import json

    from fluxir.evaluation.restore import restore_methods, run_info
    from fluxir.evaluation.testsets import outputs_table
    from fluxir.runtime.launch import resolve_num_processes, run_stage, scratch_dir

    if not methods:
        return outputs_table([]), {}
    processes = resolve_num_processes(config.num_processes, "evaluate.num_processes")
    with scratch_dir("evaluate") as scratch:  # rank 0 of a launch writes every process's seconds here
        seconds = scratch / "seconds.json"
        args = ["--methods", ",".join(methods), "--seconds", str(seconds)]
        run_stage(["fluxir.evaluation"], processes, "evaluate", dict, args, {"--manifest": manifest}, adapter)
        elsewhere = json.loads(seconds.read_text()) if seconds.is_file() else {}
    outputs = restore_methods(manifest, methods, config, eval_outputs, adapter, baselines)
    info: dict[str, Any] = {}
    for share in outputs:
        info |= run_info(share, len(manifest), elsewhere.get(share.method, []))
    return pd.concat([share.rows for share in outputs], ignore_index=True), info


def restore_benchmarks(
    manifest: pd.DataFrame, adapter: Any, eval_outputs: Path, config: EvaluateConfig
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """FluxIR's outputs (Flux + the trained adapter) and run info."""
    from fluxir.datasets import require_adapter
    from fluxir.evaluation.testsets import outputs_table

    if "fluxir" not in config.methods:
        return outputs_table([]), {"FluxIR": "not run (not in evaluate.methods)"}
    adapter = require_adapter(adapter, "evaluate.methods: fluxir")
    return _restore(["fluxir"], manifest, eval_outputs, config, adapter=adapter)


def restore_with_public_weights(
    manifest: pd.DataFrame, baselines: dict[str, Any], eval_outputs: Path, config: EvaluateConfig
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The outputs of the public restorers in ``evaluate.methods`` (realesrgan, flux_controlnet) and run info."""
    from fluxir.restoration.methods import PUBLIC_METHODS

    public = [m for m in config.methods if m in PUBLIC_METHODS]
    return _restore(public, manifest, eval_outputs, config, baselines=baselines)


def upsample_bicubic(manifest: pd.DataFrame, eval_outputs: Path, config: EvaluateConfig) -> pd.DataFrame:
    """The bicubic baseline (PIL), when ``evaluate.methods`` has it."""
    from fluxir.evaluation.restore import bicubic_manifest
    from fluxir.evaluation.testsets import outputs_table

    if "bicubic" not in config.methods:
        return outputs_table([])
    return bicubic_manifest(manifest, config.scale, eval_outputs)


def find_baselines(manifest: pd.DataFrame, baseline_outputs: Path, config: EvaluateConfig) -> pd.DataFrame:
    """Outputs of other restorers found in ``<baseline_outputs>/<method>/<dataset>/`` (same image names)."""
    from fluxir.evaluation.restore import baseline_manifest

    return baseline_manifest(manifest, baseline_outputs, config.scale)


def collect_outputs(*outputs: pd.DataFrame) -> pd.DataFrame:
    """The outputs tables of every method (FluxIR, public restorers, bicubic, baselines) as one table."""
    return pd.concat(outputs, ignore_index=True)


def summarize_metrics(per_image: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Means per dataset, method and metric, and the same as MLflow metrics ``{key: {"value", "step"}}``."""
    from fluxir.evaluation.report import metric_means, mlflow_metrics

    means = metric_means(per_image)
    return means, mlflow_metrics(means)


def build_report(
    means: pd.DataFrame,
    paper_table: pd.DataFrame,
    status: dict[str, dict[str, Any]],
    run_info: dict[str, Any],
    public_info: dict[str, Any],
    grid_pngs: dict[str, bytes],
    config: EvaluateConfig,
) -> tuple[str, str]:
    """The Table-1-style report as (Markdown, HTML)."""
    from fluxir.evaluation import report

    table = report.comparison_table(means, paper_table, datasets=list(status), tiny_models=config.tiny_models)
    names, options = report.metric_settings(config.metrics)
    info = {**report.conventions(config, names), **run_info, **public_info}
    grids = {
        v["name"]: (f"{k}_grid.png", grid_pngs[v["name"]])
        for k, v in config.benchmarks.items()
        if v["name"] in grid_pngs
    }
    blocks = report.report_blocks(table, means, status, info, grids, config.tiny_models, options)
    return report.render_markdown(blocks), report.render_html(blocks)


def announce_report(report_html: str) -> None:
    """Log where the report is (the MLflow run's artifacts and the versioned files in data/08_reporting)."""
    import mlflow

    run = mlflow.active_run()
    where = "data/08_reporting/evaluation_report.{md,html}/<run timestamp>/"
    if run is not None:
        uri = mlflow.get_artifact_uri("reporting/evaluation_report.html")
        log.info("Evaluation report: %s (versioned copies in %s; MLflow run %s)", uri, where, run.info.run_id)
    else:
        log.info("Evaluation report: versioned in %s (%d characters of HTML)", where, len(report_html))
