"""The FluxIR training loop (paper Sec. 3.3, 4.1) under ``accelerate``: start or resume a run, optimizer steps,
bookkeeping (MLflow, validation restorations, checkpoints).

Sample j of step s draws t, z_1, the VAE samples and the decoder crop from its own generator seeded by (seed, s, j),
so any split of the global batch (1 GPU accumulating 64, 4 x 16, 8 x 8) trains on the same samples with the same
randomness, and a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn

from fluxir.io.images import read_image
from fluxir.io.store import LOCK_NAME, exclusive_lock
from fluxir.models.adapter import FluxIRAdapter, count_parameters
from fluxir.models.controlled_flux import lq_condition
from fluxir.models.flux import compile_blocks
from fluxir.models.loading import accelerate_cpu
from fluxir.parameters.config import flatten_dict
from fluxir.restoration.sampler import RestoreConfig, Restorer
from fluxir.runtime.progress import progress as progress_bar
from fluxir.runtime.tracking import log_new_params, mlflow_key
from fluxir.training.checkpoints import list_checkpoints, load_checkpoint, newest_complete_checkpoint, save_checkpoint
from fluxir.training.config import TrainConfig, TrainFolders, accumulation_steps
from fluxir.training.data import DataOrder, LatentCache, PairTable, device_and_dtype, pair_gaussians, vae_identity
from fluxir.training.loss import (
    ControlledFlux,
    Models,
    build_adapter,
    flow_matching_loss,
    load_models,
    make_micro_batch,
    sample_seed,
)

logger = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory of this process: CUDA max allocated on GPU, peak RSS on CPU (MiB)."""
    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class TrainResult:
    adapter: FluxIRAdapter  # the trained FluxIRAdapter (unwrapped, float32)
    history: pd.DataFrame  # one row per optimizer step: step, loss, loss_mse, loss_pixel, lr, grad_norm, ...
    run_dir: Path  # checkpoint folder of this run (train_checkpoints/<run key>)
    resumed_from: int  # step of the checkpoint it resumed from (0: fresh start)


@dataclass
class TrainingRun:
    """Everything one process holds during training."""

    cfg: TrainConfig
    accelerator: Accelerator
    accumulation: int  # micro-steps per optimizer step: global_batch = batch_size x processes x accumulation
    pairs: PairTable
    train_idx: list[int]
    val_idx: list[int]
    order: DataOrder  # step -> the global batch's pair indices
    models: Models
    cache: LatentCache
    model: nn.Module  # ControlledFlux, prepared by accelerate (DDP on several processes)
    optimizer: Any
    scheduler: Any
    run_dir: Path
    run_key: str
    start: int  # step resumed from (0: fresh)
    history: list[dict[str, Any]]
    mlflow_run: Any  # the active MLflow run (kedro-mlflow's or the CLI's) on the main process, else None

    @property
    def adapter(self) -> FluxIRAdapter:
        return self.accelerator.unwrap_model(self.model).adapter


