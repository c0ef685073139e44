"""FluxIR training (paper Sec. 3.3 "Efficient Training Strategy", Sec. 4.1): one optimizer step, told in order.

B = per-process batch, C = 16 VAE channels, (h, w) = (H/8, W/8), N = h/2 * w/2 packed tokens, S = prompt tokens.

1. Data (``fluxir.training_data``): FluxGen's pairs in aspect buckets; the global batch of step s is a
   function of (seed, s), drawn from one bucket; VAE Gaussians of HQ and x4-bicubic LQ cached on disk.
2. Batch: ``train.global_batch`` pairs per optimizer step (paper: 64) = ``batch_size`` per process x
   processes x accumulation micro-steps (``accumulation_steps``). Sample j of step s draws t, the noise
   z_1, the two VAE samples and the decoder crop from its own generator seeded by (seed, s, j), so any
   split of the global batch (1 GPU accumulating 64, or 4 GPUs x 16, or 8 x 8) trains on the same
   samples with the same randomness, and a resumed run sees exactly what an uninterrupted one would.
3. Loss (Eq. 5-10):
       t = f(u) = clamp(u, 0, 1), u ~ U(-eps, 1 + eps)          (Eq. 5-6; P(t=0) = P(t=1) = eps/(1+2eps))
       z_t = (1 - t) z_0 + t z_1                                 (z_0 = HQ latent, z_1 ~ N(0, I))
       v_p = Flux(z_t, t, p, y) controlled by FluxIR(z_lq)      (Eq. 1-4, fluxir.models.adapter)
       v_gt = z_1 - z_0                                          (Eq. 7)
       L_MSE = ||v_p - v_gt||^2                                  (Eq. 8, mean over elements)
       L_P = ||V_d(z_0 + t v_p) - V_d(z_0 + t v_gt)||_1          (Eq. 9 as written, ``pixel_loss_form: paper``)
           or ||V_d(z_t - t v_p) - V_d(z_0)||_1                  (its clean-estimate reading, ``x0``)
       L = L_MSE + alpha L_P, alpha = 1                          (Eq. 10)
   The logit-normal sampler of SD3 (t = sigmoid(n), n ~ N(m, s)) is the ablation of Table 3. A
   guidance-distilled Flux gets the adapter's ``config.guidance``, saved with it for restoration.
4. Update: AdamW (paper: lr 1e-5) on the adapter only; Flux and the VAE are frozen. bf16 autocast,
   gradient checkpointing of Flux's blocks (and optionally of the VAE decoder), gradient clipping,
   constant lr after a linear warm-up.
5. Bookkeeping (``fluxir.training_records``): a non-finite loss or gradient stops the run before the
   optimizer step (the last good checkpoint is never touched); every ``checkpoint_every`` steps rank 0
   writes an atomic checkpoint; a rerun with the same settings resumes from the newest. MLflow (rank 0,
   the active run): parameters, loss curves, lr, samples/s, peak memory, validation restorations.

Everything runs under ``accelerate``: ``python -m fluxir.training --env base`` on one process, or
``accelerate launch [--multi_gpu --num_processes 4] -m fluxir.training --env base`` on several (DDP;
the command line is ``fluxir.training_cli``); ``kedro run --pipeline=train`` calls the same ``train``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs
from torch import Tensor, nn

from fluxir.config import Rule, check_fields, flatten_dict, reject_unknown_keys
from fluxir.fluxgen.generate import PromptEncoder
from fluxir.io import hash_json
from fluxir.models.adapter import (
    FluxIRAdapter,
    controlled_flux_forward,
    count_parameters,
    freeze_flux,
)
from fluxir.models.flux import accelerate_cpu, image_ids, load_pipeline, pack, unpack
from fluxir.progress import progress as progress_bar
from fluxir.training_data import (
    DataOrder,
    LatentCache,
    PairTable,
    decode_latents,
    device_and_dtype,
    gaussian_sample,
    pair_gaussians,
    vae_identity,
)
from fluxir.training_records import (
    MlflowLogger,
    list_checkpoints,
    load_checkpoint,
    peak_memory_mb,
    save_checkpoint,
    validation_grid,
)

logger = logging.getLogger(__name__)

TIMESTEP_SAMPLERS = ("clamped_uniform", "logit_normal")
PIXEL_LOSS_FORMS = ("paper", "x0")

# Fields that do not change what is learned: excluded from the run key, so changing them (or raising
# max_steps to train longer) resumes the same run instead of starting a new one. batch_size is one:
# the global batch and every sample's randomness are the same however it is split (see ``batch_plan``).
_NON_SEMANTIC = (
    "max_steps", "checkpoint_every", "keep_checkpoints", "resume", "log_every", "validate_every",
    "validation_steps", "cache_latents", "latent_cache_dir", "checkpoint_dir", "device", "progress",
    "decoder_gradient_checkpointing", "gradient_checkpointing", "batch_size",
)
_FLOAT_FIELDS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                 "timestep_eps", "logit_normal_mean", "logit_normal_std", "pixel_loss_weight")


# ----------------------------------------------------------------------------------------------------
# Configuration


TRAIN_RULES = (
    *(Rule(name, "int_at_least", 1) for name in (
        "max_steps", "global_batch", "batch_size", "max_sequence_length", "lq_scale",
        "validation_steps", "validate_every", "log_every", "checkpoint_every", "keep_checkpoints")),
    *(Rule(name, "int_at_least", 0) for name in ("lr_warmup_steps", "num_validation_pairs", "seed")),
    Rule("timestep_sampler", "choice", TIMESTEP_SAMPLERS,
         must="'clamped_uniform' (paper Eq. 5-6) or 'logit_normal' (SD3, the Table 3 ablation)"),
    Rule("timestep_eps", "number_in", (0, 1), must="in [0, 1) (paper: 0.05)"),
    Rule("logit_normal_std", "positive_number", must="> 0 (SD3: 1.0)"),
    Rule("learning_rate", "positive_number", must="> 0 (paper: 1e-5)"),
    Rule("pixel_loss_weight", "number_at_least", 0, must=">= 0 (alpha of Eq. 10, paper: 1)"),
    Rule("pixel_loss_form", "choice", PIXEL_LOSS_FORMS,
         must="'paper' (Eq. 9 as written: V_d(z_0 + t v_p) vs V_d(z_t)) or 'x0' (V_d(z_t - t v_p) vs V_d(z_0))"),
    Rule("pixel_loss_crop", "multiple_of", 8, nullable=True,
         must="null or a positive multiple of 8 (pixels; the VAE downsamples by 8)"),
    Rule("max_grad_norm", "positive_number", nullable=True, must="null or > 0"),
    Rule("mixed_precision", "choice", ("no", "bf16"), must="'no' or 'bf16' (paper: bf16)"),
    Rule("dtype", "choice", ("float32", "bfloat16", "float16"), must="float32, bfloat16 or float16"),
)


@dataclass
class TrainConfig:
    """Parameters ``train.*`` (conf/base/parameters_train.yml documents each)."""

    model: str = "black-forest-labs/FLUX.1-dev"
    dtype: str = "bfloat16"  # frozen Flux + VAE weights; the adapter's master weights are float32
    mixed_precision: str = "bf16"  # accelerate autocast: "bf16" or "no"
    device: str = "auto"  # auto: accelerate's device (cuda if present); "cpu" forces CPU
    seed: int = 0
    max_steps: int = 48_000  # optimizer steps: the paper's 14 GPU-days at 40% MFU (parameters_train.yml)
    global_batch: int = 64  # pairs per optimizer step, over all processes (paper Sec. 4.1: 64)
    batch_size: int = 1  # per process and micro-step: what fits in memory; accumulation makes up the rest
    learning_rate: float = 1e-5  # paper Sec. 4.1
    weight_decay: float = 0.01  # torch's AdamW default (the paper does not say)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_warmup_steps: int = 0
    max_grad_norm: float | None = 1.0  # None: no clipping (the norm is still checked and logged)
    timestep_sampler: str = "clamped_uniform"  # Eq. 5-6; "logit_normal" is SD3's (Table 3 ablation)
    timestep_eps: float = 0.05  # epsilon of Eq. 6
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    pixel_loss_weight: float = 1.0  # alpha of Eq. 10; 0 switches L_P (and its decoder passes) off
    pixel_loss_form: str = "paper"  # Eq. 9 as written ("paper") or its clean-estimate reading ("x0")
    pixel_loss_crop: int | None = None  # decode a random crop of this many pixels square (multiple of 8)
    decoder_gradient_checkpointing: bool = False
    gradient_checkpointing: bool = True  # Flux blocks and the adapter block
    adapter: dict[str, Any] = field(default_factory=dict)  # FluxIRConfig overrides, e.g. {rank: 32, guidance: 4.0}
    max_sequence_length: int = 512  # T5 tokens of the (empty) training prompt
    lq_scale: int = 4
    num_validation_pairs: int = 4  # held out of training, restored every validate_every steps
    validation_steps: int = 20  # sampling steps of the validation restorations (paper: 20)
    validate_every: int = 2000
    log_every: int = 10
    cache_latents: bool = True
    latent_cache_dir: str = "data/05_model_input/latent_cache"
    checkpoint_dir: str = "data/06_models/train_checkpoints"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainConfig:
        """Build and validate from a ``train`` parameters dict; unknown keys and bad values raise ValueError."""
        if "gradient_accumulation_steps" in params or "guidance" in params:
            raise ValueError("train.gradient_accumulation_steps and train.guidance are no longer parameters: set "
                             "train.global_batch (accumulation = global_batch / (batch_size x processes)) and "
                             "train.adapter.guidance (saved with the adapter; restoration uses it); docs/training.md")
        reject_unknown_keys(params, cls, "train parameter(s)")
        params = dict(params)
        if params.get("mixed_precision") is False:  # YAML 1.1 reads an unquoted `no` as false
            params["mixed_precision"] = "no"
        for name in _FLOAT_FIELDS:  # YAML 1.1 reads `1e-5` (no dot) as a string
            if isinstance(params.get(name), str):
                try:
                    params[name] = float(params[name])
                except ValueError:
                    raise ValueError(f"train.{name} must be a number, got {params[name]!r}") from None
        cfg = cls(**{**params, "adapter": dict(params.get("adapter") or {})})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        check_fields(self, TRAIN_RULES, "train.")
        if self.global_batch % self.batch_size:
            raise ValueError(f"train.global_batch={self.global_batch} is not a multiple of train.batch_size="
                             f"{self.batch_size}: choose a batch_size that divides it")

    def run_key(self, data_key: str) -> str:
        """Hash of everything that changes what is learned: the checkpoint sub-folder of this run."""
        semantic = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NON_SEMANTIC}
        return hash_json({"config": semantic, "data": data_key})


def accumulation_steps(global_batch: int, batch_size: int, num_processes: int) -> int:
    """Micro-steps per optimizer step so that batch_size x num_processes x accumulation = global_batch exactly.

    The paper's 64 on 4 GPUs at batch_size 1 accumulates 16 micro-steps, on 8 GPUs 8; ValueError (listing the
    batch sizes that work) when no whole number of micro-steps gives the global batch.
    """
    per_micro_step = batch_size * num_processes
    if global_batch % per_micro_step == 0:
        return global_batch // per_micro_step
    fitting = [b for b in range(1, global_batch + 1) if global_batch % (b * num_processes) == 0]
    fix = (f"use train.batch_size in {fitting}" if fitting else
           f"use a number of processes that divides {global_batch}, or change train.global_batch")
    raise ValueError(f"train.global_batch={global_batch} cannot be split into train.batch_size={batch_size} x "
                     f"{num_processes} process(es) x whole accumulation steps ({global_batch} is not a multiple of "
                     f"{per_micro_step}): {fix}")


# ----------------------------------------------------------------------------------------------------
# Timesteps (Eq. 5-6) and per-sample randomness


def sample_timesteps(n: int, generator: torch.Generator, sampler: str = "clamped_uniform", eps: float = 0.05,
                     mean: float = 0.0, std: float = 1.0) -> Tensor:
    """n timesteps t in [0, 1], shape (n,).

    ``clamped_uniform`` (Eq. 5-6): u ~ U(-eps, 1 + eps), t = clamp(u, 0, 1), so t = 0 and t = 1 each
    have probability eps / (1 + 2 eps) (0.0455 at eps = 0.05; the paper's text says 1/(1+2eps), its
    equations give this). ``logit_normal`` (SD3): t = sigmoid(n), n ~ N(mean, std); never 0 or 1.
    """
    if sampler == "clamped_uniform":
        u = torch.rand(n, generator=generator, dtype=torch.float64) * (1 + 2 * eps) - eps  # Eq. 6
        return u.clamp(0.0, 1.0).float()  # Eq. 5
    if sampler == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator, dtype=torch.float64)).float()
    raise ValueError(f"timestep sampler must be one of {TIMESTEP_SAMPLERS}, got {sampler!r}")


def sample_seed(seed: int, step: int, position: int) -> int:
    """Seed of the generator of sample ``position`` (0 .. global_batch - 1) of the global batch of ``step``."""
    a, b = np.random.SeedSequence([seed, step, position]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


# ----------------------------------------------------------------------------------------------------
# Models


class ControlledFlux(nn.Module):
    """What DDP / FSDP / DeepSpeed wrap: the trainable adapter. The frozen Flux is held outside the
    module tree, so it is never broadcast, synchronised or sharded as a trainable model."""

    def __init__(self, flux: nn.Module, adapter: FluxIRAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        object.__setattr__(self, "flux", flux)  # not a registered sub-module

    def forward(self, z_t, z_lq, prompt, pooled, t, img_ids, txt_ids):
        """Predicted velocity v_p (B, N, 64) of the controlled Flux (Eq. 1-4).

        A guidance-distilled Flux (FLUX.1-dev) gets the adapter's own ``config.guidance``: the value it is
        trained with is saved with it, and restoration uses the same (``fluxir.restoration.sampler``).
        """
        guidance = None
        if self.flux.config.guidance_embeds:
            guidance = torch.full((z_t.shape[0],), float(self.adapter.config.guidance), device=z_t.device)
        return controlled_flux_forward(self.flux, self.adapter, z_t, z_lq, prompt, pooled, t, img_ids, txt_ids,
                                       guidance=guidance)


@dataclass
class Models:
    """The frozen parts (Flux, VAE, the empty prompt's embeddings) and the scheduler config for sampling."""

    flux: nn.Module  # FluxTransformer2DModel, frozen
    vae: nn.Module  # AutoencoderKL, frozen
    prompt_embeds: Tensor  # (1, S, joint_attention_dim)
    pooled_embeds: Tensor  # (1, pooled_projection_dim)
    scheduler_config: dict[str, Any]


def load_models(cfg: TrainConfig, device: torch.device | str) -> Models:
    """Load the pipeline, encode the empty prompt once (T5/CLIP are then dropped), freeze Flux and the VAE."""
    pipe = load_pipeline(cfg.model, dtype=cfg.dtype, device=str(device))
    encoder = PromptEncoder(pipe, [""], cfg.max_sequence_length, str(device))  # the paper's empty prompt
    flux, vae = pipe.transformer, pipe.vae
    freeze_flux(flux)
    vae.requires_grad_(False).eval()
    if cfg.gradient_checkpointing:
        flux.enable_gradient_checkpointing()
    if cfg.decoder_gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    embeds = encoder.cache[""]
    return Models(flux, vae, embeds["prompt_embeds"], embeds["pooled_prompt_embeds"], dict(pipe.scheduler.config))


def build_adapter(cfg: TrainConfig, models: Models) -> FluxIRAdapter:
    """A FluxIR adapter initialised from Flux (Sec. 3.2), float32 master weights, seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)  # the SE squeeze layers are randomly initialised
    overrides = {"text_seq_len": models.prompt_embeds.shape[1], **cfg.adapter}
    adapter = FluxIRAdapter.from_flux(models.flux, **overrides).to(torch.float32)
    if cfg.gradient_checkpointing:
        adapter.enable_gradient_checkpointing()
    return adapter


# ----------------------------------------------------------------------------------------------------
# One micro-batch: inputs and the loss (Eq. 5-10)


@dataclass
class MicroBatch:
    z0: Tensor  # (B, N, 64) packed clean HQ latent z_0
    z1: Tensor  # (B, N, 64) packed noise z_1
    z_lq: Tensor  # (B, N, 64) packed LQ latent (control input)
    t: Tensor  # (B,) timesteps in [0, 1]
    crops: list[tuple[int, int]] | None  # latent (top, left) of each sample's decoder crop
    h: int  # latent height (H / 8)
    w: int  # latent width (W / 8)


def make_micro_batch(cfg: TrainConfig, vae: nn.Module, gaussians: list[tuple[Tensor, Tensor]],
                     seeds: list[int]) -> MicroBatch:
    """Draw t, z_1, the VAE samples and the decoder crops of each sample from its own generator."""
    h, w = gaussians[0][0].shape[-2:]
    c = gaussians[0][0].shape[-3] // 2
    crop = None if cfg.pixel_loss_crop is None else cfg.pixel_loss_crop // 8
    z0, z1, zlq, ts, crops = [], [], [], [], []
    for (hq, lq), seed in zip(gaussians, seeds):
        g = torch.Generator().manual_seed(seed)
        ts.append(sample_timesteps(1, g, cfg.timestep_sampler, cfg.timestep_eps,
                                   cfg.logit_normal_mean, cfg.logit_normal_std))
        z1.append(torch.randn(c, h, w, generator=g))
        z0.append(gaussian_sample(hq, torch.randn(c, h, w, generator=g), vae))
        zlq.append(gaussian_sample(lq, torch.randn(c, h, w, generator=g), vae))
        if crop is not None:
            top = int(torch.randint(0, max(h - crop, 0) + 1, (1,), generator=g))
            left = int(torch.randint(0, max(w - crop, 0) + 1, (1,), generator=g))
            crops.append((top, left))
    device = device_and_dtype(vae)[0]
    return MicroBatch(
        z0=pack(torch.stack(z0)).to(device), z1=pack(torch.stack(z1)).to(device),
        z_lq=pack(torch.stack(zlq)).to(device), t=torch.cat(ts).to(device),
        crops=crops if crop is not None else None, h=h, w=w,
    )


def flow_matching_loss(model: nn.Module, flux: nn.Module, vae: nn.Module, batch: MicroBatch, prompt: Tensor,
                       pooled: Tensor, cfg: TrainConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(L, L_MSE, L_P) of one micro-batch (Eq. 7-10); L_P is 0 when alpha = 0."""
    b = batch.z0.shape[0]
    t = batch.t.view(b, 1, 1)  # (B, 1, 1)
    z_t = (1 - t) * batch.z0 + t * batch.z1  # (B, N, 64), rectified flow
    v_gt = batch.z1 - batch.z0  # Eq. 7
    s = prompt.shape[1]
    flux_dtype = device_and_dtype(flux)[1]
    v_p = model(
        z_t.to(flux_dtype), batch.z_lq.to(flux_dtype), prompt.expand(b, -1, -1), pooled.expand(b, -1),
        batch.t, image_ids(batch.h // 2, batch.w // 2, z_t.device), torch.zeros(s, 3, device=z_t.device),
    ).float()  # (B, N, 64)
    mse = F.mse_loss(v_p, v_gt.float())  # Eq. 8
    if cfg.pixel_loss_weight == 0:
        return mse, mse.detach(), torch.zeros((), device=mse.device)
    pred, target = pixel_loss_latents(batch.z0, z_t, t, v_p, v_gt, cfg.pixel_loss_form)
    pred, target = unpack(pred, batch.h, batch.w), unpack(target, batch.h, batch.w)  # (B, 16, h, w)
    if batch.crops is not None:  # decode the same random window of both (memory: see docs/training.md)
        k = cfg.pixel_loss_crop // 8
        pred = torch.stack([p[:, r : r + k, c : c + k] for p, (r, c) in zip(pred, batch.crops)])
        target = torch.stack([p[:, r : r + k, c : c + k] for p, (r, c) in zip(target, batch.crops)])
    with torch.no_grad():
        x_target = decode_latents(vae, target)  # (B, 3, 8h, 8w)
    x_pred = decode_latents(vae, pred)  # gradient flows through the frozen decoder into v_p
    pixel = F.l1_loss(x_pred.float(), x_target.float())  # Eq. 9
    return mse + cfg.pixel_loss_weight * pixel, mse.detach(), pixel.detach()  # Eq. 10


def pixel_loss_latents(z0: Tensor, z_t: Tensor, t: Tensor, v_p: Tensor, v_gt: Tensor, form: str) -> tuple[Tensor, Tensor]:
    """The two latents (prediction, target) whose decodings Eq. 9 compares; all (B, N, 64), t (B, 1, 1).

    ``paper``: Eq. 9 as written, V_d(z_0 + t v_p) vs V_d(z_0 + t v_gt). Since z_0 + t v_gt = z_t, the target
    is the decoded *noisy* latent. ``x0``: the clean-image estimate z_t - t v_p (the x_0 prediction of the
    rectified flow) vs z_0, as in pixel-space post-training. In both the latent error is +-t (v_p - v_gt);
    they differ only in where the (non-linear) decoder is evaluated, and agree at t = 0 (both pairs equal
    z_0, L_P = 0) and whenever v_p = v_gt.
    """
    if form == "paper":
        return z0 + t * v_p, z0 + t * v_gt
    if form == "x0":
        return z_t - t * v_p, z0
    raise ValueError(f"train.pixel_loss_form must be one of {PIXEL_LOSS_FORMS}, got {form!r}")


@dataclass
class TrainResult:
    adapter: FluxIRAdapter  # the trained FluxIRAdapter (unwrapped, float32)
    history: pd.DataFrame  # one row per optimizer step: step, loss, loss_mse, loss_pixel, lr, grad_norm, ...
    run_dir: Path  # checkpoint folder of this run (checkpoint_dir/<run key>)
    resumed_from: int  # step of the checkpoint it resumed from (0: fresh start)


@dataclass
class TrainingRun:
    """Everything one process holds during training: settings, data, models, optimiser and the history."""

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
    log: MlflowLogger

    @property
    def adapter(self) -> FluxIRAdapter:
        return self.accelerator.unwrap_model(self.model).adapter


def configure_cuda_allocator() -> None:
    """``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` unless the user set it: the three aspect buckets'
    activation shapes would otherwise fragment the caching allocator. Read when CUDA first allocates, so
    this must run before that (the command line calls it first thing)."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    if torch.cuda.is_initialized():
        logger.warning("CUDA is already initialised: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True cannot take "
                       "effect now; set it in the environment before starting the process")
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def ddp_kwargs(accumulation: int) -> DistributedDataParallelKwargs:
    """DDP settings: gradients are views into the all-reduce buckets (no second copy of them); the graph is
    static (the same adapter parameters get a gradient every step) when no micro-step runs under no_sync."""
    return DistributedDataParallelKwargs(gradient_as_bucket_view=True, static_graph=accumulation == 1)


def make_optimizer(params: Any, cfg: TrainConfig, device: torch.device | str) -> torch.optim.AdamW:
    """AdamW of Sec. 4.1; on CUDA fused (one kernel per step for every tensor instead of a loop over them)."""
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                             fused=torch.device(device).type == "cuda")


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


def start_run(cfg: TrainConfig, manifest: pd.DataFrame) -> TrainingRun:
    """Data, models, optimiser and (if a checkpoint of the same run exists) its state, on this process."""
    configure_cuda_allocator()
    processes = PartialState(cpu=accelerate_cpu(cfg.device)).num_processes
    accumulation = accumulation_steps(cfg.global_batch, cfg.batch_size, processes)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=accelerate_cpu(cfg.device),
                              kwargs_handlers=[ddp_kwargs(accumulation)])

    # 1. Data: pairs, buckets, held-out validation pairs, the (seed, step) -> global batch order.
    pairs = PairTable.from_manifest(manifest, cfg.lq_scale)
    train_idx, val_idx = pairs.split(cfg.num_validation_pairs)
    order = DataOrder(pairs.buckets(train_idx), cfg.global_batch, cfg.seed)

    # 2. Models: frozen Flux + VAE, the empty prompt, the trainable adapter, AdamW, constant lr + warm-up.
    models = load_models(cfg, accelerator.device)
    cache = LatentCache(cfg.latent_cache_dir if cfg.cache_latents else None, vae_identity(models.vae))
    adapter = build_adapter(cfg, models).to(accelerator.device)
    optimizer = make_optimizer(adapter.parameters(), cfg, accelerator.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.lr_warmup_steps))

    # 3. Resume from the newest checkpoint of this run (same settings, same data), if any.
    run_key = cfg.run_key(pairs.data_key())
    run_dir = Path(cfg.checkpoint_dir) / run_key
    if accelerator.is_main_process:
        _clear_run_dir(run_dir, cfg.resume)
    accelerator.wait_for_everyone()
    found = list_checkpoints(run_dir) if cfg.resume else []
    start, history = 0, []
    if found:
        state = load_checkpoint(found[-1][1], adapter, optimizer, scheduler)
        start, history = state["step"], state["history"][: state["step"]]
        logger.info("resuming from %s (step %d)", found[-1][1], start)
    model, optimizer = accelerator.prepare(ControlledFlux(models.flux, adapter), optimizer)  # the scheduler is stepped by hand
    return TrainingRun(cfg, accelerator, accumulation, pairs, train_idx, val_idx, order, models, cache, model,
                       optimizer, scheduler, run_dir, run_key, start, history, MlflowLogger(accelerator.is_main_process))


def log_run_params(run: TrainingRun) -> None:
    """The settings, the derived batch split and the data as MLflow parameters, and one log line."""
    cfg, world = run.cfg, run.accelerator.num_processes
    sizes = {f"{w}x{h}": len(v) for (w, h), v in sorted(run.order.buckets.items())}
    run.log.params({**flatten_dict(dataclasses.asdict(cfg), "train."), **flatten_dict({
        "num_processes": world, "gradient_accumulation_steps": run.accumulation,
        "num_train_pairs": len(run.train_idx), "num_validation_pairs": len(run.val_idx), "buckets": json.dumps(sizes),
        "adapter_parameters": count_parameters(run.adapter), "adapter_guidance": run.adapter.config.guidance,
        "run_key": run.run_key, "resumed_from_step": run.start,
    }, "train_run.")})
    if run.accelerator.is_main_process:
        logger.info("training %s: %d pairs in buckets %s, global batch %d = %d per process x %d process(es) x %d "
                    "accumulation, steps %d -> %d, checkpoints in %s", cfg.model, len(run.train_idx), sizes,
                    cfg.global_batch, cfg.batch_size, world, run.accumulation, run.start, cfg.max_steps, run.run_dir)
        short = {size: n for size, n in sizes.items() if n < cfg.global_batch}
        if short:  # a batch is drawn from one bucket: a smaller bucket repeats its pairs inside every batch
            logger.warning("train.global_batch=%d exceeds the training pairs of bucket(s) %s (of %d training pairs): "
                           "every optimizer step repeats pairs within its batch; generate more images "
                           "(fluxgen.num_images) or lower train.global_batch", cfg.global_batch, short,
                           len(run.train_idx))


def optimizer_step(run: TrainingRun, step: int) -> dict[str, Any]:
    """Optimizer step ``step`` (1-based): its global batch over every micro-step and process, then AdamW.

    Sample j of the global batch is trained by process ``(j // batch_size) % processes`` in micro-step
    ``j // (batch_size x processes)`` with randomness from ``sample_seed(seed, step, j)``: the same
    samples, noise and t for any split of the global batch. Returns the history row (means over all).
    """
    cfg, acc, models = run.cfg, run.accelerator, run.models
    t0 = time.perf_counter()
    epoch, batch_ids = run.order.batch(step - 1)
    parts, seen, ts = [], [], []
    for k in range(run.accumulation):
        first = (k * acc.num_processes + acc.process_index) * cfg.batch_size
        mine = list(range(first, first + cfg.batch_size))  # positions in the global batch
        gaussians = [pair_gaussians(models.vae, run.cache, run.pairs, batch_ids[j]) for j in mine]
        batch = make_micro_batch(cfg, models.vae, gaussians, [sample_seed(cfg.seed, step - 1, j) for j in mine])
        sync = k == run.accumulation - 1
        with (contextlib.nullcontext() if sync else acc.no_sync(run.model)), acc.autocast():
            loss, mse, pixel = flow_matching_loss(run.model, models.flux, models.vae, batch, models.prompt_embeds,
                                                  models.pooled_embeds, cfg)
            acc.backward(loss / run.accumulation)
        parts.append(torch.stack([loss.detach().float(), mse.float(), pixel.float()]))
        seen += [int(run.pairs.rows.image_id[batch_ids[j]]) for j in mine]
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
    return {"step": step, "loss": loss_v, "loss_mse": mse_v, "loss_pixel": pixel_v,
            "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "epoch": epoch,
            "t_mean": float(torch.cat(ts).mean()), "samples_per_s": cfg.global_batch / (time.perf_counter() - t0),
            "image_ids": seen}


def _non_finite(run: TrainingRun, step: int, values: str) -> FloatingPointError:
    good = list_checkpoints(run.run_dir)
    where = f"the last good checkpoint is {good[-1][1]} (step {good[-1][0]})" if good else "no checkpoint was written yet"
    return FloatingPointError(
        f"non-finite training loss at step {step} ({values}); stopped before the optimizer step, {where}. Lower "
        f"train.learning_rate (now {run.cfg.learning_rate}) or set train.max_grad_norm, then rerun to resume from "
        "that checkpoint."
    )


def training_record(run: TrainingRun, step: int) -> dict[str, Any]:
    """What the adapter carries about its training (saved with it; evaluation reports show it)."""
    cfg = run.cfg
    return {"steps": step, "global_batch": cfg.global_batch, "learning_rate": cfg.learning_rate,
            "timestep_sampler": cfg.timestep_sampler, "pixel_loss_weight": cfg.pixel_loss_weight,
            "pixel_loss_form": cfg.pixel_loss_form, "run_key": run.run_key, "num_train_pairs": len(run.train_idx)}


def bookkeeping(run: TrainingRun, step: int, window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """After step ``step``: MLflow metrics (means over ``window``), validation grid, checkpoint, each on its
    schedule and on the last step. Returns the window still to log."""
    cfg, main, last = run.cfg, run.accelerator.is_main_process, step == run.cfg.max_steps
    if main and (step % cfg.log_every == 0 or last):
        keys = ("loss", "loss_mse", "loss_pixel", "grad_norm", "samples_per_s", "t_mean")
        mean = {k: float(np.mean([r[k] for r in window])) for k in keys}
        run.log.metrics({**{f"train/{k}": v for k, v in mean.items()}, "train/lr": window[-1]["lr"],
                         "train/peak_memory_mb": peak_memory_mb(run.accelerator.device),
                         "train/epoch": float(window[-1]["epoch"])}, step)
        window = []
    if run.log.run is not None and run.val_idx and (step % cfg.validate_every == 0 or last):
        with run.accelerator.autocast():
            grid = validation_grid(run.models, run.adapter, run.pairs, run.val_idx, cfg)
        run.log.image(grid, f"validation/step_{step:08d}.png")
    run.adapter.training_record = training_record(run, step)
    if main and (step % cfg.checkpoint_every == 0 or last):
        extra = {"run_key": run.run_key, "seed": cfg.seed, "num_processes": run.accelerator.num_processes,
                 "written_by_rank": run.accelerator.process_index, "max_steps": cfg.max_steps}
        save_checkpoint(run.run_dir, step, run.adapter, run.optimizer, run.scheduler, run.history, extra,
                        cfg.keep_checkpoints)
    return window


def train(
    params: dict[str, Any] | TrainConfig,
    manifest: pd.DataFrame,
    *,
    progress: bool = True,
    step_callback: Callable[[int, FluxIRAdapter, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a FluxIR adapter on the pairs of ``manifest`` (on every process of an accelerate launch).

    ``step_callback(step, adapter, info)`` runs on every process after each optimizer step (``info``:
    the pair image ids this process trained on, the epoch). Returns the same ``TrainResult`` everywhere.
    """
    cfg = params if isinstance(params, TrainConfig) else TrainConfig.from_params(params)
    run = start_run(cfg, manifest)
    log_run_params(run)
    main = run.accelerator.is_main_process
    bar = progress_bar(total=cfg.max_steps, initial=run.start, desc="train", unit="step", disable=not (progress and main))
    window: list[dict[str, Any]] = []
    for step in range(run.start + 1, cfg.max_steps + 1):
        row = optimizer_step(run, step)
        seen = row.pop("image_ids")
        run.history.append(row)
        window.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{row['samples_per_s']:.2f}")
        if step_callback is not None:
            step_callback(step, run.adapter, {"image_ids": seen, "epoch": row["epoch"]})
        window = bookkeeping(run, step, window)
    bar.close()
    run.accelerator.wait_for_everyone()
    return TrainResult(adapter=run.adapter, history=pd.DataFrame(run.history), run_dir=run.run_dir,
                       resumed_from=run.start)


if __name__ == "__main__":  # python -m fluxir.training: the command line is in fluxir.training_cli
    from fluxir.training_cli import main

    main()
