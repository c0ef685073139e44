"""The training loss of one micro-batch (paper Eq. 5-10) and the models it runs through (Sec. 3.2, 3.3).

    t = f(u) = clamp(u, 0, 1), u ~ U(-eps, 1 + eps)          (Eq. 5-6; P(t=0) = P(t=1) = eps/(1+2eps))
    z_t = (1 - t) z_0 + t z_1                                 (z_0 = HQ latent, z_1 ~ N(0, I))
    v_p = Flux(z_t, t, p, y) controlled by FluxIR(z_lq)      (Eq. 1-4, fluxir.models.adapter)
    v_gt = z_1 - z_0                                          (Eq. 7)
    L_MSE = ||v_p - v_gt||^2                                  (Eq. 8, mean over elements)
    L_P = ||V_d(z_0 + t v_p) - V_d(z_0 + t v_gt)||_1          (Eq. 9 as written, ``pixel_loss_form: paper``)
        or ||V_d(z_t - t v_p) - V_d(z_0)||_1                  (its clean-estimate reading, ``x0``)
    L = L_MSE + alpha L_P, alpha = 1                          (Eq. 10)

B = per-process batch, (h, w) = (H/8, W/8), N = h/2 * w/2 packed tokens, S = prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fluxir.models.adapter import FluxIRAdapter
from fluxir.models.controlled_flux import controlled_flux_forward, freeze_flux
from fluxir.models.flux import image_ids, pack, unpack
from fluxir.models.prompts import load_with_empty_prompt
from fluxir.training.config import PIXEL_LOSS_FORMS, TIMESTEP_SAMPLERS, TrainConfig
from fluxir.training.data import decode_latents, device_and_dtype, gaussian_sample

# ----------------------------------------------------------------------------------------------------
# The frozen Flux and VAE, and the trainable adapter around them


class ControlledFlux(nn.Module):
    """What DDP / FSDP / DeepSpeed wrap: the trainable adapter. The frozen Flux is held outside the
    module tree, so it is never broadcast, synchronised or sharded as a trainable model."""

    def __init__(self, flux: nn.Module, adapter: FluxIRAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        object.__setattr__(self, "flux", flux)  # not a registered sub-module

    def forward(self, z_t, z_lq, prompt, pooled, t, img_ids, txt_ids):
        """v_p (B, N, 64) of Eq. 1-4; a guidance-distilled Flux gets the adapter's ``config.guidance``, the value
        saved with it for restoration."""
        guidance = None
        if self.flux.config.guidance_embeds:
            guidance = torch.full((z_t.shape[0],), float(self.adapter.config.guidance), device=z_t.device)
        return controlled_flux_forward(
            self.flux, self.adapter, z_t, z_lq, prompt, pooled, t, img_ids, txt_ids, guidance=guidance
        )


@dataclass
class Models:
    flux: nn.Module  # FluxTransformer2DModel, frozen
    vae: nn.Module  # AutoencoderKL, frozen
    prompt_embeds: Tensor  # (1, S, joint_attention_dim)
    pooled_embeds: Tensor  # (1, pooled_projection_dim)
    scheduler_config: dict[str, Any]  # for the validation restorations


def load_models(cfg: TrainConfig, device: torch.device | str, prompt_cache: str | Path | None = None) -> Models:
    """Flux and the VAE, frozen, with the empty prompt's embeddings (from ``prompt_cache`` when there)."""
    pipe, encoder = load_with_empty_prompt(cfg.model, cfg.dtype, str(device), cfg.max_sequence_length, prompt_cache)
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
# Timesteps (Eq. 5-6) and per-sample randomness


def sample_timesteps(
    n: int,
    generator: torch.Generator,
    sampler: str = "clamped_uniform",
    eps: float = 0.05,
    mean: float = 0.0,
    std: float = 1.0,
) -> Tensor:
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


def make_micro_batch(
    cfg: TrainConfig, vae: nn.Module, gaussians: list[tuple[Tensor, Tensor]], seeds: list[int]
) -> MicroBatch:
    """Draw t, z_1, the VAE samples and the decoder crops of each sample from its own generator."""
    h, w = gaussians[0][0].shape[-2:]
    c = gaussians[0][0].shape[-3] // 2
    crop = None if cfg.pixel_loss_crop is None else cfg.pixel_loss_crop // 8
    z0, z1, zlq, ts, crops = [], [], [], [], []
    for (hq, lq), seed in zip(gaussians, seeds):
        g = torch.Generator().manual_seed(seed)
        ts.append(
            sample_timesteps(1, g, cfg.timestep_sampler, cfg.timestep_eps, cfg.logit_normal_mean, cfg.logit_normal_std)
        )
        z1.append(torch.randn(c, h, w, generator=g))
        z0.append(gaussian_sample(hq, torch.randn(c, h, w, generator=g), vae))
        zlq.append(gaussian_sample(lq, torch.randn(c, h, w, generator=g), vae))
        if crop is not None:
            top = int(torch.randint(0, max(h - crop, 0) + 1, (1,), generator=g))
            left = int(torch.randint(0, max(w - crop, 0) + 1, (1,), generator=g))
            crops.append((top, left))
    device = device_and_dtype(vae)[0]
    return MicroBatch(
        z0=pack(torch.stack(z0)).to(device),
        z1=pack(torch.stack(z1)).to(device),
        z_lq=pack(torch.stack(zlq)).to(device),
        t=torch.cat(ts).to(device),
        crops=crops if crop is not None else None,
        h=h,
        w=w,
    )


def flow_matching_loss(
    model: nn.Module,
    flux: nn.Module,
    vae: nn.Module,
    batch: MicroBatch,
    prompt: Tensor,
    pooled: Tensor,
    cfg: TrainConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """(L, L_MSE, L_P) of one micro-batch (Eq. 7-10); L_P is 0 when alpha = 0."""
    b = batch.z0.shape[0]
    t = batch.t.view(b, 1, 1)  # (B, 1, 1)
    z_t = (1 - t) * batch.z0 + t * batch.z1  # (B, N, 64), rectified flow
    v_gt = batch.z1 - batch.z0  # Eq. 7
    s = prompt.shape[1]
    flux_dtype = device_and_dtype(flux)[1]
    v_p = model(
        z_t.to(flux_dtype),
        batch.z_lq.to(flux_dtype),
        prompt.expand(b, -1, -1),
        pooled.expand(b, -1),
        batch.t,
        image_ids(batch.h // 2, batch.w // 2, z_t.device),
        torch.zeros(s, 3, device=z_t.device),
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


def pixel_loss_latents(
    z0: Tensor, z_t: Tensor, t: Tensor, v_p: Tensor, v_gt: Tensor, form: str
) -> tuple[Tensor, Tensor]:
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
