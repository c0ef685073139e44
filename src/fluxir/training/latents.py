"""VAE latents of every training pair, encoded once before training: sharded over processes, resumable.

Training's first epoch would otherwise encode on the critical path (per pair: two PNG decodes, two
sha256s, a bicubic upsample, a VAE encode and a cache write on every rank). This step fills the same
``LatentCache`` training reads (``fluxir.training.data``: the VAE's Gaussian parameters keyed by the
pair's sha256s, size, ``lq_scale`` and the VAE's identity) with only the VAE loaded. Process ``r`` of
``w`` encodes the pairs ``i % w == r`` (in image_id order); each entry is written atomically, so a killed
run keeps what it finished and the rerun encodes only the rest. With every entry cached, training opens
no image (the sizes come from ``pairs_manifest``).

    python -m fluxir.training latents --env base
    accelerate launch --multi_gpu --num_processes 8 -m fluxir.training latents --env base

``kedro run --pipeline=train`` runs the same step as its first node, ``precompute_latents`` (on
``train.num_processes`` processes: more than one launches that command as a child job), then counts the
cache entries on disk (``fill_and_count``).
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
    """Encode this process's pairs of ``manifest`` that are not in ``cache_dir`` (the catalog's
    ``train_latent_cache``) yet.

    Returns what it did: pairs of this process, encoded now, found cached, the cache folder and VAE identity.
    """
    cfg = params if isinstance(params, TrainConfig) else TrainConfig.from_params(params)
    if not cfg.cache_latents:
        logger.info("train.cache_latents is false: no latent cache to fill (training encodes every step)")
        return {"pairs": 0, "encoded": 0, "cached": 0, "cache_dir": None, "vae_identity": None}
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
    """Run ``fill`` (``precompute_latents`` here, or the same on several processes) and count on disk what it did:
    pairs, encoded now, already cached, the cache folder and the VAE identity. The VAE is loaded on the CPU
    for its identity (part of every cache key) only; ``fill`` loads its own."""
    if not cfg.cache_latents:
        fill()
        return {"pairs": 0, "encoded": 0, "cached": 0, "cache_dir": None, "vae_identity": None}
    pairs = PairTable.from_manifest(manifest, cfg.lq_scale)
    cache = LatentCache(cache_dir, vae_identity(load_vae(cfg.model, cfg.dtype, "cpu")))

    def cached() -> int:
        return sum(cache.path(cache.key(row, pairs.lq_scale)).is_file() for row in pairs.rows.itertuples())

    before = cached()
    fill()
    encoded = cached() - before
    return {
        "pairs": len(pairs),
        "encoded": encoded,
        "cached": before,
        "cache_dir": str(cache.root),
        "vae_identity": cache.vae_id,
    }
