"""FluxIR restoration of files: photos of any mode in, restored PNGs out, folders planned so nothing is overwritten.

``fluxir.restoration.sampler`` restores one RGB array; this module reads files (EXIF rotation, 16-bit,
alpha), writes results atomically, lists unreadable inputs as failures, and plans which files of a folder
to restore (``plan_folder``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fluxir.io.atomic import write_png_atomic
from fluxir.io.images import read_photo
from fluxir.io.provenance import model_revision, png_text, restored_fields
from fluxir.restoration.restore_config import RestoreConfig, config_dict
from fluxir.restoration.sampler import Restorer, upsample
from fluxir.restoration.work import RestoreWork, check_output_size, warm_up_rate
from fluxir.runtime.progress import progress as progress_bar

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Restoring files (read with ``fluxir.io.images.read_photo``: EXIF rotation, 16-bit, alpha kept apart)


@dataclass
class RestoreResult:
    """One restored file: sizes and time, for the summary."""

    input: str
    output: str
    in_size: tuple[int, int]  # (width, height) after EXIF rotation
    out_size: tuple[int, int]  # (width, height)
    seconds: float

    @property
    def megapixels(self) -> float:
        return self.out_size[0] * self.out_size[1] / 1e6


def restore_photo(
    restorer: Restorer,
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Restore RGB; an alpha channel is carried over, bicubic-resized to the output: (H, W, 3 or 4) uint8."""
    out = restorer.restore(rgb, progress=progress, on_step=on_step)
    if alpha is not None:
        out = np.concatenate([out, upsample(alpha, out.shape[0], out.shape[1])[..., None]], axis=2)
    return out


def restorer_provenance(model: str | None, adapter: Any, make_restorer: Callable[[], Any] | None) -> Any:
    """The text chunks of every image one restorer writes: the AI disclosure and the restorer (FluxIR: Flux's id
    and revision and the adapter's fingerprint, a hash of its weights; a public method: its name and the
    fingerprint of its weight files)."""
    from fluxir.io.hashing import hash_tensors

    public = getattr(make_restorer, "settings", None)
    if make_restorer is not None and public is not None:
        from fluxir.restoration.methods import public_fingerprint

        method = make_restorer.method
        return png_text(restored_fields(method, **{"Restorer-Weights": public_fingerprint(method, public)}))
    fields: dict[str, Any] = {"Model": model, "Model-Revision": model_revision(model) if model else None}
    if adapter is not None and hasattr(adapter, "state_dict"):
        fields["Adapter-Fingerprint"] = hash_tensors(adapter.state_dict()).hexdigest()[:16]
    return png_text(restored_fields("fluxir", **fields))


def restore_files(
    model: str,
    adapter: Any,
    cfg: RestoreConfig,
    jobs: list[tuple[str, str]],
    progress: bool = True,
    make_restorer: Callable[[], Any] | None = None,
    prompt_cache: str | Path | None = None,
) -> tuple[list[RestoreResult], list[dict[str, str]], float]:
    """Restore each (input, output) pair; returns (results, failures [{input, reason}], model load seconds).

    ``prompt_cache``: the catalog's ``prompt_embeddings`` folder (``Restorer.from_source``).

    An unreadable input, one whose output would exceed ``restore.max_output_megapixels``, or one that runs
    out of memory (accelerator or CPU) becomes a failure and the loop goes on. The model is loaded at the
    first usable input, so a folder of bad files fails fast. Before each image the log states its output
    size, the restorer's work and an estimated time (``fluxir.restoration.work``: the first image's rate from
    a warm-up, the later ones' from the images before). Every output carries the AI disclosure and the
    restorer (``restorer_provenance``). The restorer is Flux + ``adapter`` unless
    ``make_restorer`` builds another (a public restorer, ``restore.method``: its ``settings`` size the work).
    """
    public = getattr(make_restorer, "settings", None)
    results: list[RestoreResult] = []
    failures: list[dict[str, str]] = []
    restorer, load_seconds, provenance = None, 0.0, None
    passes, pass_seconds = 0, 0.0  # model passes done so far and their time: the rate of the estimate
    bar = progress_bar(total=len(jobs), desc="restore", unit="img", disable=not progress)
    for src, dst in jobs:
        bar.set_postfix_str(Path(src).name)
        bar.update(1)
        try:
            rgb, alpha = read_photo(src)
        except ValueError as err:
            _fail(failures, src, str(err).removeprefix(f"{Path(src)}: "))
            continue
        try:
            work = check_output_size(rgb.shape[0], rgb.shape[1], cfg, Path(src).name, public)
        except ValueError as err:
            _fail(failures, src, str(err))
            continue
        rate, basis = (pass_seconds / passes if passes else None), "rate of the images before"
        if restorer is None:  # model or adapter problems raise here, naming the model
            start = time.perf_counter()
            restorer = make_restorer() if make_restorer else Restorer.from_source(model, adapter, cfg, prompt_cache)
            load_seconds = time.perf_counter() - start
            provenance = restorer_provenance(model, adapter, make_restorer)
            rate, basis = warm_up_rate(restorer, work), "timed on a warm-up"
        logger.info("restoring %s: %s", src, work.describe(rate, basis))
        start = time.perf_counter()
        try:
            out = restore_photo(restorer, rgb, alpha, progress)
        except (torch.OutOfMemoryError, MemoryError) as err:
            _fail(failures, src, out_of_memory_advice(err, work))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        seconds = time.perf_counter() - start
        passes, pass_seconds = passes + work.passes, pass_seconds + seconds
        write_png_atomic(Path(dst), out, provenance)
        results.append(
            RestoreResult(str(src), str(dst), (rgb.shape[1], rgb.shape[0]), (out.shape[1], out.shape[0]), seconds)
        )
    bar.close()
    return results, failures, load_seconds


