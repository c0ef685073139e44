"""Nodes of the FluxGen pipeline (paper Sec. 3.1). Heavy work lives in plain modules imported lazily."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from fluxir.io import ImageStore


def generate_images(image_store: ImageStore, fluxgen: dict[str, Any]) -> pd.DataFrame:
    """Generate the missing images of this configuration and return the manifest of all of them.

    Columns: image_id, seed, prompt, path, sha256, width, height, model, config_key.
    """
    from fluxir.fluxgen.generate import GenerationConfig, generate_into_store, image_seed, prompt_for
    from fluxir.io import portable_path, sha256_file

    cfg = GenerationConfig.from_params(fluxgen)
    store = image_store.sub(cfg.key())
    generate_into_store(cfg, store)
    rows = []
    for image_id in range(cfg.num_images):
        path = store.path_for(image_id)
        rows.append({
            "image_id": image_id, "seed": image_seed(cfg.base_seed, image_id), "prompt": prompt_for(image_id, cfg.prompts),
            "path": portable_path(path), "sha256": sha256_file(path), "width": cfg.width, "height": cfg.height,
            "model": cfg.model, "config_key": cfg.key(),
        })
    return pd.DataFrame(rows)


def score_images(generated: pd.DataFrame, iqa: dict[str, Any]) -> pd.DataFrame:
    """Score every generated image with the no-reference IQA metrics in ``iqa.metrics``.

    Returns the manifest columns plus one column per metric and the scorers' version info.
    """
    from fluxir.fluxgen import iqa as iqa_lib
    from fluxir.io import read_image

    specs = [iqa_lib.MetricSpec.parse(s) for s in iqa["metrics"]]
    iqa_lib.configure_weights(iqa.get("weights_dir"), iqa.get("trust_weight_files", False))
    iqa_lib.check_weights(specs)
    images = (read_image(p) for p in generated["path"])
    scores = iqa_lib.score_no_reference(images, specs, batch_size=iqa.get("batch_size", 8), device=iqa.get("device", "cpu"))
    table = pd.concat([generated.reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    table["iqa_versions"] = json.dumps(iqa_lib.metric_versions(specs), sort_keys=True)
    return table


def select_by_iqa(scores: pd.DataFrame, iqa: dict[str, Any], select: dict[str, Any]) -> tuple[pd.DataFrame, dict, Any]:
    """Keep images inside the top ``100 - percentile`` % on every metric (paper: top 95% => percentile 5).

    For a metric where lower is better the cut is the ``100 - percentile`` th percentile instead.
    Returns (table with ``keep`` and the thresholds used, MLflow metrics, histogram figure).
    """
    from fluxir.fluxgen.iqa import MetricSpec, lower_is_better
    from fluxir.fluxgen.select import histograms_with_cuts

    percentile = select["percentile"]
    if not isinstance(percentile, (int, float)) or not 0 < percentile < 100:
        raise ValueError(f"select.percentile must be in (0, 100) exclusive, got {percentile!r} (the paper uses 5)")
    names = [MetricSpec.parse(s).name for s in iqa["metrics"]]
    table = scores.copy()
    keep = pd.Series(True, index=table.index)
    cuts: dict[str, tuple[float, bool]] = {}
    for name in names:
        lower = lower_is_better(name)
        cut = float(table[name].quantile((100 - percentile) / 100 if lower else percentile / 100))
        passed = table[name] <= cut if lower else table[name] >= cut
        table[f"{name}_threshold"] = cut
        table[f"{name}_pass"] = passed
        keep &= passed
        cuts[name] = (cut, lower)
    table["keep"] = keep
    metrics = {"n_scored": len(table), "n_kept": int(keep.sum()), "kept_fraction": float(keep.mean())}
    metrics.update({f"threshold.{n}": c for n, (c, _) in cuts.items()})
    figure = histograms_with_cuts(table, cuts, percentile)
    return table, {k: {"value": float(v), "step": 0} for k, v in metrics.items()}, figure


def degrade_pairs(selection: pd.DataFrame, pair_store: ImageStore, degrade: dict[str, Any]) -> pd.DataFrame:
    """Make HQ/LQ pairs of the kept images with the SeeSR/Real-ESRGAN degradation (deterministic per id, seed).

    Pairs already written by an earlier run with the same settings are reused, not recomputed.
    """

    from fluxir.fluxgen.degrade import DegradationConfig, degrade_pair
    from fluxir.io import hash_json, portable_path, read_image, sha256_file, write_json_atomic, write_png_atomic
    from fluxir.progress import progress

    cfg = DegradationConfig.from_dict(degrade.get("config", {}))
    seed = degrade["seed"]
    kept = selection[selection["keep"]]
    key = hash_json([repr(cfg), seed, sorted(kept["config_key"].unique())])
    hq_store, lq_store = pair_store.sub(key).sub("hq"), pair_store.sub(key).sub("lq")
    rows = []
    for row in progress(kept.itertuples(index=False), total=len(kept), desc="degrade", unit="pair"):
        hq_path, lq_path = hq_store.path_for(row.image_id), lq_store.path_for(row.image_id)
        info_path = lq_path.with_suffix(".json")
        if not (hq_path.is_file() and lq_path.is_file() and info_path.is_file()):
            hq, lq, info = degrade_pair(read_image(row.path), row.image_id, seed, cfg)
            write_png_atomic(hq_path, hq)
            write_png_atomic(lq_path, lq)
            # Written last: its presence marks the pair as complete for a rerun.
            write_json_atomic(info_path, info, default=str)
        info = json.loads(info_path.read_text())
        rows.append({
            "image_id": row.image_id, "source_path": row.path, "source_sha256": row.sha256,
            "hq_path": portable_path(hq_path), "lq_path": portable_path(lq_path), "hq_sha256": sha256_file(hq_path),
            "lq_sha256": sha256_file(lq_path), "degradation_seed": seed, "pairs_key": key,
            "degradation": json.dumps(info, sort_keys=True, default=str),
        })
    if not rows:
        raise ValueError("no image passed the IQA selection: nothing to degrade (check select.percentile and the scores)")
    return pd.DataFrame(rows)
