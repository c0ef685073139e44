"""Flux models built from the configs fluxir ships, stand-in prompt embeddings, the VAE latent normalisation, and
compiling the blocks.

Loading a pipeline from a hub id or a local folder is ``fluxir.models.loading``; devices ``fluxir.models.devices``;
latent packing ``fluxir.models.packing``.

The tiny environment uses the same code. The committed ``data/01_raw/tiny/flux`` holds a 2+2-block
random-weight ``FluxTransformer2DModel`` and a 16-channel ``AutoencoderKL`` (the JSON configs in
``fluxir/configs``) and no text encoders: ``fixed_prompt_embeddings`` stands in for T5/CLIP there.
``scripts/tiny_models.py`` writes full-format folders (tokenizers and text encoders too) of the same models.
Tiny models prove the machinery, never image quality.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

CONFIGS = resources.files("fluxir") / "configs"


def load_config(name: str) -> dict[str, Any]:
    """A model config shipped with fluxir (``tiny_flux_transformer``, ``flux1_dev_transformer``, ``tiny_vae``)."""
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    config.pop("_class_name", None)
    return config


def build_transformer(config_name: str, seed: int = 0, device: str = "cpu", **overrides: Any):
    """A random-weight ``FluxTransformer2DModel`` from a shipped config (``device="meta"`` allocates nothing).

    ``overrides`` replace config fields, e.g. a narrow Flux with FLUX.1-dev's 19 + 38 blocks.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        return FluxTransformer2DModel(**{**load_config(config_name), **overrides})


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A random-weight 16-latent-channel ``AutoencoderKL`` (4 levels of 8 channels) from ``configs/tiny_vae.json``."""
    torch.manual_seed(seed)
    return AutoencoderKL(**load_config("tiny_vae"))


def fixed_prompt_embeddings(transformer, seq_len: int = 8, seed: int = 0):
    """Deterministic stand-in prompt embeddings for pipelines without text encoders (tiny models).

    Returns ``(prompt_embeds (1, seq_len, joint_attention_dim), pooled (1, pooled_projection_dim))``.
    """
    cfg = transformer.config
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randn(1, seq_len, cfg.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
    return prompt.to(transformer.dtype), pooled.to(transformer.dtype)


def normalise_latents(vae: Any, latents: Any) -> Any:
    """The VAE's latents -> the transformer's: ``(z - shift_factor) * scaling_factor`` (Flux's VAE config; a VAE
    without ``shift_factor`` shifts by 0)."""
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def denormalise_latents(vae: Any, latents: Any) -> Any:
    """The inverse of :func:`normalise_latents`: the transformer's latents -> what the VAE decodes."""
    return latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)


# ----------------------------------------------------------------------------------------------------
# torch.compile


def compile_blocks(flux: Any, adapter: Any = None) -> None:
    """``torch.compile`` every Flux transformer block and the adapter's block, in place.

    ``nn.Module.compile`` keeps module names and state dicts unchanged (checkpoints and saved adapters
    stay loadable without it), and all blocks of one kind share one compiled graph: on FLUX.1-dev the
    first step compiles two block graphs (plus the adapter's), not 57. On the CPU inductor needs a C++
    compiler; the embedders and the sampler's loop stay eager (small, and shapes change per tile).
    """
    blocks = [*flux.transformer_blocks, *flux.single_transformer_blocks]
    if adapter is not None:
        blocks.append(adapter.block)
    for block in blocks:
        block.compile()
