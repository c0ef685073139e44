"""Every evaluation output scored, once: a score is kept in ``<eval_outputs>/scores.parquet`` under a key of what it
depends on (the output's and the HQ's bytes, the metric's pyiqa version, options and weight files, the convention and
crop), so a rerun, or a run that adds one method, scores only what is new."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fluxir import iqa
from fluxir.evaluation.config import EvaluateConfig, parse_metric_groups
from fluxir.evaluation.report import PAPER_METRICS, PER_IMAGE_COLUMNS
from fluxir.io.provenance import hash_json, sha256_file

log = logging.getLogger(__name__)

SCORES_FILE = "scores.parquet"
CACHE_COLUMNS = ["key", "value", "convention", "crop_border"]


class ScoreCache:
    """The scores a project has made, by key. Written whole and atomically; two runs saving at once keep the
    last one's table, which only costs the other's scores being made again."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / SCORES_FILE
        table = pd.read_parquet(self.path) if self.path.is_file() else pd.DataFrame(columns=CACHE_COLUMNS)
        self.rows: dict[str, tuple[float, str, int]] = {
            r.key: (float(r.value), str(r.convention), int(r.crop_border)) for r in table.itertuples(index=False)
        }
        self.added = 0

    def keys(self, spec: Any, outputs: Any, references: Any, convention: str, crop: int) -> list[str]:
        version = iqa.metric_versions([spec])
        return [hash_json([version, convention, crop, out, ref], 32) for out, ref in zip(outputs, references)]

    def missing(self, keys: list[str]) -> list[int]:
        return [i for i, key in enumerate(keys) if key not in self.rows]

    def add(self, keys: list[str], values: Any, conventions: Any, crops: Any) -> None:
        for key, value, convention, crop in zip(keys, values, conventions, crops):
            self.rows[key] = (float(value), str(convention), int(crop))
        self.added += len(keys)

    def values(self, keys: list[str]) -> tuple[np.ndarray, list[str], list[int]]:
        found = [self.rows[key] for key in keys]
        return np.array([f[0] for f in found], dtype=np.float64), [f[1] for f in found], [f[2] for f in found]

    def save(self) -> None:
        from fluxir.datasets import write_parquet

        if self.added:
            table = pd.DataFrame([(k, *v) for k, v in self.rows.items()], columns=CACHE_COLUMNS)
            write_parquet(self.path, table, index=False)


def score_all(
    manifest: pd.DataFrame,
    outputs: pd.DataFrame,
    config: EvaluateConfig,
    eval_outputs: str | Path,
    weights_dir: str | None,
    trust_weight_files: bool,
    device: str,
    batch_size: int,
) -> pd.DataFrame:
    """The per-image table (``PER_IMAGE_COLUMNS``): full-reference metrics where a benchmark has HQ, under
    ``evaluate.convention`` and ``crop_border``; no-reference metrics on every whole RGB output. All weight files
    are checked before anything is scored; scores in the cache of ``eval_outputs`` are reused."""
    from fluxir.models.loading import resolve_device

    device = resolve_device(device)
    groups = parse_metric_groups(config.metrics)
    full, no_ref = groups["full_reference"], groups["no_reference"]
    iqa.configure_weights(weights_dir, trust_weight_files)
    iqa.check_weights([*full.values(), *no_ref.values()])
    table = outputs.merge(
        manifest[["dataset", "image", "hq_path"]], on=["dataset", "image"], how="left", validate="many_to_one"
    ).reset_index(drop=True)
    if table.empty:
        raise ValueError("no restored output to score")
    table["output_sha"] = [sha256_file(path) for path in table["path"]]
    paired = table[table["hq_path"].notna()].reset_index(drop=True)
    paired["hq_sha"] = [sha256_file(path) for path in paired["hq_path"]]
    cache = ScoreCache(eval_outputs)
    parts = []

    def frame(rows: pd.DataFrame, label: str, spec: Any, keys: list[str]) -> pd.DataFrame:
        values, conventions, crops = cache.values(keys)
        return rows[["dataset", "method", "image"]].assign(
            label=label,
            metric=spec.name,
            value=values,
            convention=conventions,
            crop_border=crops,
            higher_is_better=not iqa.lower_is_better(spec),
            # one of the paper's metrics, not by its scorer
            stand_in=label in PAPER_METRICS and (spec.name not in PAPER_METRICS[label] or not spec.pretrained),
        )

    no_ref_keys = {
        label: cache.keys(spec, table["output_sha"], [""] * len(table), "rgb", 0) for label, spec in no_ref.items()
    }
    missing = {label: set(cache.missing(keys)) for label, keys in no_ref_keys.items()}
    if todo := sorted(set().union(*missing.values())):  # one pass over the images for every metric that needs them
        needed = [label for label in no_ref if missing[label]]
        paths = list(table["path"].iloc[todo])
        specs = [no_ref[label] for label in needed]
        scores = iqa.score_no_reference(paths, specs, batch_size=batch_size, device=device, progress=False)
        for label in needed:
            new = [(no_ref_keys[label][i], v) for i, v in zip(todo, scores[no_ref[label].name]) if i in missing[label]]
            cache.add([key for key, _ in new], [v for _, v in new], ["rgb"] * len(new), [0] * len(new))
    for label, spec in no_ref.items():
        parts.append(frame(table, label, spec, no_ref_keys[label]))
    for label, spec in full.items() if not paired.empty else ():
        keys = cache.keys(spec, paired["output_sha"], paired["hq_sha"], config.convention, config.crop_border)
        if todo := cache.missing(keys):
            long = iqa.score_full_reference(
                list(paired["path"].iloc[todo]),
                list(paired["hq_path"].iloc[todo]),
                [spec],
                convention=config.convention,
                crop_border=config.crop_border,
                device=device,
                batch_size=batch_size,
            ).sort_values("image")  # its image column: the position in ``todo``
            cache.add([keys[i] for i in todo], long["value"], long["convention"], long["crop_border"])
        parts.append(frame(paired, label, spec, keys))
    cache.save()
    made = sum(len(part) for part in parts)
    log.info("scores: %d made now, %d reused from %s", cache.added, made - cache.added, cache.path)
    per_image = pd.concat(parts, ignore_index=True)[PER_IMAGE_COLUMNS]
    per_image["crop_border"] = per_image["crop_border"].astype(int)
    return per_image
