"""FluxGen step 1: unconditional image generation (paper Sec. 3.1, Fig. 2).

An empty prompt and a fresh Gaussian noise per image go into Flux; the decoded image is the training
image. Image ``i`` always uses ``seed = base_seed + i``, so any image can be regenerated from its id.

Why it is written this way:
- The prompt (empty, or a short domain list) is encoded once; the text encoders are then dropped so
  that 350,000 images never keep a 4.7B-parameter T5 on the GPU (Flux; SDXL, PixArt-Sigma and Sana
  likewise, with the negative embeddings their classifier-free guidance needs).
- Each image gets its own ``torch.Generator``: a batch of 4 gives the same noise per image as
  batches of 1.
- Files are written atomically into an ``ImageStore`` keyed by a hash of everything that changes
  pixels, so reruns skip finished ids, and other settings never overwrite earlier images.
- PNG encoding (~0.1-0.3 s per 1024x768 image on one core), hashing and sidecars run on
  ``fluxgen.write_threads`` threads (``fluxir.io.store.WriterPool``) while the next images denoise: the
  accelerator never waits on files. A killed run loses only the images in flight (every file under
  its final name is complete) and a rerun makes exactly those again.
- Under ``accelerate launch`` process ``r`` of ``w`` takes ids ``r, r+w, r+2w, ...``:
  ``accelerate launch -m fluxir.fluxgen generate --env base --params fluxgen.num_images=350000``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fluxir.io.hashing import hash_json
from fluxir.io.provenance import generated_fields, model_revision, png_text
from fluxir.io.store import ImageStore, WriterPool
from fluxir.models.flux import compile_blocks
from fluxir.models.loading import load_pipeline, resolve_device
from fluxir.models.prompts import PromptEncoder, load_with_empty_prompt
from fluxir.parameters.rules import Config, Rule
from fluxir.runtime.progress import progress as progress_bar

logger = logging.getLogger(__name__)

# Fields that change the pixels of image i. batch_size/device do not (per-image generators).
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


# Groups under ``fluxgen`` read by other stages (``fluxgen.content_filter``: fluxir.fluxgen.content_filter).
SUBSTAGE_KEYS = ("content_filter",)


def _nearest_multiple_of_16(value: Any) -> str:
    return f"; nearest valid: {max(16, round(value / 16) * 16) if isinstance(value, (int, float)) else 16}"


GENERATION_RULES = (
    Rule("num_images", "positive_int"),
    *(
        Rule(
            side,
            "multiple_of",
            16,
            must="a positive multiple of 16 (VAE /8 and 2x2 packing)",
            note=_nearest_multiple_of_16,
        )
        for side in ("height", "width")
    ),
    Rule("steps", "positive_int"),
    Rule("batch_size", "positive_int"),
    Rule("write_threads", "nonneg_int", note=" (0: write each image before the next denoising starts)"),
    Rule("dtype", "choice", ("float32", "bfloat16", "float16"), must="float32, bfloat16 or float16"),
)


@dataclass
class GenerationConfig(Config):
    """Parameters ``fluxgen.*``: their values (defaults included) live in conf/base/parameters_fluxgen.yml only."""

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

    PREFIX, RULES, NOT_FIELDS = "fluxgen.", GENERATION_RULES, SUBSTAGE_KEYS

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "prompts": list(params.get("prompts") or [])}

    def key(self) -> str:
        """Short hash of the settings that determine pixels: the store sub-folder of this configuration."""
        return hash_json({k: asdict(self)[k] for k in _PIXEL_FIELDS})


def image_seed(base_seed: int, image_id: int) -> int:
    """The noise seed of image ``image_id``."""
    return base_seed + image_id


def prompt_for(image_id: int, prompts: list[str]) -> str:
    """The prompt of image ``image_id``: the empty prompt, or the domain list cycled."""
    return prompts[image_id % len(prompts)] if prompts else ""


def ids_for_process(num_images: int, process_index: int, num_processes: int) -> list[int]:
    """The ids one of ``num_processes`` workers generates (interleaved, so shares differ by at most one)."""
    return list(range(process_index, num_images, num_processes))


def generate_into_store(
    cfg: GenerationConfig,
    store: ImageStore,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
    prompt_cache: str | Path | None = None,
) -> list[int]:
    """Generate this process's missing images into ``store``; returns the ids it generated now.

    Returns only once every image and its sidecar is on disk; a failed write raises here. With the empty
    prompt, its embeddings come from ``prompt_cache`` (the catalog's ``prompt_embeddings``) when there:
    the text encoders are then never loaded (``fluxir.models.prompts``).
    """
    todo = [i for i in ids_for_process(cfg.num_images, process_index, num_processes) if not store.exists(i)]
    logger.info(
        "process %d/%d: %d of its images to generate into %s", process_index, num_processes, len(todo), store.root
    )
    if not todo:
        return []
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
    call = _call_parameters(pipe)
    for lo in range(0, len(ids), cfg.batch_size):
        batch = ids[lo : lo + cfg.batch_size]
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
    """Write ``images`` into ``store`` (each with its recorded sha256 and its provenance text chunks:
    ``fluxir.io.provenance``) on ``cfg.write_threads`` threads.

    The next image is denoised while earlier ones are encoded. Returns once all are written: (their ids,
    seconds the producer was held up by the writes).
    """
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
    elapsed = time.perf_counter() - start
    logger.info(
        "%s: %d images in %.1f s, %.1f s of it waiting on file writes (fluxgen.write_threads=%d)",
        desc,
        len(done),
        elapsed,
        writer.waited_s,
        cfg.write_threads,
    )
    return done, writer.waited_s


def _call_parameters(pipe: Any) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)


def run_generation(
    cfg: GenerationConfig,
    image_store: ImageStore,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
    prompt_cache: Path | None = None,
) -> tuple[ImageStore, list[int]]:
    """FluxGen's generation step, as the ``fluxgen.generate_images`` node and ``python -m fluxir.fluxgen generate``
    run it: this process's missing images into the store's sub-folder of this configuration.

    Returns that sub-store and the ids generated now.
    """
    store = image_store.sub(cfg.key())
    return store, generate_into_store(
        cfg, store, process_index, num_processes, process_device, progress=progress, prompt_cache=prompt_cache
    )
