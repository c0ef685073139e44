"""diffusers 0.42.1: Flux's rope positions and its gradient-checkpointing function.

``fluxir.models.controlled_flux.controlled_flux_forward`` re-runs ``FluxTransformer2DModel.forward`` of this
version block by block, so it needs the model's own checkpointing function
(``_gradient_checkpointing_func``, set by ``enable_gradient_checkpointing``) and the token positions
FluxPipeline builds (``_prepare_latent_image_ids``, a static method with no public equivalent).
"""

from __future__ import annotations

from typing import Any

from fluxir.compat import require

require("diffusers", ">=0.42.1,<0.43", __name__)


def checkpointed(module: Any, block: Any, *args: Any) -> Any:
    """``block(*args)`` under the module's own gradient checkpointing (as diffusers' forward calls it)."""
    return module._gradient_checkpointing_func(block, *args)


def latent_image_ids(grid_h: int, grid_w: int, device: Any, dtype: Any) -> Any:
    """FluxPipeline's rope positions (grid_h * grid_w, 3) of a (grid_h, grid_w) token grid."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(None, grid_h, grid_w, device, dtype)