def configure_cuda_allocator() -> None:
    """``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` unless set: the aspect buckets' activation shapes would
    otherwise fragment the caching allocator. Read when CUDA first allocates: call it before that."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    if torch.cuda.is_initialized():
        logger.warning(
            "CUDA is already initialised: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True cannot take "
            "effect now; set it in the environment before starting the process"
        )
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def ddp_kwargs(accumulation: int) -> DistributedDataParallelKwargs:
    """Gradients as views into the all-reduce buckets (no second copy); a static graph when nothing runs no_sync."""
    return DistributedDataParallelKwargs(gradient_as_bucket_view=True, static_graph=accumulation == 1)


def make_optimizer(params: Any, cfg: TrainConfig, device: torch.device | str) -> torch.optim.AdamW:
    """AdamW of Sec. 4.1; fused on CUDA (one kernel per step for every tensor)."""
    return torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        fused=torch.device(device).type == "cuda",
    )


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0


def _clear_run_dir(run_dir: Path, resume: bool) -> None:
    """Drop leftovers of a run killed while writing a checkpoint; with resume off, every old checkpoint."""
    for leftover in run_dir.glob(".tmp-*") if run_dir.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    if not resume and list_checkpoints(run_dir):
        logger.warning("train.resume is false: deleting the checkpoints in %s and starting over", run_dir)
        for _, path in list_checkpoints(run_dir):
            shutil.rmtree(path)


def start_run(
    cfg: TrainConfig,
    manifest: pd.DataFrame,
    prompt_cache: str | Path | None,
    lock: contextlib.ExitStack,
    folders: TrainFolders,
) -> TrainingRun:
    """Data, models, optimiser and (if a checkpoint of the same run exists) its state, on this process.

    The main process takes the run folder's lock into ``lock``: held until that stack closes."""
    configure_cuda_allocator()
    processes = PartialState(cpu=accelerate_cpu(cfg.device)).num_processes
    accumulation = accumulation_steps(cfg.global_batch, cfg.batch_size, processes)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, cpu=accelerate_cpu(cfg.device), kwargs_handlers=[ddp_kwargs(accumulation)]
    )

    # 1. Data: pairs, buckets, held-out validation pairs, the (seed, step) -> global batch order.
    pairs = PairTable.from_manifest(manifest, cfg.lq_scale)
    train_idx, val_idx = pairs.split(cfg.num_validation_pairs)
    order = DataOrder(pairs.buckets(train_idx), cfg.global_batch, cfg.seed)

    # 2. Models: frozen Flux + VAE, the empty prompt, the trainable adapter, AdamW, constant lr + warm-up.
    models = load_models(cfg, accelerator.device, prompt_cache)
    cache = LatentCache(folders.latent_cache if cfg.cache_latents else None, vae_identity(models.vae))
    adapter = build_adapter(cfg, models).to(accelerator.device)
    if cfg.compile:
        compile_blocks(models.flux, adapter)
    optimizer = make_optimizer(adapter.parameters(), cfg, accelerator.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.lr_warmup_steps))

    # 3. Resume from the newest checkpoint of this run (same settings, same data), if any.
    run_key = cfg.run_key(pairs.data_key())
    run_dir = Path(folders.checkpoints) / run_key
    if accelerator.is_main_process:
        # One writer per run folder: a second run of the same settings refuses (the holder's pid in the message).
        lock.enter_context(exclusive_lock(run_dir / LOCK_NAME, f"the checkpoint folder {run_dir}", wait=False))
        _clear_run_dir(run_dir, cfg.resume)
    accelerator.wait_for_everyone()
    newest = newest_complete_checkpoint(run_dir, move_damaged=accelerator.is_main_process) if cfg.resume else None
    start, history = 0, []
    if newest is not None:
        state = load_checkpoint(newest[1], adapter, optimizer, scheduler)
        start, history = state["step"], state["history"][: state["step"]]
        logger.info("resuming from %s (step %d)", newest[1], start)
    # The scheduler is stepped by hand.
    model, optimizer = accelerator.prepare(ControlledFlux(models.flux, adapter), optimizer)
    return TrainingRun(
        cfg=cfg,
        accelerator=accelerator,
        accumulation=accumulation,
        pairs=pairs,
        train_idx=train_idx,
        val_idx=val_idx,
        order=order,
        models=models,
        cache=cache,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        run_dir=run_dir,
        run_key=run_key,
        start=start,
        history=history,
        mlflow_run=mlflow.active_run() if accelerator.is_main_process else None,
    )


def log_run_params(run: TrainingRun) -> None:
    cfg, world = run.cfg, run.accelerator.num_processes
    sizes = {f"{w}x{h}": len(v) for (w, h), v in sorted(run.order.buckets.items())}
    derived = {
        "num_processes": world,
        "gradient_accumulation_steps": run.accumulation,
        "num_train_pairs": len(run.train_idx),
        "num_validation_pairs": len(run.val_idx),
        "buckets": json.dumps(sizes),
        "adapter_parameters": count_parameters(run.adapter),
        "adapter_guidance": run.adapter.config.guidance,
        "run_key": run.run_key,
        "resumed_from_step": run.start,
    }
    if run.mlflow_run is not None:  # kedro-mlflow logged params:train already
        log_new_params(flatten_dict({"train": dataclasses.asdict(cfg), "train_run": derived}))
    if run.accelerator.is_main_process:
        logger.info(
            "training %s: %d pairs in buckets %s, global batch %d = %d per process x %d process(es) x %d "
            "accumulation, steps %d -> %d, checkpoints in %s",
            cfg.model,
            len(run.train_idx),
            sizes,
            cfg.global_batch,
            cfg.batch_size,
            world,
            run.accumulation,
            run.start,
            cfg.max_steps,
            run.run_dir,
        )
        short = {size: n for size, n in sizes.items() if n < cfg.global_batch}
        if short:  # a batch is drawn from one bucket: a smaller bucket repeats its pairs inside every batch
            logger.warning(
                "train.global_batch=%d exceeds the training pairs of bucket(s) %s (of %d training pairs): "
                "every optimizer step repeats pairs within its batch; generate more images "
                "(fluxgen.num_images) or lower train.global_batch",
                cfg.global_batch,
                short,
                len(run.train_idx),
            )


