"""Evaluation work behind the ``evaluate`` nodes: restore, bicubic, baselines, scoring and grids.

Every method's outputs are listed in one table (dataset, image, method, path) so the same code scores
them all: FluxIR (this run), bicubic (always) and any restorer whose outputs a user drops into
``<baselines_dir>/<method>/<dataset>/`` under the prepared LQ file names (e.g. SeeSR or SUPIR results).

Scoring (``score_all``) uses ``fluxir.iqa``: full-reference metrics where a benchmark has HQ, under the
configured channel convention and crop border; no-reference metrics on every output, on the whole RGB
image. Every number keeps its convention and crop border in its row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fluxir import iqa
from fluxir.config import Rule, check_fields
from fluxir.evaluation.report import (
    PER_IMAGE_COLUMNS,
    figure_png,
    grid_figure,
    is_stand_in,
)
from fluxir.evaluation.testsets import list_images, pair_key
from fluxir.io.atomic import write_png_atomic
from fluxir.io.hashing import hash_json, hash_tensors, sha256_file
from fluxir.io.images import image_size, read_image
from fluxir.iqa import MetricSpec
from fluxir.models.flux import resolve_device
from fluxir.progress import progress
from fluxir.restoration.methods import (
    EVALUATE_METHODS,
    PUBLIC_METHODS,
    TITLES,
    build_public,
    check_methods,
    describe_public,
    output_geometry,
    public_config,
    public_fingerprint,
)
from fluxir.restoration.restore_config import RestoreConfig, config_dict
from fluxir.restoration.sampler import Restorer, upsample

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["dataset", "image", "method", "path"]
RESERVED_METHODS = EVALUATE_METHODS  # a user's baseline folder may not reuse a name computed here


def _outputs(rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


# --------------------------------------------------------------------------------------------- #
# FluxIR and bicubic
# --------------------------------------------------------------------------------------------- #


def adapter_fingerprint(adapter: Any) -> str:
    """SHA-256 (12 hex) of the adapter's config and weights: outputs are reused only for the same adapter."""
    digest = hashlib.sha256(json.dumps(adapter.config.to_dict(), sort_keys=True, default=str).encode())
    return hash_tensors(adapter.state_dict(), digest).hexdigest()[:12]


def evaluation_restore_config(restore: Mapping[str, Any], scale: int, color_fix: str) -> tuple[str, RestoreConfig]:
    """(model, validated RestoreConfig) of ``evaluate.restore`` with evaluation's own scale and colour fix."""
    params = dict(restore)
    if "model" not in params:
        raise ValueError(
            "evaluate.restore.model is missing: the Flux pipeline (hub id or local folder) the adapter controls"
        )
    model = params.pop("model")
    if "color_fix" in params:
        raise ValueError("evaluate.restore.color_fix is not a parameter: set evaluate.color_fix (docs/evaluation.md)")
    params["color_fix"] = color_fix
    if params.setdefault("scale", scale) != scale:
        raise ValueError(
            f"evaluate.restore.scale {params['scale']!r} differs from evaluate.scale {scale!r}; set only evaluate.scale"
        )
    return model, RestoreConfig.from_params(params)


def _fluxir_root(model: str, config: RestoreConfig, adapter: Any, outputs_dir: str | Path) -> Path:
    return Path(outputs_dir) / "fluxir" / hash_json([model, config_dict(config), adapter_fingerprint(adapter)])


def restore_missing(
    manifest: pd.DataFrame,
    adapter: Any,
    restore: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int = 4,
    color_fix: str = "wavelet",
    process_index: int = 0,
    num_processes: int = 1,
    device: str | None = None,
) -> list[float]:
    """Restore share ``process_index`` of ``num_processes`` of the LQ images of ``manifest`` (every
    ``num_processes``-th, less those with a FluxIR output already: an output depends only on its input and the
    seed); returns the seconds per restored image. ``device`` (default ``restore.device``) is not in the key."""
    model, config = evaluation_restore_config(restore, scale, color_fix)
    root = _fluxir_root(model, config, adapter, outputs_dir)
    run_config = dataclasses.replace(config, device=device or config.device)
    _, _, seconds = restore_into(
        manifest,
        root,
        "fluxir",
        lambda: Restorer.from_source(model, adapter, run_config),
        config.scale,
        process_index,
        num_processes,
    )
    return seconds


