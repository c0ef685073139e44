"""Nodes of the restore pipeline (paper Sec. 4.1). The restoration itself lives in ``fluxir.restoration``."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

FAILURE_COLUMNS = ("input", "reason")


def plan_restore(restore: dict[str, Any]) -> pd.DataFrame:
    """Check the parameters and list what to do: one row per input file with its output and action.

    Columns: input, output, action ("restore", or "skip" when the output exists and overwrite is off).
    Raises ValueError for bad parameters, a missing or empty input, or outputs that would replace inputs.
    """
    from fluxir.restoration.files import plan_folder, split_params

    files, _ = split_params(restore)
    plan = pd.DataFrame(plan_folder(files.get("input_dir"), files.get("output_dir"), bool(files.get("overwrite", False))),
                        columns=["input", "output", "action"])
    skipped = int((plan["action"] == "skip").sum())
    logger.info("restore plan: %d file(s) in %s, %d to restore, %d skipped (output exists; set restore.overwrite=true "
                "to redo them)", len(plan), files["input_dir"], len(plan) - skipped, skipped)
    return plan


def restore_images(plan: pd.DataFrame, adapter: Any, restore: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore the planned files with Flux + ``adapter``; returns (failures table, summary).

    Unreadable files are listed in the failures table (input, reason) and the log; the others are still
    restored. Raises RuntimeError when no input file could be used at all.
    """
    from fluxir.restoration.files import restore_files, split_params
    from fluxir.restoration.sampler import config_dict

    files, cfg = split_params(restore)
    jobs = list(plan.loc[plan["action"] == "restore", ["input", "output"]].itertuples(index=False, name=None))
    results, failures, load_seconds = restore_files(files.get("model"), adapter, cfg, jobs,
                                                    progress=bool(files.get("progress", True)))
    skipped = len(plan) - len(jobs)
    if failures and not results and not skipped:
        listing = "; ".join(f"{f['input']}: {f['reason']}" for f in failures[:20])
        raise RuntimeError(f"none of the {len(failures)} file(s) in {files['input_dir']} could be restored: {listing}")
    summary = summarise(results, skipped, failures, load_seconds, files, config_dict(cfg))
    logger.info("restored %d image(s), %.2f MP in %.1f s: %.2f s/MP; %d skipped, %d failed%s", summary["restored"],
                summary["megapixels_out"], summary["restore_seconds"], summary["seconds_per_megapixel"] or 0.0,
                skipped, len(failures), " (see restore_failures)" if failures else "")
    return failure_table(failures), summary


def failure_table(failures: list[dict[str, str]]) -> pd.DataFrame:
    """Failures as a DataFrame with string columns input, reason (also when empty)."""
    return pd.DataFrame({c: pd.Series([f[c] for f in failures], dtype="string") for c in FAILURE_COLUMNS})


def summarise(results: list[Any], skipped: int, failures: list[dict[str, str]], load_seconds: float,
              files: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Counts, megapixels and time per megapixel of a run, with the per-image rows and the config."""
    megapixels = sum(r.megapixels for r in results)
    seconds = sum(r.seconds for r in results)
    return {
        "restored": len(results),
        "skipped_existing": skipped,
        "failed": len(failures),
        "megapixels_out": round(megapixels, 6),
        "restore_seconds": round(seconds, 3),
        "seconds_per_megapixel": round(seconds / megapixels, 4) if megapixels else None,
        "model_load_seconds": round(load_seconds, 3),
        "input_dir": str(files.get("input_dir")),
        "output_dir": str(files.get("output_dir")),
        "model": files.get("model"),
        "config": config,
        "images": [{"input": r.input, "output": r.output, "in_size": list(r.in_size), "out_size": list(r.out_size),
                    "seconds": round(r.seconds, 3)} for r in results],
    }
