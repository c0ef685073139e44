"""Export nodes: write the shards and the dataset card into the export folder; upload it when asked."""

from __future__ import annotations

import logging
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
