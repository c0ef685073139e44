"""Export: pairs + IQA selection + the run's parameters -> shards and a dataset card -> (optional) upload
(``fluxir.export.build``); the latest trained adapter + the latest evaluation -> a shareable folder with a card."""

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.pipeline import Node, Pipeline

from fluxir.export.build import export_dataset, push_dataset

log = logging.getLogger(__name__)


def export_adapter(
    adapter: Any, means: pd.DataFrame, report_md: str, folder: Path, model: str, export: dict[str, Any]
) -> dict[str, Any]:
    """Write the adapter with LICENSE, NOTICE and a model card into ``folder``.

    The card's evaluation table is the FluxIR rows of ``evaluation_means`` only when the latest evaluation report
    names this adapter's fingerprint (it evaluated these weights); otherwise the card says it was not evaluated.
    """
    from fluxir.datasets import require_adapter
    from fluxir.export.build import evaluation_for
    from fluxir.export.cards import TINY_ADAPTER_NOTE

    adapter = require_adapter(adapter, "kedro run --pipeline=export_adapter")
    evaluation = evaluation_for(adapter, means, report_md)
    base_model = export["license_model"] or model
    adapter.save_pretrained(
        folder,
        base_model=base_model,
        license=export["license"],
        evaluation=evaluation,
        usage_path=os.path.relpath(folder),  # the project's folder, where `kedro run` ran
        note=TINY_ADAPTER_NOTE if export["tiny_models"] else "",
    )
    log.info("Adapter for %s exported to %s", base_model, folder)
    return {"folder": str(folder), "base_model": base_model, "evaluated": not evaluation.startswith("Not evaluated")}


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
