"""Flux's latent packing: 2x2 latent patches as tokens, as a (h/2, w/2) grid or a flat sequence, and their rope
positions."""

from __future__ import annotations

import torch
from torch import Tensor

from fluxir.compat import latent_image_ids


# Adapted from diffusers.pipelines.flux.pipeline_flux.FluxPipeline._pack_latents (diffusers 0.42.1): the same
# 2x2 patches, kept as a (h/2, w/2) grid so restoration can cut tiles from it; ``pack`` flattens it.
def pack_grid(latents: Tensor) -> Tensor:
    """(B, C, h, w) latent -> (B, h/2, w/2, 4C) token grid."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2, w // 2, c * 4)


# Adapted from diffusers.pipelines.flux.pipeline_flux.FluxPipeline._unpack_latents (diffusers 0.42.1), on the grid.
def unpack_grid(grid: Tensor) -> Tensor:
    """(B, h/2, w/2, 4C) token grid -> (B, C, h, w) latent; inverse of ``pack_grid``."""
    b, h2, w2, d = grid.shape
    return grid.view(b, h2, w2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h2 * 2, w2 * 2)


def pack(z: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): the transformer's token sequence (``FluxPipeline._pack_latents``)."""
    return pack_grid(z).flatten(1, 2)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of ``pack`` (h, w: latent size)."""
    return unpack_grid(x.view(x.shape[0], h // 2, w // 2, -1))


def image_ids(grid_h: int, grid_w: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Flux's rope positions (grid_h * grid_w, 3) of a (grid_h, grid_w) token grid (an (2 grid_h, 2 grid_w) latent)."""
    return latent_image_ids(grid_h, grid_w, device, dtype)
