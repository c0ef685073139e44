"""Nodes of the restore pipeline (paper Sec. 4.1); the restoration itself lives in ``fluxir.restoration``."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)


def plan_restore(restore_input: Path | None, restore_output: Path, overwrite: bool) -> pd.DataFrame:
    """One row per file of ``restore_input``: input, output, action ("restore", or "skip": the output exists)."""
    from fluxir.restoration.files import plan_folder

    plan = pd.DataFrame(plan_folder(restore_input, restore_output, bool(overwrite)))
    skipped = int((plan["action"] == "skip").sum())
    logger.info(
        f"restore plan: {len(plan)} file(s) in {restore_input}, {len(plan) - skipped} to restore, {skipped} skipped "
        "(output exists; set restore.overwrite=true to redo them)"
    )
    return plan


def restore_images(
    plan: pd.DataFrame,
    adapter: Any,
    prompt_embeddings: Path,
    restore_input: Path,
    restore_output: Path,
    restore: dict[str, Any],
    baselines: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore the planned files with ``restore.method`` on ``restore.num_processes`` processes (more than one:
    ``accelerate launch -m fluxir.restoration``); returns (failures table, summary of them all)."""
    from fluxir.restoration.files import restore_share, split_params, summarise_shares
    from fluxir.restoration.methods import restorer_spec
    from fluxir.runtime.launch import resolve_num_processes, run_stage, scratch_dir

    job, cfg = split_params(restore)
    job = replace(job, input_dir=str(restore_input), output_dir=str(restore_output))
    spec = restorer_spec(job.method, cfg, baselines, job.model, adapter, prompt_embeddings)
    processes = resolve_num_processes(restore["num_processes"], "restore.num_processes")
    with scratch_dir("restore") as scratch:  # several processes: rank 0 writes failures and summary here
        done = run_stage(
            ["fluxir.restoration"],
            processes,
            "restore",
            lambda: summarise_shares(plan, [restore_share(plan, job, spec)], job, cfg),
            ["--summary", str(scratch / "summary.json")],
            {"--plan": plan},
            spec.adapter,
        )
        if done is None:
            written = json.loads((scratch / "summary.json").read_text())
            done = written["failures"], written["summary"]
    failures, summary = done
    summary.update(spec.method.summary(spec))
    logger.info(
        f"restored {summary['restored']} image(s), {summary['megapixels_out']:.2f} MP in "
        f"{summary['restore_seconds']:.1f} s: {summary['seconds_per_megapixel'] or 0.0:.2f} s/MP; "
        f"{summary['skipped_existing']} skipped, {len(failures)} failed{' (see restore_failures)' if failures else ''}"
    )
    table = {c: pd.Series([f[c] for f in failures], dtype="string") for c in ("input", "reason")}
    return pd.DataFrame(table), summary  # string columns input, reason, also when empty