def optimizer_step(run: TrainingRun, step: int) -> dict[str, Any]:
    """Optimizer step ``step`` (1-based) over every micro-step and process; returns the history row (means).

    Sample j of the global batch is trained by process ``(j // batch_size) % processes`` in micro-step
    ``j // (batch_size x processes)`` with randomness from ``sample_seed(seed, step, j)``.
    """
    cfg, acc, models = run.cfg, run.accelerator, run.models
    t0 = time.perf_counter()
    epoch, batch_ids = run.order.batch(step - 1)
    parts, ts = [], []
    for k in range(run.accumulation):
        first = (k * acc.num_processes + acc.process_index) * cfg.batch_size
        mine = list(range(first, first + cfg.batch_size))  # positions in the global batch
        gaussians = [pair_gaussians(models.vae, run.cache, run.pairs, batch_ids[j]) for j in mine]
        batch = make_micro_batch(cfg, models.vae, gaussians, [sample_seed(cfg.seed, step - 1, j) for j in mine])
        sync = k == run.accumulation - 1
        with contextlib.nullcontext() if sync else acc.no_sync(run.model), acc.autocast():
            loss, mse, pixel = flow_matching_loss(
                run.model, models.flux, models.vae, batch, models.prompt_embeds, models.pooled_embeds, cfg
            )
            acc.backward(loss / run.accumulation)
        parts.append(torch.stack([loss.detach().float(), mse.float(), pixel.float()]))
        ts.append(batch.t.detach().float())
    parts = acc.gather(torch.stack(parts)[None])  # (processes, accumulation, 3): every process sees all
    trainable = [p for p in run.adapter.parameters() if p.requires_grad]
    norm = acc.clip_grad_norm_(trainable, cfg.max_grad_norm or float("inf"))  # None under DeepSpeed
    loss_v, mse_v, pixel_v = (float(x) for x in parts.mean(dim=(0, 1)))
    grad_norm = float("nan") if norm is None else float(norm)
    if not torch.isfinite(parts).all() or (norm is not None and not math.isfinite(grad_norm)):
        raise _non_finite(run, step, f"loss={loss_v}, mse={mse_v}, pixel={pixel_v}, grad_norm={grad_norm}")
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {
        "step": step,
        "loss": loss_v,
        "loss_mse": mse_v,
        "loss_pixel": pixel_v,
        "lr": run.optimizer.param_groups[0]["lr"],
        "grad_norm": grad_norm,
        "epoch": epoch,
        "t_mean": float(torch.cat(ts).mean()),
        "samples_per_s": cfg.global_batch / (time.perf_counter() - t0),
    }


def _non_finite(run: TrainingRun, step: int, values: str) -> FloatingPointError:
    good = list_checkpoints(run.run_dir)
    where = (
        f"the last good checkpoint is {good[-1][1]} (step {good[-1][0]})" if good else "no checkpoint was written yet"
    )
    return FloatingPointError(
        f"non-finite training loss at step {step} ({values}); stopped before the optimizer step, {where}. Lower "
        f"train.learning_rate (now {run.cfg.learning_rate}) or set train.max_grad_norm, then rerun to resume from "
        "that checkpoint."
    )


def training_record(run: TrainingRun, step: int) -> dict[str, Any]:
    """What the adapter carries about its training (saved with it; evaluation reports show it)."""
    settings = ("global_batch", "learning_rate", "timestep_sampler", "pixel_loss_weight", "pixel_loss_form")
    return {
        "steps": step,
        **{name: getattr(run.cfg, name) for name in settings},
        "run_key": run.run_key,
        "num_train_pairs": len(run.train_idx),
        # the MLflow run this training logged to (rank 0's): evaluate and restore runs name it
        **({"mlflow_run_id": run.mlflow_run.info.run_id} if run.mlflow_run is not None else {}),
    }


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


