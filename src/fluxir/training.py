"""FluxIR training (paper Sec. 3.3 "Efficient Training Strategy", Sec. 4.1): the whole story in one file.

What one optimizer step does (B = per-process batch, C = 16 VAE channels, (h, w) = (H/8, W/8),
N = h/2 * w/2 packed tokens, S = prompt tokens):

1. Data. Pairs come from FluxGen's ``pairs_manifest`` (HQ crop + its 1/4-size LQ). Pairs are grouped
   into aspect buckets by HQ size (paper: 1024x768, 768x768, 512x768); each global batch comes from
   one bucket. The batch order of epoch e is a permutation drawn from (seed, e), so the batch of
   micro-step g is a function of (seed, g): a resumed run sees exactly the data an uninterrupted one
   would.
2. Latents. HQ and the LQ upsampled x4 (bicubic) to HQ size go through the frozen Flux VAE encoder;
   its Gaussian's parameters (mean, logvar) are cached on disk, keyed by the pair's sha256s, the size
   and the VAE's identity (config + weights hash), so a changed image or VAE never reuses a stale
   latent. A latent is mean + std * noise, then ``(z - shift_factor) * scaling_factor``, packed 2x2:
   (B, C, h, w) -> (B, N, 4C).
3. Randomness. Sample j of micro-step g draws t, the noise z_1, the two VAE samples and the decoder
   crop from its own generator seeded by (seed, g, j): independent of the number of processes, and
   reproducible after a resume.
4. Loss (Eq. 5-10):
       t = f(u) = clamp(u, 0, 1), u ~ U(-eps, 1 + eps)          (Eq. 5-6; P(t=0) = P(t=1) = eps/(1+2eps))
       z_t = (1 - t) z_0 + t z_1                                 (z_0 = HQ latent, z_1 ~ N(0, I))
       v_p = Flux(z_t, t, p, y) controlled by FluxIR(z_lq)      (Eq. 1-4, fluxir.models.adapter)
       v_gt = z_1 - z_0                                          (Eq. 7)
       L_MSE = ||v_p - v_gt||^2                                  (Eq. 8, mean over elements)
       L_P = ||V_d(z_0 + t v_p) - V_d(z_0 + t v_gt)||_1          (Eq. 9, mean over pixels)
       L = L_MSE + alpha L_P, alpha = 1                          (Eq. 10)
   The logit-normal sampler of SD3 (t = sigmoid(n), n ~ N(m, s)) is the ablation of Table 3.
5. Update: AdamW (paper: lr 1e-5) on the adapter only; Flux and the VAE are frozen. Gradient
   accumulation, bf16 autocast, gradient checkpointing of Flux's blocks (and optionally of the VAE
   decoder), gradient clipping, constant lr after a linear warm-up.
6. Bookkeeping: a non-finite loss or gradient stops the run before the optimizer step (the last good
   checkpoint is never touched); every ``checkpoint_every`` steps rank 0 writes adapter + optimizer +
   scheduler + RNG + step + history into a temporary folder and renames it into place; a rerun with
   the same settings resumes from the newest. MLflow (rank 0, the active run): parameters, loss
   curves, lr, samples/s, peak memory, a grid of validation restorations.

Everything runs under ``accelerate``: ``python -m fluxir.training --env base`` on one process, or
``accelerate launch [--multi_gpu --num_processes 4] -m fluxir.training --env base`` on several (DDP);
``kedro run --pipeline=train`` calls the same ``train`` function in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fluxir.config import flatten_dict
from fluxir.io import read_image, sha256_file
from fluxir.progress import progress as progress_bar
from fluxir.models.adapter import (
    FluxIRAdapter,
    controlled_flux_forward,
    count_parameters,
    freeze_flux,
    load_adapter,
    save_adapter,
)

logger = logging.getLogger(__name__)

TIMESTEP_SAMPLERS = ("clamped_uniform", "logit_normal")
MANIFEST_COLUMNS = ("image_id", "hq_path", "lq_path", "hq_sha256", "lq_sha256")
CHECKPOINT_PREFIX = "step_"

# Fields that do not change what is learned: excluded from the run key, so changing them (or raising
# max_steps to train longer) resumes the same run instead of starting a new one.
_NON_SEMANTIC = (
    "max_steps", "checkpoint_every", "keep_checkpoints", "resume", "log_every", "validate_every",
    "validation_steps", "cache_latents", "latent_cache_dir", "checkpoint_dir", "device", "progress",
    "decoder_gradient_checkpointing", "gradient_checkpointing",
)
_FLOAT_FIELDS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                 "timestep_eps", "logit_normal_mean", "logit_normal_std", "guidance", "pixel_loss_weight")


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Parameters ``train.*`` (conf/base/parameters_train.yml documents each)."""

    model: str = "black-forest-labs/FLUX.1-dev"
    dtype: str = "bfloat16"  # frozen Flux + VAE weights; the adapter's master weights are float32
    mixed_precision: str = "bf16"  # accelerate autocast: "bf16" or "no"
    device: str = "auto"  # auto: accelerate's device (cuda if present); "cpu" forces CPU
    seed: int = 0
    max_steps: int = 100_000  # optimizer steps
    batch_size: int = 1  # per process and micro-step
    gradient_accumulation_steps: int = 1
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
    guidance: float = 3.5  # FLUX.1-dev's guidance embedding during training; use the same at inference
    pixel_loss_weight: float = 1.0  # alpha of Eq. 10; 0 switches L_P (and its decoder passes) off
    pixel_loss_crop: int | None = None  # decode a random crop of this many pixels square (multiple of 8)
    decoder_gradient_checkpointing: bool = False
    gradient_checkpointing: bool = True  # Flux blocks and the adapter block
    adapter: dict[str, Any] = field(default_factory=dict)  # FluxIRConfig overrides, e.g. {rank: 32}
    max_sequence_length: int = 512  # T5 tokens of the (empty) training prompt
    lq_scale: int = 4
    num_validation_pairs: int = 2  # held out of training, restored every validate_every steps
    validation_steps: int = 20  # sampling steps of the validation restorations (paper: 20)
    validate_every: int = 1000
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
        from fluxir.config import reject_unknown_keys

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
        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"train.{name} must be an integer >= {minimum}, got {value!r}")

        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_sequence_length", "lq_scale",
                     "validation_steps", "validate_every", "log_every", "checkpoint_every", "keep_checkpoints"):
            positive_int(name)
        for name in ("lr_warmup_steps", "num_validation_pairs", "seed"):
            positive_int(name, 0)
        if self.timestep_sampler not in TIMESTEP_SAMPLERS:
            raise ValueError(f"train.timestep_sampler must be 'clamped_uniform' (paper Eq. 5-6) or 'logit_normal' "
                             f"(SD3, the Table 3 ablation), got {self.timestep_sampler!r}")
        if not isinstance(self.timestep_eps, (int, float)) or not 0 <= self.timestep_eps < 1:
            raise ValueError(f"train.timestep_eps must be in [0, 1) (paper: 0.05), got {self.timestep_eps!r}")
        if not isinstance(self.logit_normal_std, (int, float)) or self.logit_normal_std <= 0:
            raise ValueError(f"train.logit_normal_std must be > 0 (SD3: 1.0), got {self.logit_normal_std!r}")
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be > 0 (paper: 1e-5), got {self.learning_rate!r}")
        if not isinstance(self.pixel_loss_weight, (int, float)) or self.pixel_loss_weight < 0:
            raise ValueError(f"train.pixel_loss_weight must be >= 0 (alpha of Eq. 10, paper: 1), "
                             f"got {self.pixel_loss_weight!r}")
        crop = self.pixel_loss_crop
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 8 or crop % 8):
            raise ValueError(f"train.pixel_loss_crop must be null or a positive multiple of 8 (pixels; the VAE "
                             f"downsamples by 8), got {crop!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"train.max_grad_norm must be null or > 0, got {self.max_grad_norm!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"train.mixed_precision must be 'no' or 'bf16' (paper: bf16), got {self.mixed_precision!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"train.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    def run_key(self, data_key: str, global_batch: int) -> str:
        """Hash of everything that changes what is learned: the checkpoint sub-folder of this run."""
        semantic = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NON_SEMANTIC}
        payload = json.dumps({"config": semantic, "data": data_key, "global_batch": global_batch}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


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


def sample_seed(seed: int, micro_step: int, position: int) -> int:
    """Seed of the generator of sample ``position`` of the global micro-batch ``micro_step``."""
    a, b = np.random.SeedSequence([seed, micro_step, position]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


# ----------------------------------------------------------------------------------------------------
# Pairs, buckets and the data order


@dataclass
class PairTable:
    """The training pairs: one row per pair with its HQ size (width, height); sorted by image_id."""

    rows: pd.DataFrame  # manifest columns + width, height
    lq_scale: int = 4

    @classmethod
    def from_manifest(cls, manifest: pd.DataFrame, lq_scale: int = 4) -> PairTable:
        """Check the manifest and read every image's size from its header (no decoding).

        HQ sides must be multiples of 16 (VAE /8, then 2x2 packing) and LQ exactly 1/lq_scale of HQ.
        """
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"pairs manifest lacks column(s) {missing}; it needs {list(MANIFEST_COLUMNS)} "
                             f"(the output of the fluxgen pipeline's degrade_pairs node)")
        if manifest.empty:
            raise ValueError("pairs manifest is empty: run the fluxgen pipeline first (kedro run --pipeline=fluxgen)")
        rows = manifest.sort_values("image_id").reset_index(drop=True).copy()
        sizes = []
        for row in rows.itertuples(index=False):
            for kind in ("hq", "lq"):
                if not Path(getattr(row, f"{kind}_path")).is_file():
                    raise FileNotFoundError(f"pair {row.image_id}: {kind.upper()} image {getattr(row, f'{kind}_path')} "
                                            "does not exist (rerun the fluxgen pipeline)")
            with Image.open(row.hq_path) as hq, Image.open(row.lq_path) as lq:
                (w, h), (lw, lh) = hq.size, lq.size
            if w % 16 or h % 16:
                raise ValueError(f"pair {row.image_id}: HQ {row.hq_path} is (width, height)={(w, h)}; both sides must "
                                 "be multiples of 16 (VAE /8 and 2x2 packing)")
            if (lw * lq_scale, lh * lq_scale) != (w, h):
                raise ValueError(f"pair {row.image_id}: LQ {row.lq_path} is {(lw, lh)} but must be exactly 1/{lq_scale} "
                                 f"of the HQ size {(w, h)}, i.e. {(w // lq_scale, h // lq_scale)}")
            sizes.append((w, h))
        rows["width"] = [s[0] for s in sizes]
        rows["height"] = [s[1] for s in sizes]
        return cls(rows, lq_scale)

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, num_validation: int) -> tuple[list[int], list[int]]:
        """(train indices, validation indices): the last ``num_validation`` pairs are held out."""
        n = len(self.rows)
        if num_validation >= n:
            raise ValueError(f"train.num_validation_pairs={num_validation} leaves no training pair out of {n}; "
                             f"use at most {n - 1}")
        return list(range(n - num_validation)), list(range(n - num_validation, n))

    def buckets(self, indices: list[int]) -> dict[tuple[int, int], list[int]]:
        """Indices grouped by HQ (width, height)."""
        out: dict[tuple[int, int], list[int]] = {}
        for i in indices:
            out.setdefault((int(self.rows.width[i]), int(self.rows.height[i])), []).append(i)
        return out

    def data_key(self) -> str:
        """Hash of the pairs' identities (image ids + sha256s)."""
        payload = json.dumps(self.rows[["image_id", "hq_sha256", "lq_sha256"]].astype(str).values.tolist())
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def epoch_batches(buckets: dict[tuple[int, int], list[int]], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch, each from one aspect bucket, in an order drawn from (seed, epoch).

    A bucket whose size is not a multiple of the batch wraps around to the start of its permutation.
    """
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for size in sorted(buckets):
        items = np.asarray(buckets[size])[rng.permutation(len(buckets[size]))]
        items = np.resize(items, math.ceil(len(items) / global_batch) * global_batch)
        batches += [items[i : i + global_batch].tolist() for i in range(0, len(items), global_batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


class DataOrder:
    """Global batch of micro-step g = f(seed, g): epoch g // E, position g % E (E batches per epoch)."""

    def __init__(self, buckets: dict[tuple[int, int], list[int]], global_batch: int, seed: int) -> None:
        self.buckets, self.global_batch, self.seed = buckets, global_batch, seed
        self.per_epoch = sum(math.ceil(len(v) / global_batch) for v in buckets.values())
        self._epoch, self._batches = -1, []

    def batch(self, micro_step: int) -> tuple[int, list[int]]:
        """(epoch, the global batch's pair indices) of a micro-step."""
        epoch = micro_step // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.buckets, self.global_batch, self.seed, epoch)
        return epoch, self._batches[micro_step % self.per_epoch]


# ----------------------------------------------------------------------------------------------------
# VAE latents and their cache


def load_pair_pixels(row: Any, lq_scale: int) -> tuple[Tensor, Tensor]:
    """(HQ (3, H, W), LQ upsampled x lq_scale bicubic (3, H, W)), float32 in [-1, 1]."""
    hq = torch.from_numpy(read_image(row.hq_path).copy()).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    lq = torch.from_numpy(read_image(row.lq_path).copy()).permute(2, 0, 1).float() / 127.5 - 1  # (3, H/4, W/4)
    lq_up = F.interpolate(lq[None], scale_factor=lq_scale, mode="bicubic", align_corners=False)[0].clamp(-1, 1)
    return hq, lq_up


def vae_identity(vae: Any) -> str:
    """Hash of the VAE's class, config and weights: part of every latent-cache key."""
    h = hashlib.sha256(type(vae).__name__.encode())
    h.update(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class LatentCache:
    """The VAE encoder's Gaussian parameters (2C, h, w) of each pair's HQ and upsampled LQ, on disk.

    Key = sha256(HQ sha256, LQ sha256, size, lq_scale, VAE identity): a changed image (new sha256 in the
    manifest) or VAE never reuses a stale entry. Files are written atomically (temp file + rename).
    """

    def __init__(self, root: str | os.PathLike | None, vae_id: str) -> None:
        self.root = Path(root) if root is not None else None
        self.vae_id = vae_id

    def key(self, row: Any, lq_scale: int) -> str:
        payload = f"{row.hq_sha256}|{row.lq_sha256}|{row.width}x{row.height}|x{lq_scale}|bicubic|{self.vae_id}"
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, Tensor] | None:
        if self.root is None or not self.path(key).is_file():
            return None
        return load_file(self.path(key))

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        if self.root is None:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)


def _where(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a module's first parameter (diffusers' ``.dtype`` walks every sub-module: slow per step)."""
    p = next(module.parameters())
    return p.device, p.dtype


def encode_gaussian(vae: Any, images: Tensor) -> Tensor:
    """VAE encoder: images (B, 3, H, W) in [-1, 1] -> Gaussian parameters (B, 2C, h, w) = [mean, logvar]."""
    return vae.encode(images.to(*_where(vae))).latent_dist.parameters


def pair_gaussians(vae: Any, cache: LatentCache, pairs: PairTable, index: int) -> tuple[Tensor, Tensor]:
    """(HQ, LQ) Gaussian parameters (2C, h, w) of one pair, from the cache or encoded (and cached)."""
    row = pairs.rows.iloc[index]
    key = cache.key(row, pairs.lq_scale)
    hit = cache.get(key)
    if hit is not None:
        return hit["hq"].to(*_where(vae)), hit["lq"].to(*_where(vae))
    for kind in ("hq", "lq"):  # the cache key trusts the manifest's sha256: check it when we read the file
        actual = sha256_file(row[f"{kind}_path"])
        if actual != row[f"{kind}_sha256"]:
            raise ValueError(f"pair {row.image_id}: {row[f'{kind}_path']} has sha256 {actual[:12]}... but the manifest "
                             f"says {str(row[f'{kind}_sha256'])[:12]}...: the file changed after the manifest was "
                             "written; rerun the fluxgen pipeline to rebuild pairs_manifest")
    hq, lq_up = load_pair_pixels(row, pairs.lq_scale)
    with torch.no_grad():
        params = encode_gaussian(vae, torch.stack([hq, lq_up]))  # (2, 2C, h, w)
    cache.put(key, {"hq": params[0].cpu(), "lq": params[1].cpu()})
    return params[0], params[1]


def gaussian_sample(params: Tensor, noise: Tensor, vae: Any) -> Tensor:
    """Normalised Flux latent (.., C, h, w) = ((mean + std * noise) - shift_factor) * scaling_factor."""
    mean, logvar = params.float().chunk(2, dim=-3)
    z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise.to(mean.device)
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def decode_latents(vae: Any, z: Tensor) -> Tensor:
    """Normalised latents (B, C, h, w) -> images (B, 3, 8h, 8w), about [-1, 1] (the frozen V_d)."""
    z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    return vae.decode(z.to(_where(vae)[1])).sample


def pack(z: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): Flux's 2x2 patches, flattened (FluxPipeline._pack_latents)."""
    from fluxir.restoration.sampler import pack as pack_grid

    return pack_grid(z).flatten(1, 2)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of ``pack`` (h, w: latent size)."""
    from fluxir.restoration.sampler import unpack as unpack_grid

    return unpack_grid(x.view(x.shape[0], h // 2, w // 2, -1))


def image_ids(h: int, w: int, device: torch.device | str) -> Tensor:
    """Flux's rope positions of the packed image tokens, (h/2 * w/2, 3), for an (h, w) latent."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(None, h // 2, w // 2, device, torch.float32)


# ----------------------------------------------------------------------------------------------------
# Models


class ControlledFlux(nn.Module):
    """What DDP / FSDP / DeepSpeed wrap: the trainable adapter. The frozen Flux is held outside the
    module tree, so it is never broadcast, synchronised or sharded as a trainable model."""

    def __init__(self, flux: nn.Module, adapter: FluxIRAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        object.__setattr__(self, "flux", flux)  # not a registered sub-module

    def forward(self, z_t, z_lq, prompt, pooled, t, img_ids, txt_ids, guidance):
        """Predicted velocity v_p (B, N, 64) of the controlled Flux (Eq. 1-4)."""
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
    from fluxir.fluxgen.generate import PromptEncoder
    from fluxir.models.flux import load_pipeline

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
    device = _where(vae)[0]
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
    guidance = torch.full((b,), cfg.guidance, device=z_t.device) if flux.config.guidance_embeds else None
    s = prompt.shape[1]
    v_p = model(
        z_t.to(_where(flux)[1]), batch.z_lq.to(_where(flux)[1]), prompt.expand(b, -1, -1), pooled.expand(b, -1),
        batch.t, image_ids(batch.h, batch.w, z_t.device), torch.zeros(s, 3, device=z_t.device), guidance,
    )  # (B, N, 64)
    mse = F.mse_loss(v_p.float(), v_gt.float())  # Eq. 8
    if cfg.pixel_loss_weight == 0:
        return mse, mse.detach(), torch.zeros((), device=mse.device)
    # Eq. 9 as written: V_d(z_0 + t v_p) vs V_d(z_0 + t v_gt). Note z_0 + t v_gt = (1 - t) z_0 + t z_1 = z_t:
    # the target is the decoded *noisy* latent, and the latent error is t (v_p - v_gt), the same error as
    # the x_0-prediction form (z_t - t v_p vs z_0); only the point where the decoder is evaluated differs.
    pred = unpack(batch.z0 + t * v_p.float(), batch.h, batch.w)  # (B, 16, h, w)
    target = unpack(batch.z0 + t * v_gt, batch.h, batch.w)
    if batch.crops is not None:  # decode the same random window of both (memory: see docs/training.md)
        k = cfg.pixel_loss_crop // 8
        pred = torch.stack([p[:, r : r + k, c : c + k] for p, (r, c) in zip(pred, batch.crops)])
        target = torch.stack([p[:, r : r + k, c : c + k] for p, (r, c) in zip(target, batch.crops)])
    with torch.no_grad():
        x_target = decode_latents(vae, target)  # (B, 3, 8h, 8w)
    x_pred = decode_latents(vae, pred)  # gradient flows through the frozen decoder into v_p
    pixel = F.l1_loss(x_pred.float(), x_target.float())  # Eq. 9
    return mse + cfg.pixel_loss_weight * pixel, mse.detach(), pixel.detach()  # Eq. 10


# ----------------------------------------------------------------------------------------------------
# Validation restorations: exactly what `kedro run --pipeline=restore` does (fluxir.restoration.sampler.Restorer)


def validation_grid(models: Models, adapter: FluxIRAdapter, pairs: PairTable, indices: list[int],
                    cfg: TrainConfig) -> np.ndarray:
    """uint8 (rows*H, 3*W, 3) grid: one row per validation pair, [LQ upsampled | restored | HQ]."""
    import copy

    from fluxir.restoration.sampler import upsample_condition
    from fluxir.restoration.sampler import RestoreConfig, Restorer

    device, dtype = _where(models.flux)
    restore_cfg = RestoreConfig(steps=cfg.validation_steps, guidance=cfg.guidance, seed=cfg.seed, scale=pairs.lq_scale,
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
# Checkpoints


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
    tmp = run_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        save_adapter(adapter, tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra, "history": history}, indent=1))
        old = run_dir / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        if final.exists():  # the same step written again: the complete old one stays until the new one is in place
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
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


# ----------------------------------------------------------------------------------------------------
# Metrics


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory of this process: CUDA max allocated on GPU, peak RSS on CPU (MiB)."""
    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def weights_digest(adapter: nn.Module) -> str:
    """sha256 of the adapter's weights (to compare processes)."""
    h = hashlib.sha256()
    for name, p in sorted(adapter.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class MlflowLogger:
    """Logs to the active MLflow run (kedro-mlflow's, or the CLI's) on the main process; no-op otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.run = None
        if enabled:
            import mlflow

            self.run = mlflow.active_run()

    def params(self, params: dict[str, Any]) -> None:
        if self.run is None:
            return
        import mlflow

        present = mlflow.get_run(self.run.info.run_id).data.params  # kedro-mlflow logged params:train already
        new = {k: str(v)[:6000] for k, v in params.items() if k not in present}
        if new:
            mlflow.log_params(new)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_metrics(metrics, step=step)

    def image(self, image: np.ndarray, name: str) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_image(image, artifact_file=name)


# ----------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    adapter: FluxIRAdapter  # the trained FluxIRAdapter (unwrapped, float32)
    history: pd.DataFrame  # one row per optimizer step: step, loss, loss_mse, loss_pixel, lr, grad_norm, ...
    run_dir: Path  # checkpoint folder of this run (checkpoint_dir/<run key>)
    resumed_from: int  # step of the checkpoint it resumed from (0: fresh start)


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0


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
    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    # cpu=True also makes a multi-process CPU launch (gloo) see its world size.
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process

    # 1. Data: pairs, buckets, held-out validation pairs, the (seed, step) -> batch order.
    pairs = PairTable.from_manifest(manifest, cfg.lq_scale)
    train_idx, val_idx = pairs.split(cfg.num_validation_pairs)
    buckets = pairs.buckets(train_idx)
    global_batch = cfg.batch_size * world
    order = DataOrder(buckets, global_batch, cfg.seed)

    # 2. Models: frozen Flux + VAE, the empty prompt, the trainable adapter, AdamW, constant lr + warm-up.
    models = load_models(cfg, device)
    cache = LatentCache(cfg.latent_cache_dir if cfg.cache_latents else None, vae_identity(models.vae))
    adapter = build_adapter(cfg, models).to(device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.lr_warmup_steps))

    # 3. Resume from the newest checkpoint of this run (same settings, same data), if any.
    run_key = cfg.run_key(pairs.data_key(), global_batch * cfg.gradient_accumulation_steps)
    run_dir = Path(cfg.checkpoint_dir) / run_key
    history: list[dict[str, Any]] = []
    start = 0
    if main:  # leftovers of a run killed while writing a checkpoint; a fresh start drops old checkpoints
        for leftover in run_dir.glob(".tmp-*") if run_dir.is_dir() else []:
            shutil.rmtree(leftover, ignore_errors=True)
        if not cfg.resume and list_checkpoints(run_dir):
            logger.warning("train.resume is false: deleting the checkpoints in %s and starting over", run_dir)
            for _, path in list_checkpoints(run_dir):
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    found = list_checkpoints(run_dir) if cfg.resume else []
    if found:
        state = load_checkpoint(found[-1][1], adapter, optimizer, scheduler)
        start, history = state["step"], state["history"][: state["step"]]
        logger.info("resuming from %s (step %d)", found[-1][1], start)
    model = ControlledFlux(models.flux, adapter)
    model, optimizer = accelerator.prepare(model, optimizer)  # DDP etc.; the scheduler is stepped by hand
    trainable = [p for p in adapter.parameters() if p.requires_grad]

    log = MlflowLogger(main)
    sizes = {f"{w}x{h}": len(v) for (w, h), v in sorted(buckets.items())}
    log.params({**flatten_dict(dataclasses.asdict(cfg), "train."), **flatten_dict({
        "num_processes": world, "global_batch_size": global_batch * cfg.gradient_accumulation_steps,
        "num_train_pairs": len(train_idx), "num_validation_pairs": len(val_idx), "buckets": json.dumps(sizes),
        "adapter_parameters": count_parameters(adapter), "run_key": run_key, "resumed_from_step": start,
    }, "train_run.")})
    if main:
        logger.info("training %s: %d pairs in buckets %s, %d process(es), global batch %d x %d accumulation, "
                    "steps %d -> %d, checkpoints in %s", cfg.model, len(train_idx), sizes, world, global_batch,
                    cfg.gradient_accumulation_steps, start, cfg.max_steps, run_dir)

    bar = progress_bar(total=cfg.max_steps, initial=start, desc="train", unit="step", disable=not (progress and main))
    window: list[dict[str, Any]] = []
    step = start
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        parts, seen, ts = [], [], []
        for k in range(cfg.gradient_accumulation_steps):
            g = step * cfg.gradient_accumulation_steps + k  # global micro-step
            epoch, batch_ids = order.batch(g)
            mine = list(range(rank * cfg.batch_size, (rank + 1) * cfg.batch_size))  # positions in the global batch
            gaussians = [pair_gaussians(models.vae, cache, pairs, batch_ids[j]) for j in mine]
            batch = make_micro_batch(cfg, models.vae, gaussians, [sample_seed(cfg.seed, g, j) for j in mine])
            sync = k == cfg.gradient_accumulation_steps - 1
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                loss, mse, pixel = flow_matching_loss(model, models.flux, models.vae, batch, models.prompt_embeds,
                                                      models.pooled_embeds, cfg)
                accelerator.backward(loss / cfg.gradient_accumulation_steps)
            parts.append(torch.stack([loss.detach().float(), mse.float(), pixel.float()]))
            seen += [int(pairs.rows.image_id[batch_ids[j]]) for j in mine]
            ts.append(batch.t.detach().float())
        parts = accelerator.gather(torch.stack(parts)[None])  # (world, accum, 3): every process sees all
        loss_v, mse_v, pixel_v = (float(x) for x in parts.mean(dim=(0, 1)))
        norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm or float("inf"))  # None under DeepSpeed
        grad_norm = float("nan") if norm is None else float(norm)
        if not torch.isfinite(parts).all() or (norm is not None and not math.isfinite(grad_norm)):
            good = list_checkpoints(run_dir)
            where = f"the last good checkpoint is {good[-1][1]} (step {good[-1][0]})" if good else "no checkpoint was written yet"
            raise FloatingPointError(
                f"non-finite training loss at step {step + 1} (loss={loss_v}, mse={mse_v}, pixel={pixel_v}, "
                f"grad_norm={grad_norm}); stopped before the optimizer step, {where}. Lower train.learning_rate "
                f"(now {cfg.learning_rate}) or set train.max_grad_norm, then rerun to resume from that checkpoint."
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        dt = time.perf_counter() - t0
        row = {"step": step, "loss": loss_v, "loss_mse": mse_v, "loss_pixel": pixel_v,
               "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "epoch": epoch,
               "t_mean": float(torch.cat(ts).mean()),
               "samples_per_s": global_batch * cfg.gradient_accumulation_steps / dt}
        history.append(row)
        window.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", samples_s=f"{row['samples_per_s']:.2f}")
        if step_callback is not None:
            step_callback(step, accelerator.unwrap_model(model).adapter, {"image_ids": seen, "epoch": epoch})

        if main and (step % cfg.log_every == 0 or step == cfg.max_steps):
            mean = {k: float(np.mean([r[k] for r in window])) for k in ("loss", "loss_mse", "loss_pixel", "grad_norm",
                                                                        "samples_per_s", "t_mean")}
            log.metrics({**{f"train/{k}": v for k, v in mean.items()}, "train/lr": row["lr"],
                         "train/peak_memory_mb": peak_memory_mb(device), "train/epoch": float(epoch)}, step)
            window = []
        unwrapped = accelerator.unwrap_model(model).adapter
        if log.run is not None and val_idx and (step % cfg.validate_every == 0 or step == cfg.max_steps):
            with accelerator.autocast():
                grid = validation_grid(models, unwrapped, pairs, val_idx, cfg)
            log.image(grid, f"validation/step_{step:08d}.png")
        if main and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
            save_checkpoint(run_dir, step, unwrapped, optimizer, scheduler, history,
                            {"run_key": run_key, "seed": cfg.seed, "num_processes": world, "written_by_rank": rank,
                             "max_steps": cfg.max_steps}, cfg.keep_checkpoints)
    bar.close()
    accelerator.wait_for_everyone()
    adapter = accelerator.unwrap_model(model).adapter
    return TrainResult(adapter=adapter, history=pd.DataFrame(history), run_dir=run_dir, resumed_from=start)


# ----------------------------------------------------------------------------------------------------
# Command line (accelerate launch -m fluxir.training)


def _load_catalog(env: str) -> Any:
    from fluxir.config import load_catalog

    return load_catalog(env)


def _mlflow_settings(env: str) -> dict[str, Any]:
    from kedro.config import MissingConfigException, OmegaConfigLoader

    from fluxir.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader("conf", **{**CONFIG_LOADER_ARGS, "default_run_env": env},
                               config_patterns={"mlflow": ["mlflow*", "mlflow*/**"]})
    try:
        return dict(loader["mlflow"])
    except MissingConfigException:  # no mlflow.yml: MLflow's own defaults
        return {}


def main(argv: list[str] | None = None) -> None:
    """Train the FluxIR adapter on one or many processes (``accelerate launch -m fluxir.training``)."""
    from fluxir.config import load_params

    parser = argparse.ArgumentParser(prog="python -m fluxir.training", description=main.__doc__)
    parser.add_argument("--env", default="local", help="Kedro configuration environment (base, tiny, local)")
    parser.add_argument("--params", action="append", default=[], help="override, e.g. train.max_steps=50 (repeatable)")
    parser.add_argument("--project", default=".", help="Kedro project root (conf/, data/, mlflow.db); the run works there")
    parser.add_argument("--manifest", default=None, help="pairs parquet (default: the catalog's latest pairs_manifest)")
    parser.add_argument("--output", default=None, help="adapter folder (default: a new version of catalog fluxir_adapter)")
    parser.add_argument("--report", default=None, help="write per-step weight digests to <report>.rank<r>.json")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    manifest_path, output, report_path = (Path(p).resolve() if p else None for p in (args.manifest, args.output, args.report))

    os.chdir(args.project)  # relative paths of conf/ and the catalog are the project's
    cfg = TrainConfig.from_params(load_params(args.env, args.params, ".")["train"])
    # Without cpu=True accelerate ignores WORLD_SIZE on a CPU-only machine and every process thinks it is alone.
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    catalog = _load_catalog(args.env)
    manifest = pd.read_parquet(manifest_path) if manifest_path else catalog.load("pairs_manifest")

    report: list[dict[str, Any]] = []

    def record(step: int, adapter: FluxIRAdapter, info: dict[str, Any]) -> None:
        report.append({"step": step, "digest": weights_digest(adapter), **info})

    mlflow = None
    if state.is_main_process and not args.no_mlflow:  # only rank 0 ever talks to MLflow
        import mlflow

        settings = _mlflow_settings(args.env)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.get("server", {}).get("mlflow_tracking_uri")
        if uri:
            mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(settings.get("tracking", {}).get("experiment", {}).get("name") or "fluxir")
        mlflow.start_run(run_name="train-cli", tags={"fluxir.entry": "python -m fluxir.training",
                                                     "fluxir.num_processes": str(state.num_processes)})
    status = "FAILED"
    try:
        result = train(cfg, manifest, progress=state.is_local_main_process,
                       step_callback=record if report_path else None)
        status = "FINISHED"
    finally:
        if mlflow is not None:
            mlflow.end_run(status=status)
    if report_path:
        Path(f"{report_path}.rank{state.process_index}.json").write_text(
            json.dumps({"resumed_from": result.resumed_from, "steps": report}))
    if state.is_main_process:
        if output:
            save_adapter(result.adapter, output)
        else:
            catalog.save("fluxir_adapter", result.adapter)
        last = result.history.iloc[-1].to_dict() if len(result.history) else {}
        print(json.dumps({"adapter": str(output or "catalog:fluxir_adapter"), "run_dir": str(result.run_dir),
                          "resumed_from": result.resumed_from, "final_step": int(last.get("step", result.resumed_from)),
                          "final_loss": last.get("loss"), "processes": state.num_processes}))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
