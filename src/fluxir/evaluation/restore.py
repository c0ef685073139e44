"""Every method's outputs (``testsets.OUTPUT_COLUMNS`` tables): FluxIR with the trained adapter, the public
restorers, bicubic and a user's baselines. A restored output is ``<outputs_dir>/<method>/<key>/<dataset>/<image>_<LQ
hash>.png``, the key hashing what changes the pixels, so a rerun reuses it and an interrupted run resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import fluxir
from fluxir.evaluation.config import EvaluateConfig
from fluxir.evaluation.testsets import list_images, outputs_table, pair_key
from fluxir.io.atomic import write_png_atomic
from fluxir.io.images import image_size, read_image
from fluxir.io.provenance import hash_json, hash_tensors, png_text, sha256_file
from fluxir.models.loading import resolve_device
from fluxir.restoration.files import LazyRestorer, restore_one
from fluxir.restoration.methods import EVALUATE_METHODS, PUBLIC_METHODS, TITLES, RestorerSpec, restorer_spec
from fluxir.restoration.restore_config import OutputGeometry
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
    """Restore every LQ of ``manifest`` without an output yet: (outputs table, seconds per image restored now).
    Process ``process_index`` takes every ``num_processes``-th row, never depending on what the folder holds."""
    name = spec.method.name
    rows = list(manifest.itertuples(index=False))
    paths = [output_path(root, r) for r in rows]
    mine = list(zip(rows, paths))[process_index::num_processes]
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
    return outputs_table([[r.dataset, r.image, name, str(p)] for r, p in zip(rows, paths)]), seconds


def adapter_fingerprint(adapter: Any) -> str:
    """SHA-256 (12 hex) of the adapter's config and weights: outputs are reused only for the same adapter."""
    digest = hashlib.sha256(json.dumps(adapter.config.to_dict(), sort_keys=True, default=str).encode())
    return hash_tensors(adapter.state_dict(), digest).hexdigest()[:12]


def adapter_provenance(adapter: Any, folder: Path | None, versioned: bool) -> dict[str, str]:
    """Which adapter a run used, as MLflow parameters: catalog version, fingerprint and what its
    ``training_record`` says of the training run; ``not recorded`` for an adapter saved without them."""
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


@dataclass(frozen=True)
class MethodOutputs:
    """What one method restored of one process's share (``rows``: the outputs table of the whole manifest)."""

    spec: RestorerSpec
    root: Path
    rows: pd.DataFrame
    seconds: list[float]

    @property
    def method(self) -> str:
        return self.spec.method.name


def restore_methods(
    manifest: pd.DataFrame,
    methods: Sequence[str],
    config: EvaluateConfig,
    outputs_dir: str | Path,
    adapter: Any = None,
    baselines: Any = None,
    process_index: int = 0,
    num_processes: int = 1,
    device: Any = None,
) -> list[MethodOutputs]:
    """This process's share of ``manifest`` restored by FluxIR (``evaluate.restore`` + ``adapter``) and the public
    restorers (``baselines.<method>``) among ``methods``, weights all checked first; ``device``: where one says auto."""
    plans = []
    if "fluxir" in methods:
        model, restore = config.restore_config()
        root = Path(outputs_dir) / "fluxir" / hash_json([model, asdict(restore), adapter_fingerprint(adapter)])
        if device is not None:  # this process's GPU where evaluate.restore.device is auto
            restore = dataclasses.replace(restore, device=resolve_device(restore.device, device))
        plans.append(
            (restorer_spec("fluxir", restore, model=model, adapter=adapter, parameter="evaluate.methods"), root)
        )
    geometry = OutputGeometry(scale=config.scale, target_size=None, color_fix=config.color_fix)  # no size bound
    for method in [m for m in methods if m in PUBLIC_METHODS]:
        spec = restorer_spec(method, geometry, baselines, device=device, parameter="evaluate.methods")
        color_fix = spec.method.output(geometry).color_fix
        key = hash_json([method, spec.fingerprint, spec.settings.settings(), config.scale, color_fix])
        plans.append((spec, Path(outputs_dir) / method / key))
    return [
        MethodOutputs(spec, root, *restore_into(manifest, root, spec, process_index, num_processes))
        for spec, root in plans
    ]


