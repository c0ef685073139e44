"""Image grids of the report: per benchmark, LQ | bicubic | public restorers | baselines | FluxIR | HQ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fluxir.evaluation.report import figure_png, grid_figure
from fluxir.io.images import read_image
from fluxir.restoration.methods import TITLES


def _method_column(method: str) -> str:
    return TITLES.get(method, method)


def grids(
    manifest: pd.DataFrame,
    outputs: pd.DataFrame,
    names: Mapping[str, str],
    status: Mapping[str, Mapping[str, Any]],
    num_images: int,
    note: str,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Per benchmark key: a figure of the first ``num_images`` images; and PNG bytes by dataset name.

    Columns: LQ | Bicubic | baselines | FluxIR | HQ (when the benchmark has HQ). ``note`` is added to each
    title (e.g. that the models are tiny). A skipped benchmark gets a figure that says why (no PNG).
    """
    figures: dict[str, Any] = {}
    pngs: dict[str, bytes] = {}
    methods = list(
        dict.fromkeys(
            ["bicubic", "realesrgan", "flux_controlnet", *[m for m in outputs["method"] if m != "fluxir"], "fluxir"]
        )
    )
    for key, name in names.items():
        images = manifest[manifest["dataset"] == name].head(num_images)
        if images.empty:
            message = (status.get(name) or {}).get("message", "not evaluated")
            figures[key] = grid_figure(name, [], [], [], message=message)
            continue
        has_hq = images["hq_path"].notna().any()
        present = [m for m in methods if not outputs[(outputs["dataset"] == name) & (outputs["method"] == m)].empty]
        columns = ["LQ", *[_method_column(m) for m in present]] + (["HQ"] if has_hq else [])
        rows = []
        for r in images.itertuples(index=False):
            cells: dict[str, np.ndarray | None] = {"LQ": read_image(r.lq_path)}
            for m in present:
                match = outputs[(outputs["dataset"] == name) & (outputs["method"] == m) & (outputs["image"] == r.image)]
                cells[_method_column(m)] = read_image(match["path"].iloc[0]) if len(match) else None
            if has_hq:
                cells["HQ"] = read_image(r.hq_path) if isinstance(r.hq_path, str) else None
            rows.append(cells)
        title = f"{name}: LQ / restored / HQ" + (f"\n{note}" if note else "")
        figures[key] = grid_figure(title, columns, rows, list(images["image"]))
        pngs[name] = figure_png(figures[key])
    return figures, pngs
