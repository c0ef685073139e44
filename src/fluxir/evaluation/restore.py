"""Every output this run computes: FluxIR with the trained adapter, the public restorers and bicubic.

Each method's outputs are files under ``<outputs_dir>/<method>/<key>/<dataset>/<image>_<LQ hash>.png``, the
key hashing what changes the pixels (model, weights, settings), so a rerun reuses them and an interrupted
run resumes. The returned tables (``testsets.OUTPUT_COLUMNS``) list them for scoring and grids. Processes
launched for a run (``python -m fluxir.evaluation``) restore every N-th image through the same functions
(``restore_missing``, ``restore_public_missing``) before the node restores the rest and reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fluxir.evaluation.testsets import outputs_table
from fluxir.io.atomic import write_png_atomic
from fluxir.io.images import read_image
from fluxir.io.provenance import fluxir_version, hash_json, hash_tensors, png_text, sha256_file
from fluxir.parameters.config import Rule, check_fields
from fluxir.restoration.files import LazyRestorer, restore_one
from fluxir.restoration.methods import PUBLIC_METHODS, TITLES, RestorerSpec, check_methods, restorer_spec
from fluxir.restoration.restore_config import OutputGeometry, RestoreConfig, config_dict
from fluxir.restoration.sampler import upsample
from fluxir.runtime.progress import progress

log = logging.getLogger(__name__)


def output_path(root: Path, row: Any) -> Path:
    """``<root>/<dataset>/<image>_<LQ sha256, 12 hex>.png``: a re-prepared crop of the same name (other pixels)
    gets a new output instead of reusing the old one."""
    return root / row.dataset / f"{row.image}_{sha256_file(row.lq_path)[:12]}.png"


def restore_into(
    manifest: pd.DataFrame, root: Path, spec: RestorerSpec, process_index: int = 0, num_processes: int = 1
) -> tuple[pd.DataFrame, list[float]]:
    """Restore every LQ of ``manifest`` that has no output (``output_path``) yet with ``restore_one``; returns
    (outputs table, seconds per image restored now). The restorer is loaded only when something is left to do,
    so a finished run reuses its files without loading a model. Process ``process_index`` of ``num_processes``
    takes every ``num_processes``-th row of the manifest and skips those of its rows already restored: the
    shares never depend on when a process looked at the folder."""
    name = spec.method.name
    paths = [output_path(root, r) for r in manifest.itertuples(index=False)]
    mine = list(zip(manifest.itertuples(index=False), paths, strict=True))[process_index::num_processes]
    todo = [(row, path) for row, path in mine if not path.is_file()]
    lazy = LazyRestorer(spec)
    seconds: list[float] = []
    for row, path in progress(todo, desc=f"restore ({name})", unit="img", disable=process_index != 0):
        result = restore_one(lazy, row.lq_path, path, as_stored=True)  # data files: pixels as stored
        seconds.append(result.seconds)
        (w, h), scale = result.in_size, spec.config.scale
        if result.out_size != (round(w * scale), round(h * scale)):  # the HQ's size, or the scores compare nothing
            path.unlink()
            raise RuntimeError(f"{name} {row.dataset}/{row.image}: restored {result.out_size}, expected x{scale}")
    log.info("%s: %d images restored now, %d reused from %s", TITLES[name], len(todo), len(mine) - len(todo), root)
    rows = [[r.dataset, r.image, name, str(p)] for r, p in zip(manifest.itertuples(index=False), paths, strict=True)]
    return outputs_table(rows), seconds


# --------------------------------------------------------------------------------------------- #
# FluxIR
# --------------------------------------------------------------------------------------------- #


def adapter_fingerprint(adapter: Any) -> str:
    """SHA-256 (12 hex) of the adapter's config and weights: outputs are reused only for the same adapter."""
    digest = hashlib.sha256(json.dumps(adapter.config.to_dict(), sort_keys=True, default=str).encode())
    return hash_tensors(adapter.state_dict(), digest).hexdigest()[:12]


