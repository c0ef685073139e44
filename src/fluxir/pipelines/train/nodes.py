"""Nodes of the training pipeline (paper Sec. 3.3). The training loop lives in ``fluxir.training``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # torch is imported only when a node runs (kedro viz stays fast)
    from matplotlib.figure import Figure

    from fluxir.models.adapter import FluxIRAdapter


def train_adapter(pairs_manifest: pd.DataFrame, train: dict[str, Any]) -> tuple[FluxIRAdapter, pd.DataFrame]:
    """Train the FluxIR adapter on FluxGen's pairs; returns (adapter, per-step history).

    Resumes from the newest checkpoint of the same settings; logs to the active MLflow run.
    """
    from fluxir.training import train as run_training

    result = run_training(train, pairs_manifest)
    return result.adapter, result.history


def plot_loss_curves(history: pd.DataFrame) -> Figure:
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
