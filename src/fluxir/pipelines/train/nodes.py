"""Nodes of the training pipeline (paper Sec. 3.3). The training loop lives in ``fluxir.training``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.runtime.launch import resolve_num_processes, run_stage, scratch_dir

logger = logging.getLogger(__name__)


def precompute_latents(pairs_manifest: pd.DataFrame, train_latent_cache: Path, train: dict[str, Any]) -> dict[str, Any]:
    """Encode the VAE latents of every pair not cached yet (only the VAE is loaded); returns the counts on disk
    (pairs, encoded now, already cached) with the cache folder and the VAE's identity."""
    from fluxir.training.config import TrainConfig
    from fluxir.training.latents import fill_and_count
    from fluxir.training.latents import precompute_latents as fill_cache

    config = TrainConfig.from_params(train)
    config.check_epoch_budget(len(pairs_manifest))  # the VAE loads next: refuse an over-long run first
    processes = resolve_num_processes(train["num_processes"], "train.num_processes")
    return fill_and_count(
        config,
        pairs_manifest,
        train_latent_cache,
        lambda: run_stage(
            ["fluxir.training", "latents"],
            processes if config.cache_latents else 1,
            "latents",
            lambda: fill_cache(config, pairs_manifest, cache_dir=train_latent_cache),
            tables={"--manifest": pairs_manifest},
        ),
    )


def train_adapter(
    pairs_manifest: pd.DataFrame,
    latent_cache: dict[str, Any],
    prompt_embeddings: Path,
    train_checkpoints: Path,
    train_latent_cache: Path,
    train: dict[str, Any],
) -> tuple[Any, pd.DataFrame]:  # (a FluxIRAdapter, ...): Any keeps torch out of this module
    """Train the FluxIR adapter on FluxGen's pairs; returns (adapter, per-step history).

    ``latent_cache`` orders this node after ``precompute_latents``. Resumes from the newest checkpoint of the same
    settings in ``train_checkpoints``. With several processes (DDP), rank 0 logs into this MLflow run and writes the
    adapter and the history where the node reads them.
    """
    from fluxir.models.adapter import load_adapter
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
    folders = TrainFolders(train_checkpoints, train_latent_cache)
    with scratch_dir("train") as scratch:  # several processes: rank 0 saves adapter and history here
        adapter, history = scratch / "adapter", scratch / "history.parquet"
        result = run_stage(
            ["fluxir.training"],
            processes,
            "train",
            lambda: run_training(train, pairs_manifest, folders=folders, prompt_cache=prompt_embeddings),
            ["--output", str(adapter), "--history", str(history), "--prompt-cache", str(prompt_embeddings)],
            tables={"--manifest": pairs_manifest},
        )
        if result is not None:
            return result.adapter, result.history
        return load_adapter(adapter), pd.read_parquet(history)


def plot_loss_curves(history: pd.DataFrame) -> Any:  # a matplotlib Figure, imported when the node runs
    """Total, MSE (Eq. 8) and pixel (Eq. 9) loss per step with a moving average, and the learning rate."""
    from fluxir.training.loop import loss_curves_figure

    return loss_curves_figure(history)
