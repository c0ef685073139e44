"""Nodes of the evaluate pipeline (paper Sec. 4.1, Table 1).

Benchmarks are prepared from downloaded files (``fluxir.evaluation.testsets``), restored by every method of
``evaluate.methods`` (FluxIR with the trained adapter, bicubic, and the public restorers Real-ESRGAN and a Flux
ControlNet upscaler, ``fluxir.restoration``), joined by any baseline outputs a user drops into
the catalog's ``baseline_outputs`` folder, scored with pyiqa (``fluxir.iqa``) and reported
(``fluxir.evaluation.report``).
Heavy modules are imported inside the nodes, so building the pipeline stays light.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.evaluation.config import EvaluateConfig

log = logging.getLogger(__name__)


def evaluate_config(evaluate: dict[str, Any]) -> EvaluateConfig:
    """``params:evaluate`` as the ``EvaluateConfig`` every other node takes (checked once, here and before the run)."""
    from fluxir.evaluation.config import EvaluateConfig

    return EvaluateConfig.from_params(evaluate)


def prepare_benchmark(
    benchmark: dict[str, Any],
    folders: dict[str, Path | None],
    prepared_benchmarks: Path,
    config: EvaluateConfig,
    degradation: dict[str, Any],
) -> Any:
    """Prepare one benchmark from its downloaded ``folders`` (its catalog entry ``<key>_benchmark``) into
    ``prepared_benchmarks``, or mark it skipped (logged) when they are missing. Returns a ``PreparedBenchmark``.
    """
    from fluxir.evaluation.testsets import BenchmarkSpec
    from fluxir.evaluation.testsets import prepare_benchmark as prepare

    return prepare(BenchmarkSpec.from_params(benchmark, folders), prepared_benchmarks, degradation)


def collect_benchmarks(*prepared: Any) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One manifest of the ready benchmarks (dataset, image, lq_path, hq_path, ...) and a status per benchmark."""
    from fluxir.evaluation.testsets import collect

    return collect(list(prepared))


def _restore_stage(
    methods: list[str], manifest: pd.DataFrame, processes: int, restore: Any, adapter: Any = None
) -> tuple[list[Any] | None, dict[str, list[float]]]:
    """Restore the LQ images of ``manifest`` with ``methods`` here (``restore()``, returning a ``MethodOutputs`` per
    method) or with ``python -m fluxir.evaluation --methods <them>`` on ``processes`` processes; the outputs are
    then on disk. Returns (the ``MethodOutputs`` made here, or None after a launch; {method: seconds per image the
    launched processes restored})."""
    import json

    from fluxir.runtime.launch import run_stage, scratch_dir

    with scratch_dir("evaluate") as scratch:  # several processes: rank 0 writes every process's seconds here
        args = ["--methods", ",".join(methods), "--seconds", str(scratch / "seconds.json")]
        shares = run_stage(
            ["fluxir.evaluation"], processes, "evaluate", restore, args, {"--manifest": manifest}, adapter
        )
        if shares is None:
            return None, json.loads((scratch / "seconds.json").read_text())
    return shares, {}


def restore_benchmarks(
    manifest: pd.DataFrame,
    adapter: Any,
    eval_outputs: Path,
    config: EvaluateConfig,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore every LQ image with Flux + the FluxIR adapter on ``num_processes`` processes; returns (outputs
    table, run info for the report).

    Outputs already written for the same model, adapter weights, settings and inputs are reused. Nothing is
    done (and no adapter needed) when ``evaluate.methods`` leaves out fluxir. More than one process runs
    ``accelerate launch -m fluxir.evaluation --methods fluxir`` (each restores every N-th image); either way
    the table then lists the outputs on disk.
    """
    from fluxir.datasets.adapter_dataset import require_adapter
    from fluxir.evaluation.restore import restore_manifest, restore_missing
    from fluxir.evaluation.testsets import OUTPUT_COLUMNS
    from fluxir.runtime.launch import resolve_num_processes

    if "fluxir" not in config.methods:
        return pd.DataFrame(columns=OUTPUT_COLUMNS), {"FluxIR": "not run (not in evaluate.methods)"}
    adapter = require_adapter(adapter, "evaluate.methods: fluxir")
    processes = resolve_num_processes(config.num_processes, "evaluate.num_processes")
    done, seconds = _restore_stage(
        ["fluxir"],
        manifest,
        processes,
        lambda: [restore_missing(manifest, adapter, config.restore, eval_outputs, config.scale, config.color_fix)],
        adapter,
    )
    return restore_manifest(
        manifest,
        adapter,
        config.restore,
        eval_outputs,
        config.scale,
        config.color_fix,
        restored_elsewhere=seconds.get("fluxir", []),
        done=done[0] if done else None,
    )


def restore_with_public_weights(
    manifest: pd.DataFrame, baselines: dict[str, Any], eval_outputs: Path, config: EvaluateConfig
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore every LQ image with the public restorers in ``evaluate.methods`` (realesrgan, flux_controlnet) on
    ``num_processes`` processes; returns (outputs table, run info). Outputs for the same method, weights,
    settings and inputs are reused. More than one process runs ``accelerate launch -m fluxir.evaluation
    --methods <them>`` (each restores every N-th image); either way the table then lists the outputs on disk."""
    from fluxir.evaluation.restore import public_manifest, restore_public_missing
    from fluxir.restoration.methods import PUBLIC_METHODS
    from fluxir.runtime.launch import resolve_num_processes

    public = [m for m in config.methods if m in PUBLIC_METHODS]
    processes = resolve_num_processes(config.num_processes, "evaluate.num_processes")
    done, seconds = None, {}
    if public:
        done, seconds = _restore_stage(
            public,
            manifest,
            processes,
            lambda: restore_public_missing(manifest, public, baselines, eval_outputs, config.scale, config.color_fix),
        )
    return public_manifest(
        manifest,
        config.methods,
        baselines,
        eval_outputs,
        config.scale,
        config.color_fix,
        restored_elsewhere=seconds,
        done=done,
    )


def upsample_bicubic(manifest: pd.DataFrame, eval_outputs: Path, config: EvaluateConfig) -> pd.DataFrame:
    """The bicubic baseline: every LQ image upsampled x``scale`` (PIL bicubic), when ``evaluate.methods`` has it."""
    from fluxir.evaluation.restore import bicubic_manifest
    from fluxir.evaluation.testsets import OUTPUT_COLUMNS

    if "bicubic" not in config.methods:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)
    return bicubic_manifest(manifest, config.scale, eval_outputs)


