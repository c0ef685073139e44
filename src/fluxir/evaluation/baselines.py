"""Outputs of other restorers that a user drops into a folder, matched to the benchmark images.

Any restorer whose outputs are put under ``<baselines_dir>/<method>/<dataset>/`` with the prepared LQ file
names (e.g. SeeSR or SUPIR results) is scored and shown beside this run's methods.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.evaluation.testsets import list_images, outputs_table, pair_key
from fluxir.io.images import image_size
from fluxir.restoration.methods import EVALUATE_METHODS

log = logging.getLogger(__name__)

RESERVED_METHODS = EVALUATE_METHODS  # a user's baseline folder may not reuse a name computed here


def baseline_manifest(manifest: pd.DataFrame, baselines_dir: str | Path, scale: int) -> pd.DataFrame:
    """Outputs in ``<baselines_dir>/<method>/<dataset>/`` matched to the benchmark images by file stem.

    A file matches image ``x`` when its stem is ``x`` (or is ``x`` once a suffix like ``_LR4`` is
    stripped). A method with no folder for a dataset is silently absent; one that lacks some images of a
    dataset is skipped for that dataset with a warning (its mean would not be comparable); an output whose
    size is not ``scale`` x the LQ raises ValueError naming the file.
    """
    root = Path(baselines_dir)
    if not root.is_dir():
        log.info(
            "no outputs of other restorers in %s (<method>/<dataset>/ folders): only evaluate.methods and bicubic "
            "are scored",
            root,
        )
        return outputs_table([])
    rows: list[list[Any]] = []
    for method_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        method = method_dir.name
        if method in RESERVED_METHODS:
            raise ValueError(f"{method_dir}: '{method}' names one of this run's methods; rename the baseline folder")
        for dataset, images in manifest.groupby("dataset", sort=False):
            folder = method_dir / dataset
            files = list_images(folder)
            if not files:
                continue
            by_stem = {p.stem: p for p in files}
            by_key = {pair_key(p.stem): p for p in files}
            found, missing = [], []
            for r in images.itertuples(index=False):
                path = by_stem.get(r.image) or by_key.get(r.image)
                (found if path is not None else missing).append((r, path))
            if missing:
                log.warning(
                    "baseline %s on %s: %d of %d images missing (e.g. %s): skipped for this dataset",
                    method,
                    dataset,
                    len(missing),
                    len(images),
                    [m[0].image for m in missing[:3]],
                )
                continue
            for r, path in found:
                lw, lh = image_size(r.lq_path)
                if image_size(path) != (lw * scale, lh * scale):
                    raise ValueError(
                        f"baseline {method}: {path} is {image_size(path)}, expected {(lw * scale, lh * scale)} "
                        f"(x{scale} of the prepared LQ {r.lq_path}); run it on the prepared LQ folder"
                    )
                rows.append([dataset, r.image, method, str(path)])
            log.info("baseline %s on %s: %d images", method, dataset, len(found))
    return outputs_table(rows)