def adapter_provenance(adapter: Any, folder: Path | None, versioned: bool) -> dict[str, str]:
    """Which adapter a run used, as MLflow parameters: the catalog version (its folder under the entry), the
    fingerprint of config and weights, and what its ``training_record`` says of the training run (the MLflow
    run id, the checkpoint run key, the steps); ``not recorded`` for an adapter saved without them."""
    record = adapter.training_record or {}
    unknown = "not recorded"
    return {
        "version": (folder.parent.name if versioned else "unversioned") if folder is not None else unknown,
        "path": str(folder) if folder is not None else unknown,
        "fingerprint": adapter_fingerprint(adapter),
        "training_run_id": str(record.get("mlflow_run_id", unknown)),
        "training_run_key": str(record.get("run_key", unknown)),
        "training_steps": str(record.get("steps", unknown)),
    }


def evaluation_restore_config(restore: Mapping[str, Any], scale: int, color_fix: str) -> tuple[str, RestoreConfig]:
    """(model, validated RestoreConfig) of ``evaluate.restore`` with evaluation's own scale and colour fix."""
    params = dict(restore)
    if "model" not in params:
        raise ValueError(
            "evaluate.restore.model is missing: the Flux pipeline (hub id or local folder) the adapter controls"
        )
    model = params.pop("model")
    if "color_fix" in params:  # evaluation's colour fix is its own; a second one here would be silently overridden
        raise ValueError("evaluate.restore.color_fix is not read: evaluation uses evaluate.color_fix; remove it")
    if params.setdefault("scale", scale) != scale:
        raise ValueError(
            f"evaluate.restore.scale {params['scale']!r} differs from evaluate.scale {scale!r}; set only evaluate.scale"
        )
    return model, RestoreConfig.from_params({**params, "color_fix": color_fix})


@dataclass(frozen=True)
class MethodOutputs:
    """What one method restored of one process's share: its restorer's spec, output folder, the outputs table of
    the whole manifest and the seconds per image restored now (files already there are reused)."""

    spec: RestorerSpec
    root: Path
    rows: pd.DataFrame
    seconds: list[float]

    @property
    def method(self) -> str:
        return self.spec.method.name


def restore_missing(
    manifest: pd.DataFrame,
    adapter: Any,
    restore: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int,
    color_fix: str,
    process_index: int = 0,
    num_processes: int = 1,
    device: str | None = None,
) -> MethodOutputs:
    """Restore share ``process_index`` of ``num_processes`` of the LQ images of ``manifest`` with FluxIR (every
    ``num_processes``-th, less those with an output already: an output depends only on its input and the seed).
    ``device`` (default ``restore.device``) is not in the key.
    """
    model, config = evaluation_restore_config(restore, scale, color_fix)
    root = Path(outputs_dir) / "fluxir" / hash_json([model, config_dict(config), adapter_fingerprint(adapter)])
    run_config = dataclasses.replace(config, device=device or config.device)
    spec = restorer_spec("fluxir", run_config, model=model, adapter=adapter, parameter="evaluate.methods")
    return MethodOutputs(spec, root, *restore_into(manifest, root, spec, process_index, num_processes))


