"""Nodes of the training pipeline (paper Sec. 3.3). The training loop lives in ``fluxir.training``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # torch is imported only when a node runs (kedro viz stays fast)
    from matplotlib.figure import Figure

    from fluxir.models.adapter import FluxIRAdapter


def train_adapter(pairs_manifest: pd.DataFrame, train: dict[str, Any]) -> tuple[FluxIRAdapter, pd.DataFrame]:
    """Train the FluxIR adapter on FluxGen's pairs on ``train.num_processes`` processes; returns (adapter,
    per-step history).

    Resumes from the newest checkpoint of the same settings; logs to the active MLflow run. More than one
    process runs ``accelerate launch -m fluxir.training`` (DDP; its rank 0 logs into this run).
    """
    from fluxir.launch import resolve_num_processes, run_stage, scratch_dir
    from fluxir.models.adapter import load_adapter
    from fluxir.training.loop import train as run_training

    processes = resolve_num_processes(train["num_processes"], "train.num_processes")
    if processes == 1:
        result = run_training(train, pairs_manifest)
        return result.adapter, result.history
    with scratch_dir("train") as scratch:
        pairs_manifest.to_parquet(scratch / "pairs_manifest.parquet")
        run_stage("fluxir.training", ["--manifest", str(scratch / "pairs_manifest.parquet"), "--output",
                                      str(scratch / "adapter"), "--history", str(scratch / "history.parquet")],
                  processes, "train")
        return load_adapter(scratch / "adapter"), pd.read_parquet(scratch / "history.parquet")


def plot_loss_curves(history: pd.DataFrame) -> Figure:
    """Total, MSE (Eq. 8) and pixel (Eq. 9) loss per step with a moving average, and the learning rate."""
    from fluxir.training.validation import loss_curves_figure

    return loss_curves_figure(history)
