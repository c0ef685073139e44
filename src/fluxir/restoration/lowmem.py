"""Low-memory modes for the frozen Flux (``restore.offload``, ``restore.quantize``; docs/restoration.md tables them):
FLUX.1-dev's transformer is 23.8 GB in bf16, more than a 24 GB card holds. accelerate's hooks move the weights, also
on the CPU (``controlled_flux_forward`` fires the transformer's hook itself, as ``apply_forward_hook`` does for the
VAE). Quantised with torchao (int8, fp8: CPU and CUDA) or bitsandbytes NF4 (a CPU path since 0.46), checked with torch
2.14.1; optimum-quanto was not chosen: it is in maintenance mode and its int8 CPU path dequantises per call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def quantize_transformer(transformer: nn.Module, mode: str) -> None:
    """Quantise every ``nn.Linear`` weight of the frozen transformer in place, where the weights are now (the CPU
    for offload modes); the quantised tensors move with the module afterwards."""
    if mode in ("int8", "fp8"):  # torchao / bitsandbytes are imported only by the mode that needs them (slow imports)
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        quantize_(transformer, Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig())
    elif mode == "nf4":
        _to_nf4(transformer)


def _to_nf4(transformer: nn.Module) -> None:
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


def attach_offload(transformer: nn.Module, vae: nn.Module, mode: str, device: str) -> list[Any]:
    """Install accelerate's offload hooks for ``mode``; returns the ``model`` mode's hooks (transformer, VAE)."""
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


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes held by the weights of ``module``'s linear layers as stored (quantised or not, incl. scales)."""
    return sum(_tensor_bytes(sub.weight) for sub in module.modules() if isinstance(sub, nn.Linear))


def _tensor_bytes(t: torch.Tensor) -> int:
    quant_state = getattr(t, "quant_state", None)
    if quant_state is not None:  # bitsandbytes Params4bit: packed 4-bit data + one absmax per block
        return t.numel() * t.element_size() + quant_state.absmax.numel() * quant_state.absmax.element_size()
    if hasattr(t, "__tensor_flatten__"):  # torchao subclasses: the int8/fp8 data and the scales inside
        inner, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, name)) for name in inner)
    return t.numel() * t.element_size()
