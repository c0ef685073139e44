"""Assemble an export from a run's tables and parameters (the library side of the export pipelines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.export.cards import dataset_card, markdown_table
from fluxir.export.dataset import export_table, write_shards
from fluxir.export.licenses import generator_license
from fluxir.export.settings import export_problems
from fluxir.io.atomic import atomic_directory

HISTOGRAMS_NAME = "iqa_histograms.png"
CARD_NAME = "README.md"


def metric_names(metrics: Sequence[Any]) -> list[str]:
    from fluxir.iqa import MetricSpec

    return [MetricSpec.parse(m).name for m in metrics]


def model_revision(model: str) -> str:
    """The hub commit of ``model`` in the local Hugging Face cache, or what it is when there is none."""
    if Path(model).exists():
        return f"local folder `{model}` (no hub revision)"
    try:
        from huggingface_hub import snapshot_download

        return f"`{Path(snapshot_download(model, local_files_only=True)).name}` (hub commit in the local cache)"
    except Exception:  # not in the cache (or not a hub id): say so rather than guess
        return "unknown (not in this machine's Hugging Face cache)"


def build_dataset_export(
    pairs: pd.DataFrame,
    selection: pd.DataFrame,
    histograms: Any,
    folder: Path,
    fluxgen: Mapping[str, Any],
    metrics: Sequence[Any],
    select: Mapping[str, Any],
    degrade: Mapping[str, Any],
    export: Mapping[str, Any],
) -> dict[str, Any]:
    """Replace ``folder`` with the shards, README.md and the histogram image; returns a summary."""
    problems = export_problems(export)
    if problems:
        raise ValueError("; ".join(problems))
    names = metric_names(metrics)
    model = str(fluxgen["model"])
    license_info = generator_license(model, export["license_model"], export["license"])
    table = export_table(pairs, selection, names)
    with atomic_directory(folder) as tmp:
        root = Path(tmp)
        shards = write_shards(table, root, export["format"], export["max_shard_mb"], export["include_generated"], names)
        hist_name = None
        if histograms is not None:
            histograms.save(root / HISTOGRAMS_NAME)
            hist_name = HISTOGRAMS_NAME
        card = dataset_card(
            title=export["title"],
            license_info=license_info,
            license_model=export["license_model"] or model,
            fmt=export["format"],
            shards=shards,
            n_pairs=len(table),
            selection=selection,
            metric_names=names,
            fluxgen=fluxgen,
            select=select,
            degrade=degrade,
            generator_revision=model_revision(model),
            include_generated=export["include_generated"],
            histograms=hist_name,
            repo_id=export["repo_id"],
            tiny_models=export["tiny_models"],
        )
        (root / CARD_NAME).write_text(card)
    return {
        "folder": str(folder),
        "format": export["format"],
        "pairs": len(table),
        "shards": shards,
        "license": license_info.card_fields(),
    }


def evaluation_for(adapter: Any, means: pd.DataFrame, report_md: str) -> str:
    """The model card's evaluation section: the FluxIR rows of the evaluation means when the report evaluated
    this adapter (its fingerprint appears in the report), else a line saying it was not evaluated."""
    from fluxir.evaluation.report import OURS_METHOD
    from fluxir.evaluation.restore import adapter_fingerprint

    fingerprint = adapter_fingerprint(adapter)
    if fingerprint not in (report_md or ""):
        return (
            f"Not evaluated: the latest evaluation report does not name this adapter (fingerprint {fingerprint}); "
            "run `kedro run --pipeline=evaluate`, then export again."
        )
    ours = means[means["method"] == OURS_METHOD]
    rows = [
        {
            "dataset": r["dataset"],
            "metric": r["label"] + (f" (stand-in: {r['metric']})" if r["stand_in"] else ""),
            "convention": f"{r['convention']}, crop {int(r['crop_border'])}",
            "mean": float(r["mean"]),
            "images": int(r["n"]),
        }
        for r in ours.to_dict("records")
    ]
    table = markdown_table(rows, ["dataset", "metric", "convention", "mean", "images"])
    return (
        f"From the evaluation report that restored with these weights (fingerprint {fingerprint}; "
        "`kedro run --pipeline=evaluate`):\n\n" + table
    )
