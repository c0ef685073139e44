"""diffusers 0.42.1 and accelerate 1.16, as Flux's forward uses them: its rope positions, its gradient-checkpointing
function and the offload hook.

``fluxir.models.controlled_flux.controlled_flux_forward`` re-runs ``FluxTransformer2DModel.forward`` of this
version block by block, so it needs the model's own checkpointing function
(``_gradient_checkpointing_func``, set by ``enable_gradient_checkpointing``) and the token positions
FluxPipeline builds (``_prepare_latent_image_ids``, a static method with no public equivalent). Model CPU offload
(accelerate) moves a module to its execution device in ``_hf_hook.pre_forward``; code that calls Flux's
sub-modules itself fires it the way diffusers' ``apply_forward_hook`` does for ``vae.encode``.
"""

from __future__ import annotations

from typing import Any

from fluxir.compat import require

require("diffusers", ">=0.42.1,<0.43", __name__)
require("accelerate", ">=1.15,<1.17", __name__)


def checkpointed(module: Any, block: Any, *args: Any) -> Any:
    """``block(*args)`` under the module's own gradient checkpointing (as diffusers' forward calls it)."""
    return module._gradient_checkpointing_func(block, *args)


def latent_image_ids(grid_h: int, grid_w: int, device: Any, dtype: Any) -> Any:
    """FluxPipeline's rope positions (grid_h * grid_w, 3) of a (grid_h, grid_w) token grid."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(None, grid_h, grid_w, device, dtype)


def pre_forward(module: Any) -> None:
    """Run accelerate's pre-forward hook of ``module`` (moves it to its execution device); no-op without one."""
    if hasattr(module, "_hf_hook") and hasattr(module._hf_hook, "pre_forward"):
        module._hf_hook.pre_forward(module)
