"""Evaluate wiring: prepare each benchmark -> FluxIR / public restorers / bicubic / baselines -> score -> report.

Every node reads only the parameters it names, so the graph shows what each step depends on.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    announce_report,
    build_report,
    collect_benchmarks,
    find_baselines,
    make_grids,
    prepare_benchmark,
    restore_benchmarks,
    restore_with_public_weights,
    score_outputs,
    summarize_metrics,
    upsample_bicubic,
)

# The paper's four test sets (Sec. 4.1); each has settings params:evaluate.benchmarks.<key>, a folders entry
# <key>_benchmark and a grid dataset <key>_grid.
BENCHMARKS = ("div2k_val", "realsr", "drealsr", "reallq250")
OUTPUTS = [
    "benchmark_manifest",
    "eval_restored_images",
    "eval_public_images",
    "eval_bicubic_images",
    "eval_baseline_images",
]


def create_pipeline(**kwargs) -> Pipeline:
    prepare = [
        Node(
            prepare_benchmark,
            [
                f"params:evaluate.benchmarks.{key}",
                f"{key}_benchmark",
                "prepared_benchmarks",
                "params:evaluate.scale",
                "params:degrade.config",
            ],
            f"prepared_{key}",
            name=f"prepare_{key}",
        )
        for key in BENCHMARKS
    ]
    return Pipeline(
        [
            *prepare,
            Node(
                collect_benchmarks,
                [f"prepared_{key}" for key in BENCHMARKS],
                ["benchmark_manifest", "benchmark_status"],
                name="collect_benchmarks",
            ),
            Node(
                restore_benchmarks,
                [
                    "benchmark_manifest",
                    "fluxir_adapter",
                    "params:evaluate.restore",
                    "eval_outputs",
                    "params:evaluate.scale",
                    "params:evaluate.color_fix",
                    "params:evaluate.methods",
                    "params:evaluate.num_processes",
                ],
                ["eval_restored_images", "eval_restore_info"],
                name="restore_benchmarks",
            ),
            Node(
                restore_with_public_weights,
                [
                    "benchmark_manifest",
                    "params:evaluate.methods",
                    "params:baselines",
                    "eval_outputs",
                    "params:evaluate.scale",
                    "params:evaluate.color_fix",
                    "params:evaluate.num_processes",
                ],
                ["eval_public_images", "eval_public_info"],
                name="restore_with_public_weights",
            ),
            Node(
                upsample_bicubic,
                [
                    "benchmark_manifest",
                    "params:evaluate.scale",
                    "eval_outputs",
                    "params:evaluate.methods",
                ],
                "eval_bicubic_images",
                name="upsample_bicubic",
            ),
            Node(
                find_baselines,
                ["benchmark_manifest", "baseline_outputs", "params:evaluate.scale"],
                "eval_baseline_images",
                name="find_baselines",
            ),
            Node(
                score_outputs,
                [
                    *OUTPUTS,
                    "params:evaluate.metrics",
                    "params:evaluate.convention",
                    "params:evaluate.crop_border",
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
                make_grids,
                [
                    *OUTPUTS,
                    "benchmark_status",
                    "params:evaluate.benchmarks",
                    "params:evaluate.grid_images",
                    "params:evaluate.tiny_models",
                ],
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
                    "params:evaluate.metrics",
                    "params:evaluate.convention",
                    "params:evaluate.crop_border",
                    "params:evaluate.color_fix",
                    "params:evaluate.benchmarks",
                    "params:evaluate.tiny_models",
                ],
                ["evaluation_report_md", "evaluation_report_html"],
                name="build_report",
            ),
            Node(announce_report, "evaluation_report_html", None, name="announce_report"),
        ]
    )
