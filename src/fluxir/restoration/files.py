"""Restoration of files: photos of any mode in, restored PNGs out, folders planned so nothing is overwritten.
``restore_one`` restores one photo for the restore pipeline, the evaluation and the web app alike.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from fluxir.io.atomic import write_png_atomic
from fluxir.io.images import read_image, read_photo
from fluxir.restoration.methods import RestorerSpec
from fluxir.restoration.restore_config import RestoreConfig
from fluxir.restoration.sampler import upsample
from fluxir.runtime.progress import progress as progress_bar

logger = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    input: str
    output: str
    in_size: tuple[int, int]  # (width, height) after EXIF rotation
    out_size: tuple[int, int]  # (width, height)
    seconds: float


class PhotoFailed(ValueError):
    """A photo that could not be restored (unreadable, too large, out of memory); ``reason``: its failure row."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RankResult(NamedTuple):
    """What one process of a (possibly multi-process) restoration did."""

    results: list[RestoreResult]
    failures: list[dict[str, str]]  # [{input, reason}]
    load_seconds: float


@dataclass
class LazyRestorer:
    """One restorer for many photos: loaded at the first photo that needs it, its rate measured as it goes."""

    spec: RestorerSpec
    restorer: Any = None
    load_seconds: float = 0.0
    provenance: Any = None  # the text chunks of every image it writes (RestorerSpec.provenance)
    passes: int = 0  # model passes done so far and their time: the rate of the next estimate
    pass_seconds: float = 0.0


def restore_one(
    lazy: LazyRestorer,
    src: str | Path,
    dst: str | Path,
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    on_plan: Callable[[str], None] | None = None,
    as_stored: bool = False,
) -> RestoreResult:
    """Restore the photo ``src`` (EXIF rotation, 16-bit, alpha; ``as_stored``: pixels as stored, for data files)
    into the PNG ``dst`` with its provenance. The size is checked before any model loads and the estimated time
    given to ``on_plan``; model or adapter problems raise as they are."""
    name = Path(src).name
    try:
        rgb, alpha = (read_image(src), None) if as_stored else read_photo(src)
    except ValueError as err:
        reason = str(err).removeprefix(f"{Path(src)}: ")
        raise PhotoFailed(f"{name}: {reason}", reason) from err
    try:
        work = lazy.spec.work(rgb.shape[0], rgb.shape[1], name)
    except ValueError as err:
        raise PhotoFailed(str(err), str(err)) from err
    rate = lazy.pass_seconds / lazy.passes if lazy.passes else None
    basis = "rate of the images before"
    if lazy.restorer is None:
        if on_plan is not None:
            on_plan(f"loading models; {work.describe(rate, basis)}")
        start = time.perf_counter()
        lazy.restorer = lazy.spec.load()
        lazy.load_seconds = time.perf_counter() - start
        lazy.provenance = lazy.spec.provenance()
    if rate is None:
        rate, basis = lazy.spec.method.warm_up(lazy.restorer, work), "timed on a warm-up"
    plan = work.describe(rate, basis)
    logger.info("restoring %s: %s", src, plan)
    if on_plan is not None:
        on_plan(plan)
    start = time.perf_counter()
    try:
        out = lazy.restorer.restore(rgb, progress=progress, on_step=on_step)
        if alpha is not None:  # carried over, bicubic-resized to the output: (H, W, 4)
            out = np.concatenate([out, upsample(alpha, out.shape[0], out.shape[1])[..., None]], axis=2)
    except (torch.OutOfMemoryError, MemoryError) as err:
        torch.cuda.empty_cache()  # a no-op where CUDA was never used
        where = "GPU" if isinstance(err, torch.OutOfMemoryError) else "CPU"
        first = (str(err).splitlines() or [""])[0] or type(err).__name__
        reason = (
            f"out of {where} memory at a {work.out_size[0]}x{work.out_size[1]} output ({first}); lower "
            "restore.tile_size / restore.vae_tile_size, restore.scale or restore.max_output_megapixels, or use "
            "restore.offload=model / restore.quantize (docs/troubleshooting.md)"
        )
        raise PhotoFailed(f"{name}: {reason}", reason) from err
    seconds = time.perf_counter() - start
    lazy.passes, lazy.pass_seconds = lazy.passes + work.passes, lazy.pass_seconds + seconds
    write_png_atomic(Path(dst), out, lazy.provenance)
    return RestoreResult(str(src), str(dst), (rgb.shape[1], rgb.shape[0]), (out.shape[1], out.shape[0]), seconds)


def restore_files(spec: RestorerSpec, jobs: list[tuple[str, str]], progress: bool = True) -> RankResult:
    """Restore each (input, output) pair; a photo that fails is listed and the loop goes on."""
    lazy = LazyRestorer(spec)
    results: list[RestoreResult] = []
    failures: list[dict[str, str]] = []
    bar = progress_bar(total=len(jobs), desc="restore", unit="img", disable=not progress)
    for src, dst in jobs:
        bar.set_postfix_str(Path(src).name)
        bar.update(1)
        try:
            results.append(restore_one(lazy, src, dst, progress))
        except PhotoFailed as err:
            failures.append({"input": str(src), "reason": err.reason})
            logger.warning("could not restore %s: %s", src, err.reason)
    bar.close()
    return RankResult(results, failures, lazy.load_seconds)


def restore_share(
    plan: Any, job: RestoreJob, spec: RestorerSpec, process_index: int = 0, num_processes: int = 1
) -> RankResult:
    """Restore every ``num_processes``-th plan row to restore, from the ``process_index``-th: each output depends
    only on its input and the seed, not on the share."""
    jobs = list(plan.loc[plan["action"] == "restore", ["input", "output"]].itertuples(index=False, name=None))
    mine = jobs[process_index::num_processes]
    return restore_files(spec, mine, progress=job.progress and process_index == 0)


