"""Export wiring: pairs + IQA selection + the run's parameters -> shards and a dataset card -> (optional) upload."""

from kedro.pipeline import Node, Pipeline

from .nodes import export_dataset, push_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_dataset,
                [
                    "pairs_manifest",
                    "iqa_selection",
                    "iqa_histograms_image",
                    "fluxgen_export",
                    "params:fluxgen",
                    "params:iqa.metrics",
                    "params:select",
                    "params:degrade",
                    "params:export",
                ],
                "export_summary",
                name="export_dataset",
            ),
            Node(
                push_dataset, ["export_summary", "fluxgen_export", "params:export"], "export_push", name="push_dataset"
            ),
        ]
    )
