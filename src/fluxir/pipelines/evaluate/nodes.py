"""Nodes of the evaluate pipeline (paper Sec. 4.1, Table 1).

Benchmarks are prepared from downloaded files (``fluxir.evaluation.testsets``), restored with the trained
adapter (``fluxir.restoration``), upsampled with bicubic, joined by any baseline outputs a user drops
into ``data/01_raw/baselines``, scored with pyiqa (``fluxir.fluxgen.iqa``) and reported (``fluxir.evaluation.report``).
Heavy modules are imported inside the nodes, so building the pipeline stays light.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def _specs(evaluate: dict[str, Any]) -> dict[str, Any]:
    from fluxir.evaluation.testsets import BenchmarkSpec

    benchmarks = evaluate.get("benchmarks") or {}
    if not benchmarks:
        raise ValueError("evaluate.benchmarks is empty: nothing to evaluate (see conf/base/parameters_evaluate.yml)")
    return {key: BenchmarkSpec.from_params(value) for key, value in benchmarks.items()}


def make_demo_benchmarks(evaluate: dict[str, Any], degrade: dict[str, Any]) -> dict[str, list[str]]:
    """With ``evaluate.demo_benchmarks: true``, fill benchmark folders that hold no image with small demo images.

    Returns ``{benchmark: [folders written]}`` (empty when the switch is off or every folder is filled).
    """
    if not evaluate.get("demo_benchmarks", False):
        return {}
    from fluxir.evaluation.testsets import write_demo_benchmarks

    return write_demo_benchmarks(_specs(evaluate), degrade.get("config", {}), seed=degrade.get("seed", 0))


def prepare_benchmark(demo_written: dict[str, list[str]], benchmark: dict[str, Any], evaluate: dict[str, Any],
                      degrade: dict[str, Any]) -> Any:
    """Prepare one benchmark from its downloaded files, or mark it skipped (logged) when they are missing.

    ``demo_written`` only orders this node after the demo writer. Returns a ``PreparedBenchmark``.
    """
    from fluxir.evaluation.testsets import BenchmarkSpec
    from fluxir.evaluation.testsets import prepare_benchmark as prepare

    spec = BenchmarkSpec.from_params(benchmark)
    if spec.scale is not None and spec.scale != evaluate["scale"]:
        raise ValueError(f"benchmark {spec.name}: hq_size/lq_size = {spec.scale} but evaluate.scale is {evaluate['scale']}")
    return prepare(spec, evaluate["prepared_dir"], degrade.get("config", {}))


def collect_benchmarks(*prepared: Any) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One manifest of the ready benchmarks (dataset, image, lq_path, hq_path, ...) and a status per benchmark."""
    from fluxir.evaluation.testsets import collect

    return collect(list(prepared))


def restore_benchmarks(manifest: pd.DataFrame, adapter: Any, evaluate: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore every LQ image with Flux + the FluxIR adapter; returns (outputs table, run info for the report).

    Outputs already written for the same model, adapter weights, settings and inputs are reused.
    """
    from fluxir.evaluation.scoring import restore_manifest

    return restore_manifest(manifest, adapter, evaluate["restore"], evaluate["outputs_dir"], evaluate["scale"])


def upsample_bicubic(manifest: pd.DataFrame, evaluate: dict[str, Any]) -> pd.DataFrame:
    """The bicubic baseline: every LQ image upsampled x``evaluate.scale`` (PIL bicubic)."""
    from fluxir.evaluation.scoring import bicubic_manifest

    return bicubic_manifest(manifest, evaluate["scale"], evaluate["outputs_dir"])


def find_baselines(manifest: pd.DataFrame, evaluate: dict[str, Any]) -> pd.DataFrame:
    """Outputs of other restorers found in ``evaluate.baselines_dir/<method>/<dataset>/`` (same image names)."""
    from fluxir.evaluation.scoring import baseline_manifest

    return baseline_manifest(manifest, evaluate["baselines_dir"], evaluate["scale"])


def score_outputs(manifest: pd.DataFrame, restored: pd.DataFrame, bicubic: pd.DataFrame, baselines: pd.DataFrame,
                  evaluate: dict[str, Any], iqa: dict[str, Any]) -> pd.DataFrame:
    """Per-image scores of every method: full-reference where HQ exists, no-reference everywhere.

    Long table: dataset, method, image, label, metric, value, convention, crop_border, higher_is_better, stand_in.
    """
    from fluxir.evaluation.scoring import score_all
    from fluxir.models.flux import resolve_device

    outputs = pd.concat([restored, bicubic, baselines], ignore_index=True)
    return score_all(manifest, outputs, evaluate["metrics"], evaluate["convention"], evaluate["crop_border"],
                     weights_dir=iqa.get("weights_dir"), device=resolve_device(iqa.get("device", "auto")),
                     batch_size=iqa.get("batch_size", 8))


def summarize_metrics(per_image: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Means per dataset, method and metric, and the same as MLflow metrics ``{key: {"value", "step"}}``."""
    from fluxir.evaluation.report import metric_means, mlflow_metrics

    means = metric_means(per_image)
    return means, mlflow_metrics(means)


def make_grids(manifest: pd.DataFrame, restored: pd.DataFrame, bicubic: pd.DataFrame, baselines: pd.DataFrame,
               status: dict[str, dict[str, Any]], evaluate: dict[str, Any]) -> dict[str, Any]:
    """A LQ / bicubic / FluxIR / baselines / HQ figure per benchmark key, plus ``"png"``: {dataset: PNG bytes}."""
    from fluxir.evaluation.scoring import grids

    outputs = pd.concat([restored, bicubic, baselines], ignore_index=True)
    names = {key: value["name"] for key, value in evaluate["benchmarks"].items()}
    note = "tiny random-weight models: this shows the machinery, not quality" if evaluate.get("tiny_models") else ""
    figures, pngs = grids(manifest, outputs, names, status, evaluate.get("grid_images", 3), note)
    return {**figures, "png": pngs}


def build_report(means: pd.DataFrame, paper_table: pd.DataFrame, status: dict[str, dict[str, Any]],
                 run_info: dict[str, Any], grid_pngs: dict[str, bytes], evaluate: dict[str, Any]) -> tuple[str, str]:
    """The Table-1-style report (markdown, HTML): this run's numbers beside the paper's, grids, setup."""
    from importlib.metadata import version

    from fluxir.fluxgen.iqa import MetricSpec
    from fluxir.evaluation.report import comparison_table, render_html, render_markdown

    table = comparison_table(means, paper_table, datasets=list(status))
    specs = {label: MetricSpec.parse(spec) for group in evaluate["metrics"].values() for label, spec in (group or {}).items()}
    options = {label: ", ".join(f"{k}={v}" for k, v in s.options.items()) for label, s in specs.items() if s.options}
    info = {
        **run_info,
        "metrics": f"pyiqa {version('pyiqa')}: " + "; ".join(
            f"{label}={s.name}" + ("" if s.pretrained else " (random weights)") for label, s in specs.items()),
        "channel convention": f"{evaluate['convention']}, crop border {evaluate['crop_border']} px "
                              "(PSNR/SSIM; LPIPS on RGB; no-reference metrics on the whole RGB image)",
    }
    grid_files = {v["name"]: f"{k}_grid.png" for k, v in evaluate["benchmarks"].items() if v["name"] in grid_pngs}
    tiny = bool(evaluate.get("tiny_models", False))
    return (render_markdown(table, means, status, info, grid_files, tiny, options),
            render_html(table, means, status, info, grid_pngs, tiny, options))


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