def restore_manifest(
    manifest: pd.DataFrame,
    adapter: Any,
    restore: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int = 4,
    color_fix: str = "wavelet",
    restored_elsewhere: Sequence[float] = (),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore every LQ of ``manifest`` x``scale`` with Flux (``restore.model``) + ``adapter``; returns (outputs, info).

    ``color_fix`` is evaluation's own choice (``evaluate.color_fix``), never part of ``restore``. Files go to
    ``<outputs_dir>/fluxir/<key>/<dataset>/<image>_<LQ hash>.png``, the key hashing model, adapter and settings;
    files already there are reused, so an interrupted run resumes where it stopped.
    ``restored_elsewhere``: seconds per image of the images processes launched for this run restored
    (``restore_missing``), counted in the run info as restored now.
    """
    model, config = evaluation_restore_config(restore, scale, color_fix)
    root = _fluxir_root(model, config, adapter, outputs_dir)
    rows, _, seconds = restore_into(
        manifest, root, "fluxir", lambda: Restorer.from_source(model, adapter, config), config.scale
    )
    seconds = [*restored_elsewhere, *seconds]
    done_now = len(seconds)
    info = {
        "model": model,
        "adapter": f"{type(adapter).__name__} {adapter_fingerprint(adapter)} "
        f"({sum(p.numel() for p in adapter.parameters()) / 1e6:.2f}M parameters)",
        "adapter training": describe_training(adapter.training_record),
        "sampler": f"{config.steps} Euler steps, schedule {config.schedule}, Flux guidance {adapter.config.guidance} "
        f"(the adapter's training value), seed {config.seed}, {config.dtype}",
        "restore settings": ", ".join(f"{k}={v}" for k, v in config_dict(config).items()),
        "restored images": f"{done_now} now, {len(manifest) - done_now} reused, in {root}",
        "seconds per image": f"{np.mean(seconds):.2f}" if seconds else "n/a (all reused)",
    }
    return rows, info


def output_path(root: Path, row: Any) -> Path:
    """``<root>/<dataset>/<image>_<LQ sha256, 12 hex>.png``: a re-prepared crop of the same name (other pixels)
    gets a new output instead of reusing the old one."""
    return root / row.dataset / f"{row.image}_{sha256_file(row.lq_path)[:12]}.png"


def restore_into(
    manifest: pd.DataFrame,
    root: Path,
    method: str,
    make_restorer: Callable[[], Any],
    scale: float,
    process_index: int = 0,
    num_processes: int = 1,
) -> tuple[pd.DataFrame, int, list[float]]:
    """Restore every LQ of ``manifest`` that has no output (``output_path``) yet; returns (outputs table, images
    restored now, seconds per image). The restorer is made only when something is left to do, so a finished
    run reuses its files without loading a model. Process ``process_index`` of ``num_processes`` takes every
    ``num_processes``-th row of the manifest and skips those of its rows already restored: the shares never
    depend on when a process looked at the folder."""
    paths = [output_path(root, r) for r in manifest.itertuples(index=False)]
    mine = list(zip(manifest.itertuples(index=False), paths, strict=True))[process_index::num_processes]
    todo = [(row, path) for row, path in mine if not path.is_file()]
    seconds: list[float] = []
    if todo:
        restorer = make_restorer()
        for row, path in progress(todo, desc=f"restore ({method})", unit="img", disable=process_index != 0):
            lq = read_image(row.lq_path)
            start = time.perf_counter()
            out = restorer.restore(lq)
            seconds.append(time.perf_counter() - start)
            expected = (round(lq.shape[0] * scale), round(lq.shape[1] * scale))
            if out.shape[:2] != expected:
                raise RuntimeError(f"{method} {row.dataset}/{row.image}: restored {out.shape[:2]}, expected {expected}")
            write_png_atomic(path, out)
    log.info(
        "%s: %d images restored now, %d reused from %s",
        TITLES.get(method, method),
        len(todo),
        len(mine) - len(todo),
        root,
    )
    rows = [[r.dataset, r.image, method, str(p)] for r, p in zip(manifest.itertuples(index=False), paths, strict=True)]
    return _outputs(rows), len(todo), seconds


def _public_plans(
    methods: list[str], baselines: Mapping[str, Any], outputs_dir: str | Path, scale: int, color_fix: str
) -> list[tuple[str, Any, Any, Path]]:
    """(method, settings, output geometry, output folder) of each public restorer of ``methods``; every method's
    weights are checked before any is loaded."""
    plans = []
    for method in [m for m in check_methods(methods) if m in PUBLIC_METHODS]:
        cfg = public_config(method, baselines)
        geometry = output_geometry(method, scale, None, color_fix)
        key = hash_json([method, public_fingerprint(method, cfg), cfg.settings(), scale, geometry.color_fix])
        plans.append((method, cfg, geometry, Path(outputs_dir) / method / key))
    return plans


def restore_public_missing(
    manifest: pd.DataFrame,
    methods: list[str],
    baselines: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int,
    color_fix: str,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
) -> dict[str, list[float]]:
    """Share ``process_index`` of ``num_processes`` of ``public_manifest``'s work (on ``process_device`` where a
    method's device is ``auto``); returns the seconds per restored image of each method."""
    seconds = {}
    for method, cfg, geometry, root in _public_plans(methods, baselines, outputs_dir, scale, color_fix):
        run_cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device, process_device))  # not in the key
        make = partial(build_public, method, run_cfg, geometry)
        seconds[method] = restore_into(manifest, root, method, make, scale, process_index, num_processes)[2]
    return seconds


