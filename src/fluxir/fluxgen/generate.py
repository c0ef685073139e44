"""FluxGen step 1 (paper Sec. 3.1, Fig. 2): unconditional generation, image ``i`` from noise seed ``base_seed + i``,
resumable, on ``r`` of ``w`` processes; and the manifest of the images.

An image's SHA-256 is computed once, when it is written, and kept in a sidecar (size, mtime_ns) merged into a
per-shard index: hashing 0.5 TB on every run would take longer than the run.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from fluxir.io.atomic import fsync_dir, write_atomic
from fluxir.io.provenance import generated_fields, hash_json, model_revision, png_text
from fluxir.io.store import SHARD_SIZE, ImageStore, Recorded, WriterPool, portable_path, record_hash, sidecar_path
from fluxir.models.loading import load_pipeline, resolve_device
from fluxir.parameters.config import Config, Rule
from fluxir.runtime.progress import progress as progress_bar

if TYPE_CHECKING:
    from fluxir.models.prompts import PromptEncoder

logger = logging.getLogger(__name__)

# The fields that change the pixels of image i (batch_size and device do not: per-image generators).
_PIXEL_FIELDS = (
    "model",
    "height",
    "width",
    "steps",
    "guidance",
    "dtype",
    "prompts",
    "base_seed",
    "max_sequence_length",
)


def _nearest_multiple_of_16(value: Any) -> str:
    return f"; nearest valid: {max(16, round(value / 16) * 16) if isinstance(value, (int, float)) else 16}"


_SIDE = "a positive multiple of 16 (VAE /8 and 2x2 packing)"
GENERATION_RULES = (
    Rule("num_images", "positive_int"),
    Rule("height", "multiple_of", 16, must=_SIDE, note=_nearest_multiple_of_16),
    Rule("width", "multiple_of", 16, must=_SIDE, note=_nearest_multiple_of_16),
    Rule("steps", "positive_int"),
    Rule("batch_size", "positive_int"),
    Rule("write_threads", "nonneg_int", note=" (0: write each image before the next denoising starts)"),
    Rule("dtype", "choice", ("float32", "bfloat16", "float16"), must="float32, bfloat16 or float16"),
)


@dataclass
class GenerationConfig(Config):
    """Parameters ``fluxgen.*`` (values in conf/base/parameters_fluxgen.yml)."""

    model: str
    num_images: int
    base_seed: int
    height: int
    width: int
    steps: int
    guidance: float
    dtype: str
    device: str
    batch_size: int
    prompts: list[str]  # empty: the paper's empty prompt
    max_sequence_length: int
    write_threads: int  # PNG encode + hash + sidecar threads behind a queue of 2 x write_threads images
    compile: bool  # torch.compile the transformer's blocks (fluxir.models.flux.compile_blocks)

    PREFIX, RULES = "fluxgen.", GENERATION_RULES
    NOT_FIELDS = ("content_filter",)  # groups under ``fluxgen`` read by other stages

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "prompts": list(params.get("prompts") or [])}

    def key(self) -> str:
        """The store sub-folder of this configuration: a short hash of the settings that determine pixels."""
        return hash_json({k: asdict(self)[k] for k in _PIXEL_FIELDS})


def image_seed(base_seed: int, image_id: int) -> int:
    return base_seed + image_id


def prompt_for(image_id: int, prompts: list[str]) -> str:
    """The empty prompt, or the domain list cycled."""
    return prompts[image_id % len(prompts)] if prompts else ""


def ids_for_process(num_images: int, process_index: int, num_processes: int) -> list[int]:
    return list(range(process_index, num_images, num_processes))  # interleaved: shares differ by one at most


def generate_into_store(
    cfg: GenerationConfig,
    store: ImageStore,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
    prompt_cache: str | Path | None = None,
) -> list[int]:
    """Generate this process's missing images into ``store``; returns the ids generated now, once all are on disk.

    The empty prompt's embeddings come from ``prompt_cache`` when there: the text encoders are then never loaded.
    """
    todo = [i for i in ids_for_process(cfg.num_images, process_index, num_processes) if not store.exists(i)]
    logger.info(
        "process %d/%d: %d of its images to generate into %s", process_index, num_processes, len(todo), store.root
    )
    if not todo:
        return []
    # diffusers is imported here, not above: a run with every image made, and the scoring ranks, start 4 s faster
    from fluxir.models.flux import compile_blocks
    from fluxir.models.prompts import PromptEncoder, load_with_empty_prompt

    device = resolve_device(cfg.device, process_device)
    if cfg.prompts:
        pipe = load_pipeline(cfg.model, dtype=cfg.dtype, device=device)
        encoder = PromptEncoder(pipe, cfg.prompts, cfg.max_sequence_length, device, guidance=cfg.guidance)
    else:  # the paper's empty prompt: encoded once per model, then read from the cache
        pipe, encoder = load_with_empty_prompt(
            cfg.model, cfg.dtype, device, cfg.max_sequence_length, prompt_cache, guidance=cfg.guidance
        )
    pipe.set_progress_bar_config(disable=True)
    if cfg.compile:
        compile_blocks(pipe.transformer)
    done, _ = write_generated(
        cfg, store, denoised_images(cfg, pipe, encoder, todo, device), len(todo), f"generate[{process_index}]", progress
    )
    return done


def denoised_images(
    cfg: GenerationConfig, pipe: Any, encoder: PromptEncoder, ids: list[int], device: str
) -> Iterator[tuple[int, np.ndarray]]:
    """``(image_id, (H, W, 3) uint8 image)`` of each id, ``cfg.batch_size`` ids per pipeline call."""
    call = set(inspect.signature(pipe.__call__).parameters)
    for lo in range(0, len(ids), cfg.batch_size):
        batch = ids[lo : lo + cfg.batch_size]
        # one generator per image: a batch of 4 gives each image the noise it gets in a batch of 1
        generators = [torch.Generator(device).manual_seed(image_seed(cfg.base_seed, i)) for i in batch]
        kwargs = dict(
            height=cfg.height, width=cfg.width, num_inference_steps=cfg.steps, output_type="np", generator=generators
        )
        if "guidance_scale" in call:
            kwargs["guidance_scale"] = cfg.guidance
        if "clean_caption" in call:
            # PixArt/Sana default to True, which rewrites prompts only where bs4 and ftfy happen to be
            # installed (else a warning per call): the prompt must give the same pixels everywhere.
            kwargs["clean_caption"] = False
        with torch.inference_mode():
            images = pipe(**encoder.batch_kwargs([prompt_for(i, cfg.prompts) for i in batch]), **kwargs).images
        for image_id, image in zip(batch, images):
            yield image_id, (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_generated(
    cfg: GenerationConfig,
    store: ImageStore,
    images: Iterable[tuple[int, np.ndarray]],
    total: int,
    desc: str = "generate",
    progress: bool = True,
) -> tuple[list[int], float]:
    """Write ``images`` with their sha256 and provenance on ``cfg.write_threads`` threads; returns once all are
    written: (their ids, seconds the producer waited on the writes)."""
    done: list[int] = []
    start = time.perf_counter()
    revision, config_hash = model_revision(cfg.model), cfg.key()
    bar = progress_bar(total=total, desc=desc, unit="img", disable=not progress)
    with WriterPool(cfg.write_threads) as writer:
        for image_id, image in images:
            seed = image_seed(cfg.base_seed, image_id)
            provenance = png_text(generated_fields(cfg.model, revision, seed, config_hash, **{"Image-Id": image_id}))
            # + its sha256 and sidecar; each PNG reaches the disk before its rename, its folder below
            writer.submit(store.write_recorded, image_id, image, False, provenance)
            done.append(image_id)
            bar.update(1)
            bar.set_postfix(img_per_s=f"{len(done) / (time.perf_counter() - start):.2f}")
    store.sync_shards(done)  # the renames of this run, one fsync per shard folder
    bar.close()
    message = "%s: %d images in %.1f s, %.1f s of it waiting on file writes (fluxgen.write_threads=%d)"
    logger.info(message, desc, len(done), time.perf_counter() - start, writer.waited_s, cfg.write_threads)
    return done, writer.waited_s


def run_generation(
    cfg: GenerationConfig,
    image_store: ImageStore,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
    prompt_cache: Path | None = None,
) -> tuple[ImageStore, list[int]]:
    """The ``fluxgen.generate_images`` node's and ``python -m fluxir.fluxgen generate``'s step: this process's
    missing images into the store's sub-folder of this configuration; returns that sub-store and the ids made now."""
    store = image_store.sub(cfg.key())
    return store, generate_into_store(
        cfg, store, process_index, num_processes, process_device, progress=progress, prompt_cache=prompt_cache
    )


