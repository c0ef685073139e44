"""Export: pairs + IQA selection + the run's parameters -> shards and a dataset card -> (optional) upload
(``fluxir.export.build``); the latest trained adapter + the latest evaluation -> a shareable folder with a card."""

from kedro.pipeline import Node, Pipeline

from .nodes import export_adapter, export_dataset, push_dataset


def create_pipeline(**kwargs) -> Pipeline:
    inputs = ["pairs_manifest", "iqa_selection", "iqa_histograms_image", "fluxgen_export", "params:fluxgen"]
    inputs += ["params:iqa.metrics", "params:select", "params:degrade", "params:export"]
    return Pipeline(
        [
            Node(export_dataset, inputs, "export_summary", name="export_dataset"),
            Node(
                push_dataset, ["export_summary", "fluxgen_export", "params:export"], "export_push", name="push_dataset"
            ),
        ]
    )


def create_adapter_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipeline=export_adapter`` (pipeline_registry names it)."""
    inputs = ["fluxir_adapter", "evaluation_means", "evaluation_report_md", "adapter_export", "params:train.model"]
    return Pipeline([Node(export_adapter, [*inputs, "params:export"], "adapter_export_summary", name="export_adapter")])