def validation_grid(
    models: Models, adapter: FluxIRAdapter, pairs: PairTable, indices: list[int], cfg: TrainConfig
) -> np.ndarray:
    """uint8 (rows*H, 3*W, 3) grid: one row per validation pair, [LQ upsampled | restored | HQ]."""
    device, dtype = device_and_dtype(models.flux)
    # As the restore pipeline restores (the run reads no restore.* parameters): training crops restored whole
    # from pure noise at the trained control strength, with the wavelet colour fix.
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
    frozen = (models.flux, models.vae, models.scheduler_config, models.prompt_embeds, models.pooled_embeds)
    restorer = Restorer(*frozen, copy.deepcopy(adapter), restore_cfg)
    rows = []
    for i in indices:
        row = pairs.rows.iloc[i]
        hq, lq = read_image(row.hq_path), read_image(row.lq_path)  # (H, W, 3), (H/4, W/4, 3)
        rows.append(np.concatenate([lq_condition(lq, *hq.shape[:2]), restorer.restore(lq), hq], axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def bookkeeping(run: TrainingRun, step: int, window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MLflow metrics (means over ``window``), validation grid, checkpoint: each on its schedule and on the last
    step. Returns the window still to log."""
    cfg, main, last = run.cfg, run.accelerator.is_main_process, step == run.cfg.max_steps
    if main and (step % cfg.log_every == 0 or last):
        keys = ("loss", "loss_mse", "loss_pixel", "grad_norm", "samples_per_s", "t_mean")
        mean = {k: float(np.mean([r[k] for r in window])) for k in keys}
        metrics = {
            **{f"train/{k}": v for k, v in mean.items()},
            "train/lr": window[-1]["lr"],
            "train/peak_memory_mb": peak_memory_mb(run.accelerator.device),
            "train/epoch": float(window[-1]["epoch"]),
        }
        if run.mlflow_run is not None:
            mlflow.log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step=step)
        window = []
    if run.mlflow_run is not None and run.val_idx and (step % cfg.validate_every == 0 or last):
        with run.accelerator.autocast():
            grid = validation_grid(run.models, run.adapter, run.pairs, run.val_idx, cfg)
        mlflow.log_image(grid, artifact_file=f"validation/step_{step:08d}.png")
    run.adapter.training_record = training_record(run, step)
    if main and (step % cfg.checkpoint_every == 0 or last):
        extra = {
            "run_key": run.run_key,
            "seed": cfg.seed,
            "num_processes": run.accelerator.num_processes,
            "written_by_rank": run.accelerator.process_index,
            "max_steps": cfg.max_steps,
        }
        save_checkpoint(
            run.run_dir, step, run.adapter, run.optimizer, run.scheduler, run.history, extra, cfg.keep_checkpoints
        )
    return window


def train(
    params: dict[str, Any] | TrainConfig,
    manifest: pd.DataFrame,
    *,
    folders: TrainFolders,
    progress: bool = True,
    prompt_cache: str | Path | None = None,
) -> TrainResult:
    """Train a FluxIR adapter on the pairs of ``manifest``; the same ``TrainResult`` on every process.

    ``prompt_cache``: the catalog's ``prompt_embeddings`` (with the empty prompt there, no text encoder loads)."""
    cfg = params if isinstance(params, TrainConfig) else TrainConfig.from_params(params)
    cfg.check_epoch_budget(len(manifest))  # before any model loads
    with contextlib.ExitStack() as lock:
        return _train(start_run(cfg, manifest, prompt_cache, lock, folders), progress)


def _train(run: TrainingRun, progress: bool) -> TrainResult:
    cfg = run.cfg
    log_run_params(run)
    main = run.accelerator.is_main_process
    bar = progress_bar(
        total=cfg.max_steps, initial=run.start, desc="train", unit="step", disable=not (progress and main)
    )
    window: list[dict[str, Any]] = []
    for step in range(run.start + 1, cfg.max_steps + 1):
        row = optimizer_step(run, step)
        run.history.append(row)
        window.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{row['samples_per_s']:.2f}")
        window = bookkeeping(run, step, window)
    bar.close()
    run.accelerator.wait_for_everyone()
    return TrainResult(
        adapter=run.adapter, history=pd.DataFrame(run.history), run_dir=run.run_dir, resumed_from=run.start
    )