# The manifest: recorded hashes, never re-read

INDEX_NAME = ".sha256-index.json"


def _read_json(path: Path, parse: Callable[[Any], Any], default: Any) -> Any:
    """``parse`` of the JSON at ``path``, or ``default`` when it is missing or damaged (then rebuilt by hashing)."""
    try:
        return parse(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        return default


def recorded_hashes(store: ImageStore, image_ids: Iterable[int]) -> Iterator[tuple[int, Path, str, int]]:
    """``(image_id, path, sha256, size)`` for each id (ascending ids are fastest); an image is read only when its
    recorded hash is stale. The index is written by the process building the manifest only."""
    for _, ids in groupby(image_ids, key=lambda i: i // SHARD_SIZE):
        ids = list(ids)
        shard = store.path_for(ids[0]).parent
        index = _read_json(shard / INDEX_NAME, lambda raw: {name: Recorded(*v) for name, v in raw.items()}, {})
        try:
            listing = {entry.name: entry for entry in os.scandir(shard)}
        except FileNotFoundError:
            listing = {}
        changed = False
        for image_id in ids:
            path = store.path_for(image_id)
            entry = listing.get(path.name)
            if entry is None:
                raise FileNotFoundError(
                    f"image {image_id} is missing: no file {path}; run the generation again (it makes only missing ids)"
                )
            stat = entry.stat()
            recorded = index.get(path.name)
            if recorded is None or not recorded.matches(stat):
                sidecar = sidecar_path(path)
                recorded = _read_json(sidecar, lambda v: Recorded(*v), None) if sidecar.name in listing else None
                if recorded is None or not recorded.matches(stat):
                    recorded = record_hash(path)  # new, replaced or touched since: hash it once more
                index[path.name] = recorded
                changed = True
            yield image_id, path, recorded.sha256, recorded.size
        if changed:
            payload = {name: [r.sha256, r.size, r.mtime_ns] for name, r in sorted(index.items())}
            fsync_dir(shard)  # the images the index lists are on the disk before the index is
            write_atomic(shard / INDEX_NAME, json.dumps(payload))


def generation_manifest(cfg: GenerationConfig, store: ImageStore) -> pd.DataFrame:
    """One row per image id of ``cfg``: image_id, seed, prompt, path, sha256, width, height, model, config_key."""
    ids = np.arange(cfg.num_images, dtype=np.int64)
    root = portable_path(store.root)  # resolved once: resolving 350,000 paths would cost more than the scan
    paths, hashes = [], []
    for _, path, sha, _ in recorded_hashes(store, range(cfg.num_images)):
        paths.append(f"{root}/{path.parent.name}/{path.name}")
        hashes.append(sha)
    return pd.DataFrame(
        {
            "image_id": ids,
            "seed": cfg.base_seed + ids,  # image_seed(base_seed, i), vectorised
            "prompt": [prompt_for(i, cfg.prompts) for i in range(cfg.num_images)],
            "path": paths,
            "sha256": hashes,
            "width": np.full(len(ids), cfg.width, dtype=np.int32),
            "height": np.full(len(ids), cfg.height, dtype=np.int32),
            "model": cfg.model,
            "config_key": cfg.key(),
        }
    )
