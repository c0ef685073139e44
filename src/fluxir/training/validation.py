"""What a training run shows: restorations of held-out pairs (as the restore pipeline makes them) and loss curves."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pandas as pd

from fluxir.io.images import read_image
from fluxir.models.adapter import FluxIRAdapter
from fluxir.models.condition import lq_condition
from fluxir.restoration.sampler import RestoreConfig, Restorer
from fluxir.training.config import TrainConfig
from fluxir.training.data import PairTable, device_and_dtype
from fluxir.training.models import Models


def loss_curves_figure(history: pd.DataFrame) -> Any:
    """Total, MSE (Eq. 8) and pixel (Eq. 9) loss per step with a moving average, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    window = max(1, len(history) // 20)
    for column, color in (("loss", "#4c72b0"), ("loss_mse", "#55a868"), ("loss_pixel", "#c44e52")):
        ax.plot(history["step"], history[column], color=color, alpha=0.25, lw=0.8)
        ax.plot(history["step"], history[column].rolling(window, min_periods=1).mean(), color=color, label=column)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training loss (moving mean over {window} steps)")
    ax.legend(fontsize=8)
    ax_lr.plot(history["step"], history["lr"], color="#8172b2")
    ax_lr.set_xlabel("step")
    ax_lr.set_title("learning rate")
    fig.tight_layout()
    return fig


# Validation restorations: exactly what `kedro run --pipeline=restore` does (fluxir.restoration.sampler.Restorer)


def validation_grid(
    models: Models, adapter: FluxIRAdapter, pairs: PairTable, indices: list[int], cfg: TrainConfig
) -> np.ndarray:
    """uint8 (rows*H, 3*W, 3) grid: one row per validation pair, [LQ upsampled | restored | HQ]."""
    device, dtype = device_and_dtype(models.flux)
    # The training's own steps, seed, scale, dtype and device; the rest are the sampler settings this grid has
    # always shown (the run reads no restore.* parameters): training crops restored whole from pure noise at
    # the trained control strength, with the wavelet colour fix.
    restore_cfg = RestoreConfig(
        steps=cfg.validation_steps,
        schedule="flux_shift",
        scale=pairs.lq_scale,
        target_size=None,
        tile_size=None,
        tile_overlap=0,
        vae_tile_size=None,
        vae_tile_overlap=0,
        color_fix="wavelet",
        seed=cfg.seed,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        batch_size=1,
        max_sequence_length=None,
        control_scale=1.0,
        plain_flux_guidance=adapter.config.guidance,  # unused: the grid restores with the adapter and its guidance
        start_t=1.0,
        max_output_megapixels=math.inf,  # the grid's crops are training crops: no limit
        offload="none",
        quantize="none",
        compile=False,
    )
    # The Restorer casts and freezes the adapter it gets: hand it a copy, never the one being trained.
    restorer = Restorer(
        models.flux,
        models.vae,
        models.scheduler_config,
        models.prompt_embeds,
        models.pooled_embeds,
        copy.deepcopy(adapter),
        restore_cfg,
    )
    rows = []
    for i in indices:
        row = pairs.rows.iloc[i]
        hq, lq = read_image(row.hq_path), read_image(row.lq_path)  # (H, W, 3), (H/4, W/4, 3)
        rows.append(np.concatenate([lq_condition(lq, *hq.shape[:2]), restorer.restore(lq), hq], axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
