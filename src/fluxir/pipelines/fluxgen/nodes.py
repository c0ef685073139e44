"""Nodes of the FluxGen pipeline (paper Sec. 3.1); the work lives in ``fluxir.fluxgen``, imported lazily.
Generation and scoring run on ``fluxgen.num_processes`` processes; the node then lists what is on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.io.store import LOCK_NAME, ImageStore, exclusive_lock
from fluxir.runtime.launch import NumProcesses, resolve_num_processes, run_stage


def generate_images(image_store: ImageStore, prompt_embeddings: Path, fluxgen: dict[str, Any]) -> pd.DataFrame:
    """Generate the missing images of this configuration; returns the manifest of all of them."""
    from fluxir.fluxgen.generate import GenerationConfig, generation_manifest, run_generation

    cfg = GenerationConfig.from_params(fluxgen)
    processes = resolve_num_processes(fluxgen["num_processes"], "fluxgen.num_processes")
    store = image_store.sub(cfg.key())
    with exclusive_lock(store.root / LOCK_NAME, f"the image store {store.root}"):  # a second run waits, then reuses
        run_stage(
            ["fluxir.fluxgen", "generate"],
            processes,
            "generate",
            lambda: run_generation(cfg, image_store, prompt_cache=prompt_embeddings),
            ["--store", str(image_store.root), "--prompt-cache", str(prompt_embeddings)],
        )
        return generation_manifest(cfg, store)


def score_images(
    generated: pd.DataFrame, iqa_parts: Path, iqa: dict[str, Any], num_processes: NumProcesses
) -> pd.DataFrame:
    """Score the images not scored yet (by sha256, metric and version); returns the manifest plus one column per
    metric and the scorers' versions."""
    from fluxir.fluxgen.score import IqaConfig, merge_scores, metrics_key, run_scoring, score_versions

    cfg = IqaConfig.from_params(iqa)
    specs = cfg.specs()  # the stage checks every weight file first, on every process
    processes = resolve_num_processes(num_processes, "fluxgen.num_processes")
    parts_dir = iqa_parts / metrics_key(specs, cfg.precision)
    with exclusive_lock(parts_dir / LOCK_NAME, f"the IQA parts {parts_dir}"):  # part numbers are per writer
        run_stage(
            ["fluxir.fluxgen", "score"],
            processes,
            "score",
            lambda: run_scoring(cfg, generated, iqa_parts),
            ["--parts", str(iqa_parts)],
            tables={"--manifest": generated},
        )
        table = merge_scores(generated, parts_dir, [s.name for s in specs])
    table["iqa_versions"] = json.dumps(score_versions(specs, cfg.precision), sort_keys=True)
    return table


def content_filter(
    generated: pd.DataFrame, nsfw_parts: Path, settings: dict[str, Any], num_processes: NumProcesses
) -> pd.DataFrame:
    """Score the images not scored yet with the NSFW classifier and flag those above the threshold (disabled:
    nothing scored or flagged, and the run records that reviewing every output is the user's duty)."""
    from fluxir.fluxgen import content_filter as nsfw

    cfg = nsfw.ContentFilterConfig.from_params(settings)
    if not cfg.enabled:
        nsfw.record_filter_state(cfg, None)
        return nsfw.filter_table(generated, None, cfg)
    processes = resolve_num_processes(num_processes, "fluxgen.num_processes")
    parts_dir = nsfw_parts / nsfw.filter_key(cfg)
    with exclusive_lock(parts_dir / LOCK_NAME, f"the content filter parts {parts_dir}"):  # part numbers are per writer
        run_stage(
            ["fluxir.fluxgen", "content_filter"],
            processes,
            "content_filter",
            lambda: nsfw.run_filter(cfg, generated, nsfw_parts),
            ["--parts", str(nsfw_parts)],
            tables={"--manifest": generated},
        )
        table = nsfw.filter_table(generated, parts_dir, cfg)
    nsfw.record_filter_state(cfg, int(table["nsfw_flagged"].sum()))
    return table


def select_by_iqa(
    scores: pd.DataFrame, metrics: list[Any], percentile: float, nsfw: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict, Any]:
    """Keep images inside the top ``100 - percentile`` % on every metric (paper: top 95% => percentile 5) that the
    content filter did not flag; returns (table with ``keep`` and ``drop_reason``, MLflow metrics, histograms).
    The cuts are taken over every scored image, so they do not depend on the filter (``nsfw`` None: no filter)."""
    from fluxir.fluxgen.score import apply_content_filter, histograms_with_cuts, percentile_cuts
    from fluxir.iqa import MetricSpec
    from fluxir.runtime.tracking import mlflow_metric_values

    names = [MetricSpec.parse(s).name for s in metrics]
    table, cuts = percentile_cuts(scores, names, percentile)
    values: dict[str, float] = {}
    if nsfw is not None:
        table = apply_content_filter(table, nsfw, names)
        enabled = bool(len(table)) and table["content_filter"].iloc[0] != "disabled"
        values.update({"flagged_nsfw": int(table["nsfw_flagged"].sum()), "content_filter_enabled": int(enabled)})
    keep = table["keep"]
    values.update({"n_scored": len(table), "n_kept": int(keep.sum()), "kept_fraction": float(keep.mean())})
    values.update({f"threshold.{n}": c for n, (c, _) in cuts.items()})
    figure = histograms_with_cuts(table, cuts, percentile)
    return table, mlflow_metric_values(values), figure


def degrade_pairs(selection: pd.DataFrame, pair_store: ImageStore, degrade: dict[str, Any]) -> pd.DataFrame:
    """Make the missing HQ/LQ pairs of the kept images on ``degrade.workers`` cores and list all pairs."""
    from fluxir.fluxgen.pairs import PairsStageConfig, degrade_selection, pairs_manifest

    cfg = PairsStageConfig.from_params(degrade)
    with exclusive_lock(pair_store.root / LOCK_NAME, f"the pair store {pair_store.root}"):
        stores, kept, _ = degrade_selection(selection, pair_store, cfg)  # every missing pair, on every core
    return pairs_manifest(kept, stores, cfg.seed)
