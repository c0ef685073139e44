"""Nodes of the training pipeline (paper Sec. 3.3). The training loop lives in ``fluxir.training``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)


def precompute_latents(pairs_manifest: pd.DataFrame, train_latent_cache: Path, train: dict[str, Any]) -> dict[str, Any]:
    """Encode the VAE latents of every pair not in ``train_latent_cache`` yet (only the VAE is loaded) on
    ``train.num_processes`` processes; returns the counts (pairs, encoded now, already cached) with the cache
    folder and the VAE's identity. More than one process runs ``accelerate launch -m fluxir.training.latents``.
    """
    from fluxir.runtime.launch import resolve_num_processes, run_image_shards
    from fluxir.training.config import TrainConfig
    from fluxir.training.latents import merge_counts
    from fluxir.training.latents import precompute_latents as fill_cache

    config = TrainConfig.from_params(train)
    config.check_epoch_budget(len(pairs_manifest))  # the VAE loads next: refuse an over-long run first
    processes = resolve_num_processes(train["num_processes"], "train.num_processes")
    if processes == 1 or not config.cache_latents:
        return fill_cache(train, pairs_manifest, cache_dir=train_latent_cache)
    return merge_counts(run_image_shards("fluxir.training.latents", "latents", processes, pairs_manifest, "--manifest"))


def train_adapter(
    pairs_manifest: pd.DataFrame,
    latent_cache: dict[str, Any],
    prompt_embeddings: Path,
    train_checkpoints: Path,
    train_latent_cache: Path,
    train: dict[str, Any],
) -> tuple[Any, pd.DataFrame]:  # (a FluxIRAdapter, ...): Any keeps torch out of this module
    """Train the FluxIR adapter on FluxGen's pairs on ``train.num_processes`` processes; returns (adapter,
    per-step history).

    ``latent_cache`` (what ``precompute_latents`` filled) orders this node after it; the empty prompt's
    embeddings come from ``prompt_embeddings``. Checkpoints go to ``train_checkpoints``; resumes from the newest
    checkpoint of the same settings there;
    logs to the active MLflow run. More than one process runs ``accelerate launch -m fluxir.training``
    (DDP; its rank 0 logs into this run).
    """
    from fluxir.models.adapter import load_adapter
    from fluxir.runtime.launch import resolve_num_processes, run_stage, scratch_dir
    from fluxir.training.config import TrainConfig, TrainFolders
    from fluxir.training.loop import train as run_training

    TrainConfig.from_params(train).check_epoch_budget(len(pairs_manifest))  # before any model or child process
    logger.info(
        "training with %d of %d pairs' latents cached in %s",
        latent_cache["encoded"] + latent_cache["cached"],
        len(pairs_manifest),
        latent_cache["cache_dir"],
    )
    processes = resolve_num_processes(train["num_processes"], "train.num_processes")
    if processes == 1:
        folders = TrainFolders(train_checkpoints, train_latent_cache)
        result = run_training(train, pairs_manifest, folders=folders, prompt_cache=prompt_embeddings)
        return result.adapter, result.history
    with scratch_dir("train") as scratch:
        pairs_manifest.to_parquet(scratch / "pairs_manifest.parquet")
        run_stage(
            "fluxir.training",
            [
                "--manifest",
                str(scratch / "pairs_manifest.parquet"),
                "--output",
                str(scratch / "adapter"),
                "--history",
                str(scratch / "history.parquet"),
                "--prompt-cache",
                str(prompt_embeddings),
            ],
            processes,
            "train",
        )
        return load_adapter(scratch / "adapter"), pd.read_parquet(scratch / "history.parquet")


def plot_loss_curves(history: pd.DataFrame) -> Any:  # a matplotlib Figure, imported when the node runs
    """Total, MSE (Eq. 8) and pixel (Eq. 9) loss per step with a moving average, and the learning rate."""
    from fluxir.training.validation import loss_curves_figure

    return loss_curves_figure(history)
