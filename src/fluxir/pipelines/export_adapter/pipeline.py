"""Adapter export wiring: the latest trained adapter + the latest evaluation -> a shareable folder with a card."""

from kedro.pipeline import Node, Pipeline

from .nodes import export_adapter


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_adapter,
                [
                    "fluxir_adapter",
                    "evaluation_means",
                    "evaluation_report_md",
                    "adapter_export",
                    "params:train.model",
                    "params:export",
                ],
                "adapter_export_summary",
                name="export_adapter",
            )
        ]
    )