def public_manifest(
    manifest: pd.DataFrame,
    methods: list[str],
    baselines: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int,
    color_fix: str,
    restored_elsewhere: Mapping[str, Sequence[float]] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore every LQ with each public restorer of ``methods`` (``realesrgan``, ``flux_controlnet``).

    Files go to ``<outputs_dir>/<method>/<key>/<dataset>/<image>_<LQ hash>.png``, the key hashing the method,
    its weights (file hash / ControlNet content), its settings, the scale and the colour fix; files already
    there are reused. Every method's weights are checked before any is loaded. Returns (outputs, run info).
    ``restored_elsewhere``: {method: seconds per image} of what processes launched for this run restored
    (``restore_public_missing``), counted in the run info as restored now.
    """
    parts, info = [_outputs([])], {}
    for method, cfg, geometry, root in _public_plans(methods, baselines, outputs_dir, scale, color_fix):
        rows, _, seconds = restore_into(manifest, root, method, partial(build_public, method, cfg, geometry), scale)
        seconds = [*(restored_elsewhere or {}).get(method, []), *seconds]
        parts.append(rows)
        info[TITLES[method]] = f"{describe_public(method, cfg)}; colour fix {geometry.color_fix}"
        info[f"{TITLES[method]} images"] = f"{len(seconds)} now, {len(manifest) - len(seconds)} reused, in {root}; " + (
            f"{np.mean(seconds):.2f} s per image" if seconds else "all reused"
        )
    return pd.concat(parts, ignore_index=True), info


def describe_training(record: Mapping[str, Any]) -> str:
    """One line on how an adapter was trained, from its ``training_record`` (empty: never trained)."""
    if not record:
        return "no training record: an untrained adapter (or one saved before fluxir recorded training)"
    rest = ", ".join(f"{k} {v}" for k, v in record.items() if k != "steps")
    return f"{record.get('steps', '?')} optimizer steps ({rest})"


def bicubic_manifest(manifest: pd.DataFrame, scale: int, outputs_dir: str | Path) -> pd.DataFrame:
    """Bicubic x``scale`` of every LQ (PIL), written once under ``<outputs_dir>/bicubic/<dataset>/<prep_key>/``."""
    check_fields({"scale": scale}, [Rule("scale", "positive_int")], "evaluate.")
    rows = []
    for r in manifest.itertuples(index=False):
        path = output_path(Path(outputs_dir) / "bicubic" / r.dataset / str(r.prep_key), r)
        if not path.is_file():
            lq = read_image(r.lq_path)
            write_png_atomic(path, upsample(lq, lq.shape[0] * scale, lq.shape[1] * scale))
        rows.append([r.dataset, r.image, "bicubic", str(path)])
    return _outputs(rows)


# --------------------------------------------------------------------------------------------- #
# Baselines dropped into a folder
# --------------------------------------------------------------------------------------------- #


def baseline_manifest(manifest: pd.DataFrame, baselines_dir: str | Path, scale: int) -> pd.DataFrame:
    """Outputs in ``<baselines_dir>/<method>/<dataset>/`` matched to the benchmark images by file stem.

    A file matches image ``x`` when its stem is ``x`` (or is ``x`` once a suffix like ``_LR4`` is
    stripped). A method with no folder for a dataset is silently absent; one that lacks some images of a
    dataset is skipped for that dataset with a warning (its mean would not be comparable); an output whose
    size is not ``scale`` x the LQ raises ValueError naming the file.
    """
    root = Path(baselines_dir)
    if not root.is_dir():
        log.info("no baselines folder %s: only FluxIR and bicubic are scored", root)
        return _outputs([])
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
    return _outputs(rows)


# --------------------------------------------------------------------------------------------- #
# Scoring
# --------------------------------------------------------------------------------------------- #


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
    weights_dir: str | None = None,
    trust_weight_files: bool = False,
    device: str = "cpu",
    batch_size: int = 8,
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


# --------------------------------------------------------------------------------------------- #
# Grids
# --------------------------------------------------------------------------------------------- #


def _method_column(method: str) -> str:
    return TITLES.get(method, method)


def grids(
    manifest: pd.DataFrame,
    outputs: pd.DataFrame,
    names: Mapping[str, str],
    status: Mapping[str, Mapping[str, Any]],
    num_images: int = 3,
    note: str = "",
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
