"""Export nodes: the dataset's shards and card (then an optional upload), and the adapter with its model card."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def export_dataset(
    pairs: pd.DataFrame,
    selection: pd.DataFrame,
    histograms: Any,
    folder: Path,
    fluxgen: dict[str, Any],
    metrics: list[Any],
    select: dict[str, Any],
    degrade: dict[str, Any],
    export: dict[str, Any],
) -> dict[str, Any]:
    """Replace ``folder`` with the pairs as ``export.format`` shards of at most ``export.max_shard_mb``, the
    dataset card README.md and the IQA histograms; returns what was written."""
    from fluxir.export.build import build_dataset_export

    summary = build_dataset_export(pairs, selection, histograms, folder, fluxgen, metrics, select, degrade, export)
    log.info(
        "Exported %d pairs as %d %s shard(s) to %s", summary["pairs"], len(summary["shards"]), summary["format"], folder
    )
    return summary


def push_dataset(summary: dict[str, Any], folder: Path, export: dict[str, Any]) -> dict[str, Any]:
    """Upload the export folder to ``export.repo_id`` when ``export.push_to_hub`` is true."""
    from fluxir.export.hub import upload_export

    if not export["push_to_hub"]:
        return {"pushed": False, "reason": "export.push_to_hub is false", "folder": str(folder)}
    result = upload_export(Path(folder), export["repo_id"], "dataset", export["hub_endpoint"], export["private"])
    log.info("Uploaded %d pairs (%d files) to %s", summary["pairs"], len(result["files"]), result["url"])
    return result


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
