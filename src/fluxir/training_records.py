"""What a training run leaves behind: checkpoints, MLflow records, validation restorations, weight digests.

Checkpoints hold adapter + optimizer + scheduler + RNG + step + history. Rank 0 writes ``<run_dir>/step_<8 digits>`` through a temporary folder renamed into place, so a run
killed while writing never leaves a half checkpoint under a final name; the newest ``keep`` are kept.
"""

from __future__ import annotations

import copy
import json
import random
import resource
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from fluxir.io import atomic_directory, hash_tensors, read_image
from fluxir.models.adapter import FluxIRAdapter, load_adapter, save_adapter
from fluxir.restoration.sampler import RestoreConfig, Restorer, upsample_condition
from fluxir.tracking import log_new_params, mlflow_key
from fluxir.training_data import PairTable, device_and_dtype

if TYPE_CHECKING:  # fluxir.training imports this module
    from fluxir.training import Models, TrainConfig

CHECKPOINT_PREFIX = "step_"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (final names only; temporary folders are ignored), oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit():
            found.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, adapter: FluxIRAdapter, optimizer: Any, scheduler: Any,
                    history: list[dict[str, Any]], extra: dict[str, Any], keep: int) -> Path:
    """Write adapter + optimizer + scheduler + RNG + step + history atomically; keep the newest ``keep``."""
    final = checkpoint_path(run_dir, step)
    # The same step written again: the complete old one stays until the new one is in place.
    with atomic_directory(final) as tmp_name:
        tmp = Path(tmp_name)
        save_adapter(adapter, tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra, "history": history}, indent=1))
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, adapter: FluxIRAdapter, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint into the given objects; returns its trainer state (step, history, ...)."""
    saved = load_adapter(path / "adapter", device=next(adapter.parameters()).device, dtype=torch.float32)
    adapter.load_state_dict(saved.state_dict())
    device = next(adapter.parameters()).device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())


def weights_digest(adapter: nn.Module) -> str:
    """sha256 of the adapter's weights (to compare processes)."""
    return hash_tensors(adapter.state_dict()).hexdigest()



def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory of this process: CUDA max allocated on GPU, peak RSS on CPU (MiB)."""
    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class MlflowLogger:
    """Logs to the active MLflow run (kedro-mlflow's, or the CLI's) on the main process; no-op otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.run = None
        if enabled:
            self.run = mlflow.active_run()

    def params(self, params: dict[str, Any]) -> None:
        if self.run is None:
            return
        log_new_params(params)  # kedro-mlflow logged params:train already

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            mlflow.log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step=step)

    def image(self, image: np.ndarray, name: str) -> None:
        if self.run is not None:
            mlflow.log_image(image, artifact_file=name)


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


def validation_grid(models: Models, adapter: FluxIRAdapter, pairs: PairTable, indices: list[int],
                    cfg: TrainConfig) -> np.ndarray:
    """uint8 (rows*H, 3*W, 3) grid: one row per validation pair, [LQ upsampled | restored | HQ]."""
    device, dtype = device_and_dtype(models.flux)
    restore_cfg = RestoreConfig(steps=cfg.validation_steps, seed=cfg.seed, scale=pairs.lq_scale,
                                dtype=str(dtype).removeprefix("torch."), device=str(device))
    # The Restorer casts and freezes the adapter it gets: hand it a copy, never the one being trained.
    restorer = Restorer(models.flux, models.vae, models.scheduler_config, models.prompt_embeds, models.pooled_embeds,
                        copy.deepcopy(adapter), restore_cfg)
    rows = []
    for i in indices:
        row = pairs.rows.iloc[i]
        hq, lq = read_image(row.hq_path), read_image(row.lq_path)  # (H, W, 3), (H/4, W/4, 3)
        rows.append(np.concatenate([upsample_condition(lq, *hq.shape[:2]), restorer.restore(lq), hq], axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


# ----------------------------------------------------------------------------------------------------
# Training