def out_of_memory_advice(err: BaseException, work: RestoreWork) -> str:
    """The failure reason of an image that ran out of (GPU or CPU) memory, with what to change."""
    where = "GPU" if isinstance(err, torch.OutOfMemoryError) else "CPU"
    first = (str(err).splitlines() or [""])[0] or type(err).__name__
    return (
        f"out of {where} memory at a {work.out_size[0]}x{work.out_size[1]} output ({first}); lower "
        "restore.tile_size / restore.vae_tile_size, restore.scale or restore.max_output_megapixels, or use "
        "restore.offload=model / restore.quantize (docs/troubleshooting.md)"
    )


@dataclass
class RestoreShare:
    """What one process of a (possibly multi-process) restoration did: its results, failures, model load time."""

    results: list[RestoreResult]
    failures: list[dict[str, str]]
    load_seconds: float


def restore_share(
    plan: Any,
    files: dict[str, Any],
    adapter: Any,
    cfg: RestoreConfig,
    process_index: int = 0,
    num_processes: int = 1,
    make_restorer: Callable[[], Any] | None = None,
    prompt_cache: str | Path | None = None,
) -> RestoreShare:
    """Restore share ``process_index`` of ``num_processes`` of the plan rows whose action is "restore"
    (every ``num_processes``-th job: each output depends only on its input and the seed, not on the share),
    with ``make_restorer``'s restorer when given (see ``restore_files``)."""
    jobs = list(plan.loc[plan["action"] == "restore", ["input", "output"]].itertuples(index=False, name=None))
    results, failures, load_seconds = restore_files(
        files.get("model"),
        adapter,
        cfg,
        jobs[process_index::num_processes],
        progress=bool(files.get("progress", True)) and process_index == 0,
        make_restorer=make_restorer,
        prompt_cache=prompt_cache,
    )
    return RestoreShare(results, failures, load_seconds)


