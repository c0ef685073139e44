"""Scoring every method's outputs with ``fluxir.iqa``: the long per-image table behind the report.

Full-reference metrics where a benchmark has HQ, under the configured channel convention and crop border;
no-reference metrics on every output, on the whole RGB image. Every number keeps its convention and crop
border in its row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fluxir import iqa
from fluxir.evaluation.report import PER_IMAGE_COLUMNS, is_stand_in
from fluxir.iqa import MetricSpec


def parse_metric_groups(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"full_reference": {label: spec}, "no_reference": {label: spec}}`` with parsed ``MetricSpec`` values."""
    if not isinstance(metrics, Mapping) or set(metrics) - {"full_reference", "no_reference"}:
        raise ValueError(
            "evaluate.metrics must be {full_reference: {LABEL: pyiqa spec}, no_reference: {LABEL: spec}}, "
            f"got {metrics!r}"
        )
    groups = {
        g: {str(label): MetricSpec.parse(spec) for label, spec in (metrics.get(g) or {}).items()}
        for g in ("full_reference", "no_reference")
    }
    both = set(groups["full_reference"]) & set(groups["no_reference"])
    if both:
        raise ValueError(f"metric labels {sorted(both)} are used twice (full_reference and no_reference)")
    for group, mode in (("full_reference", "FR"), ("no_reference", "NR")):
        wrong = [f"{label}: {s.name}" for label, s in groups[group].items() if s.metric_mode != mode]
        if wrong:
            raise ValueError(f"evaluate.metrics.{group} holds metrics of the other kind: {wrong}")
    if not groups["full_reference"] and not groups["no_reference"]:
        raise ValueError("evaluate.metrics names no metric")
    return groups


def score_all(
    manifest: pd.DataFrame,
    outputs: pd.DataFrame,
    metrics: Mapping[str, Any],
    convention: str,
    crop_border: int,
    weights_dir: str | None,
    trust_weight_files: bool,
    device: str,
    batch_size: int,
) -> pd.DataFrame:
    """Score every output: the long per-image table of ``fluxir.evaluation.report.PER_IMAGE_COLUMNS``.

    All weight files are checked before anything is scored (one error listing every missing file).
    """
    groups = parse_metric_groups(metrics)
    iqa.configure_weights(weights_dir, trust_weight_files)
    iqa.check_weights([*groups["full_reference"].values(), *groups["no_reference"].values()])
    table = outputs.merge(
        manifest[["dataset", "image", "hq_path"]], on=["dataset", "image"], how="left", validate="many_to_one"
    ).reset_index(drop=True)
    if table.empty:
        raise ValueError("no restored output to score")
    parts = []

    def frame(rows: pd.DataFrame, label: str, spec: Any, values: Any, convention_: Any, crop: Any) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "dataset": rows["dataset"].values,
                "method": rows["method"].values,
                "image": rows["image"].values,
                "label": label,
                "metric": spec.name,
                "value": np.asarray(values, dtype=np.float64),
                "convention": convention_,
                "crop_border": crop,
                "higher_is_better": not iqa.lower_is_better(spec),
                "stand_in": is_stand_in(label, spec.name, spec.pretrained),
            }
        )

    if groups["no_reference"]:
        specs = list(groups["no_reference"].values())
        scores = iqa.score_no_reference(
            list(table["path"]), specs, batch_size=batch_size, device=device, progress=False
        )
        for label, spec in groups["no_reference"].items():
            parts.append(frame(table, label, spec, scores[spec.name].values, "rgb", 0))
    paired = table[table["hq_path"].notna()].reset_index(drop=True)
    if groups["full_reference"] and not paired.empty:
        specs = list(groups["full_reference"].values())
        long = iqa.score_full_reference(
            list(paired["path"]),
            list(paired["hq_path"]),
            specs,
            convention=convention,
            crop_border=crop_border,
            device=device,
            batch_size=batch_size,
            names=list(range(len(paired))),
        )
        for label, spec in groups["full_reference"].items():
            part = long[long["metric"] == spec.name].sort_values("image")
            parts.append(
                frame(paired, label, spec, part["value"].values, part["convention"].values, part["crop_border"].values)
            )
    per_image = pd.concat(parts, ignore_index=True)[PER_IMAGE_COLUMNS]
    per_image["crop_border"] = per_image["crop_border"].astype(int)
    return per_image