def find_baselines(manifest: pd.DataFrame, baseline_outputs: Path, config: EvaluateConfig) -> pd.DataFrame:
    """Outputs of other restorers found in ``<baseline_outputs>/<method>/<dataset>/`` (same image names)."""
    from fluxir.evaluation.baselines import baseline_manifest

    return baseline_manifest(manifest, baseline_outputs, config.scale)


def collect_outputs(*outputs: pd.DataFrame) -> pd.DataFrame:
    """The outputs tables of every method (FluxIR, public restorers, bicubic, baselines) as one table."""
    return pd.concat(outputs, ignore_index=True)


def score_outputs(
    manifest: pd.DataFrame,
    outputs: pd.DataFrame,
    config: EvaluateConfig,
    weights_dir: str | None,
    trust_weight_files: bool,
    device: str,
    batch_size: int,
) -> pd.DataFrame:
    """Per-image scores of every method: full-reference where HQ exists, no-reference everywhere.

    Long table: dataset, method, image, label, metric, value, convention, crop_border, higher_is_better, stand_in.
    """
    from fluxir.evaluation.scoring import score_all
    from fluxir.models.loading import resolve_device

    return score_all(
        manifest,
        outputs,
        config.metrics,
        config.convention,
        config.crop_border,
        weights_dir=weights_dir,
        trust_weight_files=trust_weight_files,
        device=resolve_device(device),
        batch_size=batch_size,
    )


def summarize_metrics(per_image: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Means per dataset, method and metric, and the same as MLflow metrics ``{key: {"value", "step"}}``."""
    from fluxir.evaluation.report import metric_means, mlflow_metrics

    means = metric_means(per_image)
    return means, mlflow_metrics(means)


def make_grids(
    manifest: pd.DataFrame, outputs: pd.DataFrame, status: dict[str, dict[str, Any]], config: EvaluateConfig
) -> dict[str, Any]:
    """A LQ / bicubic / public restorers / baselines / FluxIR / HQ figure per benchmark key, plus ``"png"``:
    {dataset: PNG bytes}."""
    from fluxir.evaluation.grids import grids

    names = {key: value["name"] for key, value in config.benchmarks.items()}
    note = "tiny random-weight models: this shows the machinery, not quality" if config.tiny_models else ""
    figures, pngs = grids(manifest, outputs, names, status, config.grid_images, note)
    return {**figures, "png": pngs}


def build_report(
    means: pd.DataFrame,
    paper_table: pd.DataFrame,
    status: dict[str, dict[str, Any]],
    run_info: dict[str, Any],
    public_info: dict[str, Any],
    grid_pngs: dict[str, bytes],
    config: EvaluateConfig,
) -> tuple[str, str]:
    """The Table-1-style report (markdown, HTML): every convention behind its numbers, this run's numbers
    beside the paper's, grids."""
    from fluxir.evaluation.report import (
        comparison_table,
        conventions,
        metric_settings,
        render_html,
        render_markdown,
        report_blocks,
    )

    tiny_models = config.tiny_models
    table = comparison_table(means, paper_table, datasets=list(status), tiny_models=tiny_models)
    names, options = metric_settings(config.metrics)
    info = {**conventions(config.convention, config.crop_border, config.color_fix, names), **run_info, **public_info}
    grids = {
        v["name"]: (f"{k}_grid.png", grid_pngs[v["name"]])
        for k, v in config.benchmarks.items()
        if v["name"] in grid_pngs
    }
    blocks = report_blocks(table, means, status, info, grids, tiny_models, options)
    return render_markdown(blocks), render_html(blocks)


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