def restore_manifest(
    manifest: pd.DataFrame,
    adapter: Any,
    restore: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int,
    color_fix: str,
    restored_elsewhere: Sequence[float] = (),
    done: MethodOutputs | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore every LQ of ``manifest`` x``scale`` with Flux (``restore.model``) + ``adapter``; returns (outputs, info).

    ``color_fix`` is evaluation's own choice (``evaluate.color_fix``), never part of ``restore``. Files go to
    ``<outputs_dir>/fluxir/<key>/<dataset>/<image>_<LQ hash>.png``, the key hashing model, adapter and settings;
    files already there are reused, so an interrupted run resumes where it stopped.
    ``restored_elsewhere``: seconds per image of the images processes launched for this run restored
    (``restore_missing``), counted in the run info as restored now. ``done``: what ``restore_missing`` already
    made in this process (else the outputs on disk are listed, restoring what is missing).
    """
    share = done or restore_missing(manifest, adapter, restore, outputs_dir, scale, color_fix)
    model, config, root = share.spec.model, share.spec.config, share.root
    seconds = [*restored_elsewhere, *share.seconds]
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
    return share.rows, info


def describe_training(record: Mapping[str, Any]) -> str:
    """One line on how an adapter was trained, from its ``training_record`` (empty: never trained)."""
    if not record:
        return "no training record: an untrained adapter"
    rest = ", ".join(f"{k} {v}" for k, v in record.items() if k != "steps")
    return f"{record.get('steps', '?')} optimizer steps ({rest})"


# --------------------------------------------------------------------------------------------- #
# Public restorers (Real-ESRGAN, a Flux ControlNet upscaler)
# --------------------------------------------------------------------------------------------- #


def restore_public_missing(
    manifest: pd.DataFrame,
    methods: list[str],
    baselines: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int,
    color_fix: str,
    process_index: int = 0,
    num_processes: int = 1,
    device: Any = None,
) -> list[MethodOutputs]:
    """Restore share ``process_index`` of ``num_processes`` of ``manifest`` with each public restorer of ``methods``
    (on ``device`` where a method's device is ``auto``). Every method's weights are checked before any is lazy."""
    config = OutputGeometry(scale=scale, target_size=None, color_fix=color_fix)  # the benchmark's size: no bound
    plans = []
    for method in [m for m in check_methods(methods) if m in PUBLIC_METHODS]:
        spec = restorer_spec(method, config, baselines, device=device, parameter="evaluate.methods")
        settings, geometry = spec.settings, spec.method.output(config)  # the device is not in the key
        key = hash_json([method, spec.fingerprint, settings.settings(), scale, geometry.color_fix])
        plans.append((spec, Path(outputs_dir) / method / key))
    return [
        MethodOutputs(spec, root, *restore_into(manifest, root, spec, process_index, num_processes))
        for spec, root in plans
    ]


def public_manifest(
    manifest: pd.DataFrame,
    methods: list[str],
    baselines: Mapping[str, Any],
    outputs_dir: str | Path,
    scale: int,
    color_fix: str,
    restored_elsewhere: Mapping[str, Sequence[float]] | None = None,
    done: list[MethodOutputs] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Restore every LQ with each public restorer of ``methods`` (``realesrgan``, ``flux_controlnet``).

    Files go to ``<outputs_dir>/<method>/<key>/<dataset>/<image>_<LQ hash>.png``, the key hashing the method,
    its weights (file hash / ControlNet content), its settings, the scale and the colour fix; files already
    there are reused. Every method's weights are checked before any is lazy. Returns (outputs, run info).
    ``restored_elsewhere``: {method: seconds per image} of what processes launched for this run restored
    (``restore_public_missing``), counted in the run info as restored now. ``done``: what
    ``restore_public_missing`` already made in this process (else the outputs on disk are listed).
    """
    parts, info = [outputs_table([])], {}
    shares = (
        done
        if done is not None
        else restore_public_missing(manifest, methods, baselines, outputs_dir, scale, color_fix)
    )
    for share in shares:
        method, spec, root = share.method, share.spec, share.root
        seconds = [*(restored_elsewhere or {}).get(method, []), *share.seconds]
        parts.append(share.rows)
        info[TITLES[method]] = (
            f"{spec.method.describe(spec.settings)}; colour fix {spec.method.output(spec.config).color_fix}"
        )
        info[f"{TITLES[method]} images"] = f"{len(seconds)} now, {len(manifest) - len(seconds)} reused, in {root}; " + (
            f"{np.mean(seconds):.2f} s per image" if seconds else "all reused"
        )
    return pd.concat(parts, ignore_index=True), info


# --------------------------------------------------------------------------------------------- #
# Bicubic
# --------------------------------------------------------------------------------------------- #


# Bicubic is no AI model: its outputs carry what made them, without the AI disclosure.
BICUBIC_PROVENANCE = png_text({"Software": "fluxir", "Restorer": "bicubic (PIL)", "Fluxir-Version": fluxir_version()})


def bicubic_manifest(manifest: pd.DataFrame, scale: int, outputs_dir: str | Path) -> pd.DataFrame:
    """Bicubic x``scale`` of every LQ (PIL), written once under ``<outputs_dir>/bicubic/<dataset>/<prep_key>/``."""
    check_fields({"scale": scale}, [Rule("scale", "positive_int")], "evaluate.")
    rows = []
    for r in manifest.itertuples(index=False):
        path = output_path(Path(outputs_dir) / "bicubic" / r.dataset / str(r.prep_key), r)
        if not path.is_file():
            lq = read_image(r.lq_path)
            write_png_atomic(path, upsample(lq, lq.shape[0] * scale, lq.shape[1] * scale), BICUBIC_PROVENANCE)
        rows.append([r.dataset, r.image, "bicubic", str(path)])
    return outputs_table(rows)