def summarise_shares(
    plan: Any, shares: list[RankResult], job: RestoreJob, cfg: RestoreConfig
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(failures, summary) of all shares, in plan order; RuntimeError when no input file could be used at all."""
    order = {src: i for i, src in enumerate(plan["input"])}
    results = sorted((r for s in shares for r in s.results), key=lambda r: order.get(r.input, len(order)))
    failures = sorted((f for s in shares for f in s.failures), key=lambda f: order.get(f["input"], len(order)))
    skipped = int((plan["action"] != "restore").sum())
    if failures and not results and not skipped:
        listing = "; ".join(f"{f['input']}: {f['reason']}" for f in failures[:20])
        raise RuntimeError(f"none of the {len(failures)} file(s) in {job.input_dir} could be restored: {listing}")
    load_seconds = max((s.load_seconds for s in shares), default=0.0)  # the processes load side by side
    megapixels = sum(r.out_size[0] * r.out_size[1] for r in results) / 1e6
    seconds = sum(r.seconds for r in results)
    return failures, {
        "restored": len(results),
        "skipped_existing": skipped,
        "failed": len(failures),
        "megapixels_out": round(megapixels, 6),
        "restore_seconds": round(seconds, 3),
        "seconds_per_megapixel": round(seconds / megapixels, 4) if megapixels else None,
        "model_load_seconds": round(load_seconds, 3),
        "input_dir": str(job.input_dir),
        "output_dir": str(job.output_dir),
        "method": job.method,
        "model": job.model,
        "config": asdict(cfg),
        "images": [
            {**asdict(r), "in_size": list(r.in_size), "out_size": list(r.out_size), "seconds": round(r.seconds, 3)}
            for r in results
        ],
    }


# ----------------------------------------------------------------------------------------------------
# Folders: which files to restore, where to write them

FILE_PARAMS = ("method", "overwrite", "model", "progress")
# runtime params the catalog's restore_input / restore_output read, which Kedro also merges into restore.*: dropped
FOLDER_PARAMS = ("input_dir", "output_dir")


@dataclass(frozen=True)
class RestoreJob:
    """What a restore run does besides the pixels: the ``FILE_PARAMS`` of ``restore.*`` and its folders."""

    method: str  # restore.method: a key of fluxir.restoration.methods.METHODS
    overwrite: bool  # restore outputs that exist again
    model: str  # the Flux pipeline FluxIR controls (hub id or local folder)
    progress: bool  # a progress bar
    input_dir: str | None = None  # the catalog's restore_input
    output_dir: str | None = None  # the catalog's restore_output


def split_params(params: dict[str, Any]) -> tuple[RestoreJob, RestoreConfig]:
    """``restore.*`` parameters -> (the job, validated RestoreConfig); every key is required."""
    if missing := [k for k in FILE_PARAMS if k not in params]:
        raise ValueError(f"restore lacks {missing}: conf/base's parameters files set every key")
    job = RestoreJob(params["method"], bool(params["overwrite"]), params["model"], bool(params["progress"]))
    settings = {k: v for k, v in params.items() if k not in FILE_PARAMS + FOLDER_PARAMS}
    return job, RestoreConfig.from_params(settings)


# What to tell a user whose restore input is missing: the catalog entries and how to set them per run.
SET_INPUT = (
    'give it per run: kedro run --pipeline=restore --params="restore.input_dir=photos,restore.output_dir=restored" '
    "(the catalog entries restore_input / restore_output read these runtime params; a fixed folder goes in "
    "conf/local/catalog_restore.yml)"
)


def plan_folder(input_dir: str | Path | None, output_dir: str | Path, overwrite: bool = False) -> list[dict[str, Any]]:
    """One row per input file: {input, output, action "restore" or "skip" (output exists)}.

    ``input_dir``: a folder (recursive; hidden files and ``output_dir`` left out) or one file. Outputs are
    ``output_dir/<relative path>.png``; two inputs that would share one (a.jpg, a.png) keep their extension
    (a.jpg.png, a.png.png). ValueError for a missing or empty input or an output that would replace an input.
    """
    if not input_dir:
        raise ValueError(f"catalog entry restore_input has no path: nothing to restore; {SET_INPUT}")
    src, dst = Path(input_dir), Path(output_dir)
    if not src.exists():
        raise ValueError(f"catalog entry restore_input: {str(src)!r} does not exist; {SET_INPUT}")
    if src.is_dir():
        if dst.resolve() == src.resolve():
            raise ValueError(
                f"catalog entry restore_output {str(dst)!r} is the input folder: restored images would be mixed "
                "with (and could replace) the originals; choose another folder (--params restore.output_dir=...)"
            )
        out_root = dst.resolve()
        files = sorted(
            p
            for p in src.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(src).parts)
            and not p.resolve().is_relative_to(out_root)
        )
        relative = [p.relative_to(src) for p in files]
    else:
        files, relative = [src], [Path(src.name)]
    if not files:
        raise ValueError(f"catalog entry restore_input: {str(src)!r} has no files")
    stems = Counter(rel.with_suffix(".png") for rel in relative)
    inputs = {p.resolve() for p in files}
    rows = []
    for path, rel in zip(files, relative):
        name = rel.with_suffix(".png") if stems[rel.with_suffix(".png")] == 1 else rel.with_name(rel.name + ".png")
        out = dst / name
        if out.resolve() in inputs:
            raise ValueError(
                f"output {str(out)!r} would overwrite the input {str(path)!r}: choose another restore.output_dir"
            )
        action = "skip" if out.is_file() and not overwrite else "restore"
        rows.append({"input": str(path), "output": str(out), "action": action})
    return rows