def run_info(share: MethodOutputs, images: int, elsewhere: Sequence[float] = ()) -> dict[str, str]:
    """The report's setup lines on one method; ``elsewhere``: seconds per image of the processes launched for it."""
    spec, seconds = share.spec, [*elsewhere, *share.seconds]
    done = f"{len(seconds)} now, {images - len(seconds)} reused, in {share.root}"
    if spec.settings is not None:  # a public restorer
        title = TITLES[share.method]
        rate = f"{np.mean(seconds):.2f} s per image" if seconds else "all reused"
        return {
            title: f"{spec.method.describe(spec.settings)}; colour fix {spec.method.output(spec.config).color_fix}",
            f"{title} images": f"{done}; {rate}",
        }
    adapter, config, record = spec.adapter, spec.config, spec.adapter.training_record
    trained = "no training record: an untrained adapter"
    if record:
        rest = ", ".join(f"{k} {v}" for k, v in record.items() if k != "steps")
        trained = f"{record.get('steps', '?')} optimizer steps ({rest})"
    return {
        "model": spec.model,
        "adapter": f"{type(adapter).__name__} {adapter_fingerprint(adapter)} "
        f"({sum(p.numel() for p in adapter.parameters()) / 1e6:.2f}M parameters)",
        "adapter training": trained,
        "sampler": f"{config.steps} Euler steps, schedule {config.schedule}, Flux guidance {adapter.config.guidance} "
        f"(the adapter's training value), seed {config.seed}, {config.dtype}",
        "restore settings": ", ".join(f"{k}={v}" for k, v in asdict(config).items()),
        "restored images": done,
        "seconds per image": f"{np.mean(seconds):.2f}" if seconds else "n/a (all reused)",
    }


# Bicubic is no AI model: its outputs carry what made them, without the AI disclosure.
BICUBIC_PROVENANCE = png_text({"Software": "fluxir", "Restorer": "bicubic (PIL)", "Fluxir-Version": fluxir.__version__})


def bicubic_manifest(manifest: pd.DataFrame, scale: int, outputs_dir: str | Path) -> pd.DataFrame:
    """Bicubic x``scale`` of every LQ (PIL), written once under ``<outputs_dir>/bicubic/<dataset>/<prep_key>/``."""
    rows = []
    for r in manifest.itertuples(index=False):
        path = output_path(Path(outputs_dir) / "bicubic" / r.dataset / str(r.prep_key), r)
        if not path.is_file():
            lq = read_image(r.lq_path)
            write_png_atomic(path, upsample(lq, lq.shape[0] * scale, lq.shape[1] * scale), BICUBIC_PROVENANCE)
        rows.append([r.dataset, r.image, "bicubic", str(path)])
    return outputs_table(rows)


def baseline_manifest(manifest: pd.DataFrame, baselines_dir: str | Path, scale: int) -> pd.DataFrame:
    """Outputs of other restorers (SeeSR, SUPIR, ...) in ``<baselines_dir>/<method>/<dataset>/``, matched by stem
    (``pair_key``). A method lacking some images of a dataset is skipped there: its mean would not compare."""
    root = Path(baselines_dir)
    if not root.is_dir():
        log.info("no outputs of other restorers in %s (<method>/<dataset>/): only evaluate.methods are scored", root)
        return outputs_table([])
    rows: list[list[Any]] = []
    for method_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        method = method_dir.name
        if method in EVALUATE_METHODS:
            raise ValueError(f"{method_dir}: '{method}' names one of this run's methods; rename the baseline folder")
        for dataset, images in manifest.groupby("dataset", sort=False):
            files = list_images(method_dir / dataset)
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
