"""The frozen Flux transformer run block by block with the FluxIR adapter's controls added (paper Eq. 1-4), and the
LQ condition the adapter sees.

Shapes (FLUX.1-dev at 1024x1024): B batch, N = 4096 image tokens, S = 512 text tokens, c = 3072.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fluxir.compat import checkpointed, pre_forward
from fluxir.models.adapter import FluxIRAdapter
from fluxir.models.adapter_config import check_compatible


def lq_condition(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 LQ -> (height, width, 3) uint8 condition (Sec. 3.2: the LQ image at the output size).

    Training, restoration, evaluation and the validation grids all take it from here, so the adapter is trained
    on exactly the input it restores from: torch bicubic (a = -0.75), antialiased when shrinking, rounded to uint8.
    """
    if image.shape[:2] == (height, width):
        return image
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # (1, 3, h, w) in [0, 255]
    shrink = height < image.shape[0] or width < image.shape[1]
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=shrink)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def freeze_flux(flux: nn.Module) -> None:
    flux.requires_grad_(False)
    flux.eval()


# Adapted from diffusers.models.transformers.transformer_flux.FluxTransformer2DModel.forward (diffusers 0.42.1):
# the same steps, with the adapter's control added to both streams before every block.
def controlled_flux_forward(
    flux: nn.Module,
    adapter: FluxIRAdapter | None,
    hidden_states: Tensor,  # (B, N, 64) packed noisy latent z_t
    lq_latents: Tensor | None,  # (B, N, 64) packed LQ latent z_lq (unused when adapter is None)
    encoder_hidden_states: Tensor,  # (B, S, 4096) T5 prompt embedding
    pooled_projections: Tensor,  # (B, 768) pooled CLIP embedding
    timestep: Tensor,  # (B,) in [0, 1] (FluxPipeline passes t / 1000)
    img_ids: Tensor,  # (N, 3)
    txt_ids: Tensor,  # (S, 3)
    guidance: Tensor | None = None,  # (B,) guidance scale, as FluxPipeline passes it
    control_scale: float = 1.0,  # multiplies every control (restore.control_scale); 0 = plain Flux
) -> Tensor:
    """Flux's predicted velocity (B, N, 64) with z_c^i added to the image stream and p_c^i to the text stream right
    BEFORE block i; with ``adapter=None`` (or a fresh adapter, or ``control_scale=0``) it equals ``flux(...).sample``.
    """
    cfg = flux.config
    if adapter is not None:
        check_compatible(adapter, flux)
        if lq_latents is None:
            raise ValueError("lq_latents (B, N, in_channels) is required when an adapter is given")
    if cfg.guidance_embeds and guidance is None:
        raise ValueError("this Flux has guidance_embeds=True (FLUX.1-dev): pass guidance (B,)")
    if not cfg.guidance_embeds and guidance is not None:
        raise ValueError("this Flux has guidance_embeds=False: pass guidance=None")
    if img_ids.shape[0] != hidden_states.shape[1] or txt_ids.shape[0] != encoder_hidden_states.shape[1]:
        raise ValueError(
            f"img_ids {tuple(img_ids.shape)} / txt_ids {tuple(txt_ids.shape)} must have one row per "
            f"image token ({hidden_states.shape[1]}) / text token ({encoder_hidden_states.shape[1]})"
        )
    # flux.forward is never called here, so fire its accelerate hook (model CPU offload moves the
    # transformer to its execution device) the way diffusers' apply_forward_hook does for vae.encode.
    pre_forward(flux)
    x = flux.x_embedder(hidden_states)  # (B, N, c)
    t = timestep.to(x.dtype) * 1000
    g = guidance.to(x.dtype) * 1000 if guidance is not None else None
    temb = flux.time_text_embed(t, pooled_projections) if g is None else flux.time_text_embed(t, g, pooled_projections)
    ctx = flux.context_embedder(encoder_hidden_states)  # (B, S, c)
    image_rotary_emb = flux.pos_embed(torch.cat((txt_ids, img_ids), dim=0))  # cos, sin: (S + N, head_dim)

    controls = None
    if adapter is not None and control_scale != 0:
        f_z, f_p = adapter.features(
            hidden_states,
            lq_latents,
            encoder_hidden_states,
            pooled_projections,
            timestep,
            guidance=guidance,
            image_rotary_emb=image_rotary_emb,
        )
        controls = adapter.controls(f_z, f_p)
    for block in [*flux.transformer_blocks, *flux.single_transformer_blocks]:
        if controls is not None:  # control enters BEFORE the block (see fluxir.models.adapter)
            z_c, p_c = next(controls)
            x = x + control_scale * z_c.to(x.dtype)
            if p_c is not None:
                ctx = ctx + control_scale * p_c.to(ctx.dtype)
        if torch.is_grad_enabled() and flux.gradient_checkpointing:  # set by flux.enable_gradient_checkpointing()
            ctx, x = checkpointed(flux, block, x, ctx, temb, image_rotary_emb)
        else:
            ctx, x = block(hidden_states=x, encoder_hidden_states=ctx, temb=temb, image_rotary_emb=image_rotary_emb)
    x = flux.norm_out(x, temb)
    return flux.proj_out(x)  # (B, N, 64)
