"""Assemble an export from a run's tables and parameters, check the ``export.*`` parameters, upload the folder."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.export.cards import dataset_card, generator_license, markdown_table
from fluxir.export.dataset import FORMATS, export_table, write_shards
from fluxir.io.atomic import atomic_directory
from fluxir.parameters.config import is_number

log = logging.getLogger(__name__)

HISTOGRAMS_NAME = "iqa_histograms.png"
CARD_NAME = "README.md"
LOCAL_PREFIX = "file://"
KEYS = (
    "format",
    "max_shard_mb",
    "include_generated",
    "tiny_models",
    "title",
    "license_model",
    "license",
    "push_to_hub",
    "repo_id",
    "private",
    "hub_endpoint",
)
SWITCHES = ("include_generated", "tiny_models", "push_to_hub", "private")


def export_problems(export: Mapping[str, Any]) -> list[str]:
    """Messages for bad ``export.*`` values (empty: fine); the licence is checked where its model is known."""
    found = []
    unknown = sorted(set(export) - set(KEYS))
    missing = [k for k in KEYS if k not in export]
    if unknown:
        found.append(f"unknown export parameter(s) {unknown}; valid: {sorted(KEYS)} (docs/sharing.md)")
    if missing:
        found.append(f"export is missing {missing}: conf/base/parameters_export.yml defines them")
        return found
    if export["format"] not in FORMATS:
        found.append(f"export.format must be one of {list(FORMATS)}, got {export['format']!r}")
    size = export["max_shard_mb"]
    if not is_number(size) or size <= 0:
        found.append(f"export.max_shard_mb must be a positive number of megabytes (1e6 bytes), got {size!r}")
    found += [
        f"export.{k} must be true or false, got {export[k]!r}" for k in SWITCHES if not isinstance(export[k], bool)
    ]
    repo = export["repo_id"]
    if export["push_to_hub"] is True and not (isinstance(repo, str) and repo.count("/") == 1):
        found.append(
            f"export.push_to_hub is true but export.repo_id is {repo!r}: set it to <user or organisation>/<name> "
            "(e.g. --params export.repo_id=me/fluxgen-pairs) or set export.push_to_hub=false"
        )
    licence = export["license"]
    if licence is not None and not (isinstance(licence, Mapping) and "license" in licence):
        found.append(
            f"export.license {licence!r} must be null or a mapping with `license` (and `license_name`, "
            "`license_link` for `other`)"
        )
    return found


def export_dataset(
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
    """Replace ``folder`` with the ``export.format`` shards, the dataset card README.md and the histogram image."""
    from fluxir.iqa import MetricSpec

    if problems := export_problems(export):
        raise ValueError("; ".join(problems))
    names = [MetricSpec.parse(m).name for m in metrics]
    model = str(fluxgen["model"])
    license_info = generator_license(model, export["license_model"], export["license"])
    table = export_table(pairs, selection, names)
    with atomic_directory(folder) as tmp:
        root = Path(tmp)
        shards = write_shards(table, root, export["format"], export["max_shard_mb"], export["include_generated"], names)
        if histograms is not None:
            histograms.save(root / HISTOGRAMS_NAME)
        card = dataset_card(
            export=export,
            license_info=license_info,
            shards=shards,
            n_pairs=len(table),
            selection=selection,
            metric_names=names,
            fluxgen=fluxgen,
            select=select,
            degrade=degrade,
            histograms=HISTOGRAMS_NAME if histograms is not None else None,
        )
        (root / CARD_NAME).write_text(card)
    log.info("Exported %d pairs as %d %s shard(s) to %s", len(table), len(shards), export["format"], folder)
    return {
        "folder": str(folder),
        "format": export["format"],
        "pairs": len(table),
        "shards": shards,
        "license": license_info.card_fields(),
    }


def push_dataset(summary: dict[str, Any], folder: Path, export: Mapping[str, Any]) -> dict[str, Any]:
    """Upload the export folder to ``export.repo_id`` when ``export.push_to_hub`` is true."""
    if not export["push_to_hub"]:
        return {"pushed": False, "reason": "export.push_to_hub is false", "folder": str(folder)}
    result = upload_export(Path(folder), export["repo_id"], "dataset", export["hub_endpoint"], export["private"])
    log.info("Uploaded %d pairs (%d files) to %s", summary["pairs"], len(result["files"]), result["url"])
    return result


def upload_export(
    folder: Path, repo_id: str | None, repo_type: str, endpoint: str | None, private: bool
) -> dict[str, Any]:
    """Upload ``folder`` as ``repo_id`` (a ``dataset`` or ``model`` repository); returns where it went.
    An ``endpoint`` ``file:///some/dir`` copies the folder to ``/some/dir/<repo_id>`` instead: a dry run."""
    if not repo_id or "/" not in str(repo_id):
        raise ValueError(
            f"export.repo_id is {repo_id!r}: push_to_hub needs `<user or organisation>/<name>`, e.g. "
            "--params export.repo_id=me/fluxgen-pairs (or set export.push_to_hub=false)"
        )
    files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    if endpoint and str(endpoint).startswith(LOCAL_PREFIX):
        target = Path(str(endpoint)[len(LOCAL_PREFIX) :]) / repo_id
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        return {"pushed": True, "repo_id": repo_id, "url": target.as_uri(), "files": files}
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), commit_message="Upload from fluxir export"
    )
    return {"pushed": True, "repo_id": repo_id, "url": str(getattr(commit, "commit_url", commit)), "files": files}


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
