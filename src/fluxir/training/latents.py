"""VAE latents of every training pair, encoded once before training with only the VAE loaded: sharded over
processes, resumable (``python -m fluxir.training latents``; the train pipeline's first node).

Training's first epoch would otherwise encode on the critical path (two PNG decodes, two sha256s, a bicubic
upsample, a VAE encode per pair, on every rank); with every entry cached, training opens no image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.models.loading import load_vae, resolve_device
from fluxir.training.config import TrainConfig
from fluxir.training.data import LatentCache, PairTable, encode_missing_latents, vae_identity

logger = logging.getLogger(__name__)
NO_CACHE = {"pairs": 0, "encoded": 0, "cached": 0, "cache_dir": None, "vae_identity": None}  # cache_latents: false


def precompute_latents(
    params: dict[str, Any] | TrainConfig,
    manifest: pd.DataFrame,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
    *,
    cache_dir: str | Path,
) -> dict[str, Any]:
    """Encode this process's pairs of ``manifest`` that are not in ``cache_dir`` yet; returns the counts."""
    cfg = params if isinstance(params, TrainConfig) else TrainConfig.from_params(params)
    if not cfg.cache_latents:
        logger.info("train.cache_latents is false: no latent cache to fill (training encodes every step)")
        return dict(NO_CACHE)
    pairs = PairTable.from_manifest(manifest, cfg.lq_scale)
    vae = load_vae(cfg.model, cfg.dtype, resolve_device(cfg.device, process_device)).requires_grad_(False).eval()
    cache = LatentCache(cache_dir, vae_identity(vae))
    counts = encode_missing_latents(vae, cache, pairs, process_index, num_processes, progress)
    logger.info(
        "latents[%d/%d]: %d pairs, %d encoded now, %d already cached in %s",
        process_index,
        num_processes,
        counts["pairs"],
        counts["encoded"],
        counts["cached"],
        cache.root,
    )
    return {**counts, "cache_dir": str(cache.root), "vae_identity": cache.vae_id}


def fill_and_count(cfg: TrainConfig, manifest: pd.DataFrame, cache_dir: str | Path, fill: Callable[[], object]) -> dict:
    """Run ``fill`` (``precompute_latents`` on one or several processes) and count on disk what it did; the VAE
    is loaded on the CPU for its identity (part of every cache key) only."""
    if not cfg.cache_latents:
        fill()
        return dict(NO_CACHE)
    pairs = PairTable.from_manifest(manifest, cfg.lq_scale)
    cache = LatentCache(cache_dir, vae_identity(load_vae(cfg.model, cfg.dtype, "cpu")))

    def cached() -> int:
        return sum(cache.path(cache.key(row, pairs.lq_scale)).is_file() for row in pairs.rows.itertuples())

    before = cached()
    fill()
    counts = {"pairs": len(pairs), "encoded": cached() - before, "cached": before}
    return {**counts, "cache_dir": str(cache.root), "vae_identity": cache.vae_id}
