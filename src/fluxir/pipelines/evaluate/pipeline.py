"""Evaluate wiring: prepare each benchmark -> FluxIR / public restorers / bicubic / baselines -> score -> report.
The nodes take ``params:evaluate`` as one ``EvaluateConfig``; the union of every method's outputs is built once."""

from kedro.pipeline import Node, Pipeline

from fluxir.evaluation.config import EvaluateConfig
from fluxir.evaluation.report import grids
from fluxir.evaluation.scores import score_all

from .nodes import (
    announce_report,
    build_report,
    collect_benchmarks,
    collect_outputs,
    find_baselines,
    prepare_benchmark,
    restore_benchmarks,
    restore_with_public_weights,
    summarize_metrics,
    upsample_bicubic,
)

# The paper's four test sets (Sec. 4.1); each has settings params:evaluate.benchmarks.<key>, a folders entry
# <key>_benchmark and a grid dataset <key>_grid.
BENCHMARKS = ("div2k_val", "realsr", "drealsr", "reallq250")
OUTPUTS = ["eval_restored_images", "eval_public_images", "eval_bicubic_images", "eval_baseline_images"]


def create_pipeline(**kwargs) -> Pipeline:
    prepare = [
        Node(
            prepare_benchmark,
            [
                f"params:evaluate.benchmarks.{key}",
                f"{key}_benchmark",
                "prepared_benchmarks",
                "evaluate_config",
                "params:degrade.config",
            ],
            f"prepared_{key}",
            name=f"prepare_{key}",
        )
        for key in BENCHMARKS
    ]
    return Pipeline(
        [
            Node(EvaluateConfig.from_params, "params:evaluate", "evaluate_config", name="evaluate_config"),
            *prepare,
            Node(
                collect_benchmarks,
                [f"prepared_{key}" for key in BENCHMARKS],
                ["benchmark_manifest", "benchmark_status"],
                name="collect_benchmarks",
            ),
            Node(
                restore_benchmarks,
                ["benchmark_manifest", "fluxir_adapter", "eval_outputs", "evaluate_config"],
                ["eval_restored_images", "eval_restore_info"],
                name="restore_benchmarks",
            ),
            Node(
                restore_with_public_weights,
                ["benchmark_manifest", "params:baselines", "eval_outputs", "evaluate_config"],
                ["eval_public_images", "eval_public_info"],
                name="restore_with_public_weights",
            ),
            Node(
                upsample_bicubic,
                ["benchmark_manifest", "eval_outputs", "evaluate_config"],
                "eval_bicubic_images",
                name="upsample_bicubic",
            ),
            Node(
                find_baselines,
                ["benchmark_manifest", "baseline_outputs", "evaluate_config"],
                "eval_baseline_images",
                name="find_baselines",
            ),
            Node(collect_outputs, OUTPUTS, "eval_outputs_table", name="collect_outputs"),
            Node(
                score_all,
                [
                    "benchmark_manifest",
                    "eval_outputs_table",
                    "evaluate_config",
                    "eval_outputs",
                    "params:iqa.weights_dir",
                    "params:iqa.trust_weight_files",
                    "params:iqa.device",
                    "params:iqa.batch_size",
                ],
                "evaluation_per_image",
                name="score_outputs",
            ),
            Node(
                summarize_metrics,
                "evaluation_per_image",
                ["evaluation_means", "evaluation_metrics"],
                name="summarize_metrics",
            ),
            Node(
                grids,
                ["benchmark_manifest", "eval_outputs_table", "benchmark_status", "evaluate_config"],
                {**{key: f"{key}_grid" for key in BENCHMARKS}, "png": "eval_grid_pngs"},
                name="make_grids",
            ),
            Node(
                build_report,
                [
                    "evaluation_means",
                    "paper_table1",
                    "benchmark_status",
                    "eval_restore_info",
                    "eval_public_info",
                    "eval_grid_pngs",
                    "evaluate_config",
                ],
                ["evaluation_report_md", "evaluation_report_html"],
                name="build_report",
            ),
            Node(announce_report, "evaluation_report_html", None, name="announce_report"),
        ]
    )
