"""accelerate 1.16: fire a module's offload hook when its ``forward`` is not the function called.

Model CPU offload moves a module to its execution device in ``_hf_hook.pre_forward``; code that calls the
sub-modules of Flux itself (``fluxir.models.controlled_flux.controlled_flux_forward``) fires it the way
diffusers' ``apply_forward_hook`` does for ``vae.encode``.
"""

from __future__ import annotations

from typing import Any

from fluxir.compat import require

require("accelerate", ">=1.15,<1.17", __name__)


def pre_forward(module: Any) -> None:
    """Run accelerate's pre-forward hook of ``module`` (moves it to its execution device); no-op without one."""
    if hasattr(module, "_hf_hook") and hasattr(module._hf_hook, "pre_forward"):
        module._hf_hook.pre_forward(module)
