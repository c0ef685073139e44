"""Low-memory modes for the frozen Flux: CPU offload (accelerate hooks) and quantised linear weights.

FLUX.1-dev's transformer is 11.9B parameters: 23.8 GB in bf16 before any activation, so a 24 GB card
cannot hold it. Two independent knobs (``restore.offload``, ``restore.quantize``) bring it down:

Offload (weights live on the CPU, accelerate moves them to the accelerator when they are used; nothing
here moves a tensor by hand):

- ``none``: everything on the accelerator (fastest).
- ``model``: ``accelerate.cpu_offload_with_hook`` on the transformer and on the VAE, chained both ways,
  so the VAE (encode, decode) and the transformer (the Euler steps) take turns on the accelerator: the
  peak is the larger of the two, i.e. the transformer. T5/CLIP are already dropped after the empty
  prompt is encoded once (``Restorer.from_pipeline``). Costs one host->device copy of each model per
  image, not per step. ``controlled_flux_forward`` walks the blocks instead of calling
  ``transformer.forward``, so it fires the transformer's hook itself, as diffusers' ``apply_forward_hook``
  does for ``vae.encode`` / ``vae.decode``.
- ``sequential``: ``accelerate.cpu_offload``: every leaf module's weights are copied to the accelerator
  just before it runs and dropped after (blocks are streamed); the accelerator holds one layer's weights
  plus activations. Slow (all 12B weights cross the bus at every step) but fits small cards.

On a CPU-only machine the execution device is the CPU: the hooks are installed and run (their moves are
no-ops; ``sequential`` still swaps every weight in from its CPU state dict and out to ``meta``), which
is what the CPU tests exercise.

Quantisation of the transformer's ``nn.Linear`` weights (the adapter is never quantised; it stays in
``restore.dtype``). Library choice, checked with torch 2.14.1 on this project's machines:

- ``int8``, ``fp8``: torchao (``quantize_`` with ``Int8WeightOnlyConfig`` / ``Float8WeightOnlyConfig``):
  maintained by the PyTorch team, runs on the CPU (so the CPU tests cover int8 and fp8) and on CUDA,
  where int8/fp8 weight-only matmuls are fused (fp8 needs compute capability >= 8.9: Ada, Hopper).
  Weights take 1 byte per parameter (+ one scale per output row): ~11.9 GB for FLUX.1-dev.
- ``nf4``: bitsandbytes ``Linear4bit`` (QLoRA's 4-bit NormalFloat, block size 64): the reference NF4
  implementation and the one diffusers' own ``BitsAndBytesConfig`` uses; bitsandbytes >= 0.46 also
  has a CPU path (slow, used only by the tests). ~0.5 byte per parameter + block scales: ~6.7 GB.
  optimum-quanto was not chosen: it is in maintenance mode and its int8 CPU path dequantises per call.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "sequential")
QUANTIZE_MODES = ("none", "int8", "fp8", "nf4")


def combination_problems(prefix: str, offload: str, quantize: str) -> list[str]:
    """The problem of an offload/quantize pair that cannot work together (each value is checked by
    ``RestoreConfig``'s rules); ``prefix`` names the parameter group, e.g. ``"restore."``."""
    if offload == "sequential" and quantize != "none":
        # accelerate's per-layer weight swapping rebuilds plain tensors from the CPU state dict; quantised
        # tensor subclasses (torchao, bitsandbytes) do not survive it.
        return [
            f"{prefix}offload=sequential cannot be combined with {prefix}quantize={quantize!r}: "
            "use offload=model with quantize, or sequential with quantize=none"
        ]
    return []


def quantize_transformer(transformer: nn.Module, mode: str) -> nn.Module:
    """Quantise every ``nn.Linear`` weight of the (frozen) Flux transformer in place; returns it.

    Call on the device the weights are on now (the CPU for offload modes): torchao and bitsandbytes
    quantise where the weights are, and the quantised tensors move with the module afterwards.
    """
    if mode == "none":
        return transformer
    if mode in ("int8", "fp8"):  # torchao / bitsandbytes are imported only by the mode that needs them (slow imports)
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        quantize_(transformer, Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig())
        return transformer
    if mode == "nf4":
        return _to_nf4(transformer)
    raise ValueError(f"restore.quantize must be one of {QUANTIZE_MODES}, got {mode!r}")


def _to_nf4(transformer: nn.Module) -> nn.Module:
    """Replace each ``nn.Linear`` by a bitsandbytes ``Linear4bit`` (nf4) holding the same weights."""
    import bitsandbytes as bnb

    linears = [(name, module) for name, module in transformer.named_modules() if type(module) is nn.Linear]
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name) if parent_name else transformer
        device, dtype = linear.weight.device, linear.weight.dtype
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=dtype,
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(linear.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        setattr(parent, child, q.to(device))  # .to() quantises the weight (on the CPU too)
    return transformer


def attach_offload(transformer: nn.Module, vae: nn.Module, mode: str, device: str) -> list[Any]:
    """Install accelerate's offload hooks for ``mode`` with ``device`` as the execution device.

    Returns the ``model`` mode's user hooks (transformer, VAE) so a caller can ``offload()`` the last
    one used; empty for ``none`` and ``sequential``.
    """
    if mode == "none":
        return []
    if mode == "model":
        from accelerate import cpu_offload_with_hook

        _, transformer_hook = cpu_offload_with_hook(transformer, device)
        _, vae_hook = cpu_offload_with_hook(vae, device, prev_module_hook=transformer_hook)
        transformer_hook.hook.prev_module_hook = vae_hook  # decode after the steps / encode of the next image
        return [transformer_hook, vae_hook]
    if mode == "sequential":
        from accelerate import cpu_offload

        cpu_offload(transformer, torch.device(device))
        cpu_offload(vae, torch.device(device))
        return []
    raise ValueError(f"restore.offload must be one of {OFFLOAD_MODES}, got {mode!r}")


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes held by the weights of ``module``'s linear layers as stored (quantised or not, incl. scales)."""
    total = 0
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            total += _tensor_bytes(sub.weight)
    return total


def _tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor, looking inside torchao / bitsandbytes quantised tensors."""
    quant_state = getattr(t, "quant_state", None)
    if quant_state is not None:  # bitsandbytes Params4bit: packed 4-bit data + one absmax per block
        return t.numel() * t.element_size() + quant_state.absmax.numel() * quant_state.absmax.element_size()
    if hasattr(t, "__tensor_flatten__"):  # torchao subclasses: the int8/fp8 data and the scales inside
        inner, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, name)) for name in inner)
    return t.numel() * t.element_size()
