"""Flux as fluxir uses it: shipped model configs, stand-in prompt embeddings, latent normalisation and packing,
compiled blocks.

The tiny environment's ``data/01_raw/tiny/flux`` (a 2+2-block random-weight transformer, a 16-channel VAE, no
text encoders) runs the same code; tiny models prove the machinery, never image quality.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import Tensor

from fluxir.compat import latent_image_ids

CONFIGS = resources.files("fluxir") / "configs"


def load_config(name: str) -> dict[str, Any]:
    """A model config shipped with fluxir (``tiny_flux_transformer``, ``flux1_dev_transformer``, ``tiny_vae``)."""
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    config.pop("_class_name", None)
    return config


def build_transformer(config_name: str, seed: int = 0, device: str = "cpu", **overrides: Any):
    """A random-weight ``FluxTransformer2DModel`` from a shipped config (``device="meta"`` allocates nothing)."""
    torch.manual_seed(seed)
    with torch.device(device):
        return FluxTransformer2DModel(**{**load_config(config_name), **overrides})


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A random-weight 16-latent-channel ``AutoencoderKL`` (4 levels of 8 channels) from ``configs/tiny_vae.json``."""
    torch.manual_seed(seed)
    return AutoencoderKL(**load_config("tiny_vae"))


def fixed_prompt_embeddings(transformer, seq_len: int = 8, seed: int = 0):
    """Deterministic stand-ins for T5/CLIP: (prompt_embeds (1, seq_len, joint), pooled (1, pooled_dim))."""
    cfg = transformer.config
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randn(1, seq_len, cfg.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
    return prompt.to(transformer.dtype), pooled.to(transformer.dtype)


def normalise_latents(vae: Any, latents: Any) -> Any:
    """The VAE's latents -> the transformer's: ``(z - shift_factor) * scaling_factor`` (no shift_factor: 0)."""
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def denormalise_latents(vae: Any, latents: Any) -> Any:
    """The inverse of :func:`normalise_latents`."""
    return latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)


# ----------------------------------------------------------------------------------------------------
# Packing: 2x2 latent patches as tokens


# Adapted from diffusers.pipelines.flux.pipeline_flux.FluxPipeline._pack_latents (diffusers 0.42.1): the same
# 2x2 patches, kept as a (h/2, w/2) grid so restoration can cut tiles from it; ``pack`` flattens it.
def pack_grid(latents: Tensor) -> Tensor:
    """(B, C, h, w) latent -> (B, h/2, w/2, 4C) token grid."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2, w // 2, c * 4)


# Adapted from diffusers.pipelines.flux.pipeline_flux.FluxPipeline._unpack_latents (diffusers 0.42.1), on the grid.
def unpack_grid(grid: Tensor) -> Tensor:
    """(B, h/2, w/2, 4C) token grid -> (B, C, h, w) latent."""
    b, h2, w2, d = grid.shape
    return grid.view(b, h2, w2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h2 * 2, w2 * 2)


def pack(z: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): the transformer's token sequence."""
    return pack_grid(z).flatten(1, 2)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w) (h, w: latent size)."""
    return unpack_grid(x.view(x.shape[0], h // 2, w // 2, -1))


def image_ids(grid_h: int, grid_w: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Flux's rope positions (grid_h * grid_w, 3) of a (grid_h, grid_w) token grid."""
    return latent_image_ids(grid_h, grid_w, device, dtype)


# ----------------------------------------------------------------------------------------------------
# torch.compile


def compile_blocks(flux: Any, adapter: Any = None) -> None:
    """``torch.compile`` every Flux transformer block and the adapter's block, in place.

    Module names and state dicts stay unchanged, and blocks of one kind share one compiled graph (FLUX.1-dev's
    first step compiles two, not 57). The embedders and the sampler's loop stay eager (shapes change per tile).
    """
    blocks = [*flux.transformer_blocks, *flux.single_transformer_blocks]
    if adapter is not None:
        blocks.append(adapter.block)
    for block in blocks:
        block.compile()