def summarise_shares(
    plan: Any, shares: list[RestoreShare], files: dict[str, Any], cfg: RestoreConfig
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(failures [{input, reason}], summary) of all shares, in plan order. Raises RuntimeError, listing the
    reasons, when no input file could be used at all (nothing restored, nothing skipped)."""
    order = {src: i for i, src in enumerate(plan["input"])}
    results = sorted((r for s in shares for r in s.results), key=lambda r: order.get(r.input, len(order)))
    failures = sorted((f for s in shares for f in s.failures), key=lambda f: order.get(f["input"], len(order)))
    skipped = int((plan["action"] != "restore").sum())
    if failures and not results and not skipped:
        listing = "; ".join(f"{f['input']}: {f['reason']}" for f in failures[:20])
        raise RuntimeError(
            f"none of the {len(failures)} file(s) in {files.get('input_dir')} could be restored: {listing}"
        )
    load_seconds = max((s.load_seconds for s in shares), default=0.0)  # the processes load side by side
    return failures, summarise(results, skipped, failures, load_seconds, files, config_dict(cfg))


def restore_planned(
    plan: Any,
    files: dict[str, Any],
    adapter: Any,
    cfg: RestoreConfig,
    make_restorer: Callable[[], Any] | None = None,
    prompt_cache: str | Path | None = None,
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Restore the rows of a ``plan_folder`` table (a DataFrame) whose action is "restore" in this process
    (with ``make_restorer``'s restorer when given, see ``restore_files``).

    Returns (failures [{input, reason}], summary); see ``summarise_shares``.
    """
    share = restore_share(plan, files, adapter, cfg, make_restorer=make_restorer, prompt_cache=prompt_cache)
    return summarise_shares(plan, [share], files, cfg)


def failure_table(failures: list[dict[str, str]]) -> Any:
    """Failures as a DataFrame with string columns input, reason (also when empty)."""
    return pd.DataFrame({c: pd.Series([f[c] for f in failures], dtype="string") for c in ("input", "reason")})


def summarise(
    results: list[RestoreResult],
    skipped: int,
    failures: list[dict[str, str]],
    load_seconds: float,
    files: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """Counts, megapixels and time per megapixel of a run, with the per-image rows and the config."""
    megapixels = sum(r.megapixels for r in results)
    seconds = sum(r.seconds for r in results)
    return {
        "restored": len(results),
        "skipped_existing": skipped,
        "failed": len(failures),
        "megapixels_out": round(megapixels, 6),
        "restore_seconds": round(seconds, 3),
        "seconds_per_megapixel": round(seconds / megapixels, 4) if megapixels else None,
        "model_load_seconds": round(load_seconds, 3),
        "input_dir": str(files.get("input_dir")),
        "output_dir": str(files.get("output_dir")),
        "method": files["method"],
        "model": files.get("model"),
        "config": config,
        "images": [
            {
                "input": r.input,
                "output": r.output,
                "in_size": list(r.in_size),
                "out_size": list(r.out_size),
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }


def _fail(failures: list[dict[str, str]], src: str, reason: str) -> None:
    failures.append({"input": str(src), "reason": reason})
    logger.warning("could not restore %s: %s", src, reason)


# ----------------------------------------------------------------------------------------------------
# Folders: which files to restore, where to write them

FILE_PARAMS = ("method", "overwrite", "model", "progress")
# Not parameters but the runtime params the catalog's restore_input / restore_output read; Kedro merges every
# runtime param into the parameters too, so a run's restore group may hold them: they are dropped here.
FOLDER_PARAMS = ("input_dir", "output_dir")


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], RestoreConfig]:
    """``restore.*`` parameters -> (file parameters, validated RestoreConfig); every key is required (conf/base's
    parameters_restore.yml sets them all)."""
    missing = [k for k in FILE_PARAMS if k not in params]
    if missing:
        raise ValueError(f"restore lacks {missing}: conf/base's parameters files set every key")
    files = {k: params[k] for k in FILE_PARAMS}
    settings = {k: v for k, v in params.items() if k not in FILE_PARAMS + FOLDER_PARAMS}
    return files, RestoreConfig.from_params(settings)


# What to tell a user whose restore input is missing: the catalog entries and how to set them per run.
SET_INPUT = (
    'give it per run: kedro run --pipeline=restore --params="restore.input_dir=photos,restore.output_dir=restored" '
    "(the catalog entries restore_input / restore_output read these runtime params; a fixed folder goes in "
    "conf/local/catalog_restore.yml)"
)


def plan_folder(input_dir: str | Path | None, output_dir: str | Path, overwrite: bool = False) -> list[dict[str, Any]]:
    """One row per input file: {input, output, action} with action "restore" or "skip" (output exists).

    ``input_dir`` is a folder (searched recursively; hidden files and anything under ``output_dir`` are
    left out) or one file: the catalog's ``restore_input``; ``output_dir`` is ``restore_output``. Outputs are
    ``output_dir/<relative path>.png``; when two inputs would share an output (a.jpg, a.png) both keep their
    extension (a.jpg.png, a.png.png). Raises ValueError when the input is missing or empty, output_dir is the
    input folder, or an output would replace an input.
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
    stems: dict[Path, int] = {}
    for rel in relative:
        stems[rel.with_suffix(".png")] = stems.get(rel.with_suffix(".png"), 0) + 1
    inputs = {p.resolve() for p in files}
    rows = []
    for path, rel in zip(files, relative):
        name = rel.with_suffix(".png") if stems[rel.with_suffix(".png")] == 1 else rel.with_name(rel.name + ".png")
        out = dst / name
        if out.resolve() in inputs:
            raise ValueError(
                f"output {str(out)!r} would overwrite the input {str(path)!r}: choose another restore.output_dir"
            )
        exists = out.is_file()
        rows.append(
            {"input": str(path), "output": str(out), "action": "skip" if exists and not overwrite else "restore"}
        )
    return rows
