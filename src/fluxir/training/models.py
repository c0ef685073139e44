"""The frozen parts of training (Flux, VAE, the empty prompt) and the trainable adapter around them (Sec. 3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fluxir.models.adapter import FluxIRAdapter
from fluxir.models.controlled_flux import controlled_flux_forward, freeze_flux
from fluxir.models.empty_prompt import load_with_empty_prompt
from fluxir.training.config import TrainConfig


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
        return controlled_flux_forward(
            self.flux, self.adapter, z_t, z_lq, prompt, pooled, t, img_ids, txt_ids, guidance=guidance
        )


@dataclass
class Models:
    """The frozen parts (Flux, VAE, the empty prompt's embeddings) and the scheduler config for sampling."""

    flux: nn.Module  # FluxTransformer2DModel, frozen
    vae: nn.Module  # AutoencoderKL, frozen
    prompt_embeds: Tensor  # (1, S, joint_attention_dim)
    pooled_embeds: Tensor  # (1, pooled_projection_dim)
    scheduler_config: dict[str, Any]


def load_models(cfg: TrainConfig, device: torch.device | str, prompt_cache: str | Path | None = None) -> Models:
    """Load Flux and the VAE with the empty prompt's embeddings, freeze both.

    The embeddings come from ``prompt_cache`` when there (T5 and CLIP are then never loaded); otherwise
    the prompt is encoded once, saved there, and the encoders dropped (``fluxir.models.empty_prompt``).
    """
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
