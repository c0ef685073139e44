"""Low-memory restoration on a scaled-down Flux (FLUX.1-dev's 19 + 38 blocks, width 32): every offload and
quantize mode restores an image; offload is exact on the CPU, int8 stays close to the plain mode.

On this CPU-only machine the offload execution device is the CPU: accelerate's hooks are installed and
run (``sequential`` really swaps each weight in from its CPU state dict and out to ``meta``), the moves
themselves are no-ops. Random-weight models prove the machinery, never quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxir.restoration import lowmem as L
from fluxir.restoration import sampler as S

from support import adapter_params, restore_config

# FLUX.1-dev's block structure at a width a CPU test can afford (2 heads x 16 = 32 channels).
SCALED = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 6, 6],
}


def scaled_restorer(**overrides) -> S.Restorer:
    """A restorer on freshly built (seeded, so identical every call) scaled Flux, tiny VAE and a responsive adapter."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.flux import build_tiny_vae, build_transformer, fixed_prompt_embeddings

    flux = build_transformer("flux1_dev_transformer", seed=0, **SCALED)
    assert (flux.config.num_layers, flux.config.num_single_layers) == (19, 38)
    prompt, pooled = fixed_prompt_embeddings(flux, seq_len=8)
    adapter = FluxIRAdapter.from_flux(flux, **adapter_params(text_seq_len=8, rank=4))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # give the zero-initialised control layers values, as training does
        for module in [adapter.input_proj, *[se.excite for se in adapter.se_z]]:
            module.weight.copy_(0.2 * torch.randn(module.weight.shape, generator=gen))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config
    cfg = restore_config(
        **{
            "steps": 3,
            "dtype": "float32",
            "device": "cpu",
            "tile_size": None,
            "vae_tile_size": None,
            "color_fix": "none",
            **overrides,
        }
    )
    return S.Restorer(flux, build_tiny_vae(0), scheduler, prompt, pooled, adapter, cfg)


LQ = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def plain() -> np.ndarray:
    return scaled_restorer().restore(LQ)


def test_model_offload_runs_through_the_hooks_and_gives_the_plain_image(plain):
    from accelerate.hooks import CpuOffload

    r = scaled_restorer(offload="model")
    transformer_hook, vae_hook = r.offload_hooks
    assert isinstance(r.transformer._hf_hook, CpuOffload) and isinstance(r.vae._hf_hook, CpuOffload)
    calls = {"transformer": 0, "vae": 0}
    for name, user_hook in (("transformer", transformer_hook), ("vae", vae_hook)):
        original = user_hook.hook.pre_forward

        def counted(module, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(module, *args, **kwargs)

        user_hook.hook.pre_forward = counted
    out = r.restore(LQ)
    assert calls == {"transformer": 3, "vae": 2}, "one transformer move per step call, VAE at encode and decode"
    assert np.array_equal(out, plain), "on the CPU, offload must not change a single pixel"


def test_sequential_offload_streams_every_weight_and_gives_the_plain_image(plain):
    r = scaled_restorer(offload="sequential")
    weight = r.transformer.single_transformer_blocks[37].proj_out.weight
    assert weight.device.type == "meta", "weights live in accelerate's CPU state dict, not in the module"
    out = r.restore(LQ)
    assert r.transformer.single_transformer_blocks[37].proj_out.weight.device.type == "meta"
    assert np.array_equal(out, plain)


@pytest.mark.parametrize(
    ("mode", "bytes_per_weight", "max_mean_error"),
    [
        ("int8", 1, 1.0),  # measured: mean |error| 0.13 grey levels, max 2
        ("fp8", 1, 3.0),  # e4m3 keeps 3 mantissa bits: measured mean 0.9, max 11
        ("nf4", 0.5, 8.0),  # 16 levels per block of 64: measured mean 3.3, max 33
    ],
)
def test_quantized_transformer_restores_close_to_plain_with_smaller_weights(
    plain, mode, bytes_per_weight, max_mean_error
):
    r = scaled_restorer(quantize=mode)
    plain_bytes = L.linear_weight_bytes(scaled_restorer().transformer)  # float32: 4 bytes per weight
    ratio = L.linear_weight_bytes(r.transformer) / plain_bytes
    assert bytes_per_weight / 4 <= ratio < bytes_per_weight / 4 * 1.15, "scales add < 15%"
    assert r.adapter.dtype == torch.float32 and type(r.adapter.input_proj.weight) is torch.nn.Parameter
    out = r.restore(LQ)
    assert out.shape == plain.shape
    error = np.abs(out.astype(int) - plain)
    assert 0 < error.mean() <= max_mean_error


def test_quantize_and_model_offload_combine(plain):
    out = scaled_restorer(quantize="int8", offload="model").restore(LQ)
    assert np.array_equal(out, scaled_restorer(quantize="int8").restore(LQ))


def test_from_source_loads_on_the_cpu_for_low_memory_modes(tiny_flux_dir):
    cfg = {
        "steps": 2,
        "dtype": "float32",
        "device": "cpu",
        "tile_size": None,
        "vae_tile_size": None,
        "color_fix": "none",
    }
    plain = S.Restorer.from_source(str(tiny_flux_dir), None, restore_config(**cfg)).restore(LQ)
    r = S.Restorer.from_source(str(tiny_flux_dir), None, restore_config(**cfg, offload="model", quantize="int8"))
    assert r.transformer._hf_hook is not None and type(r.transformer.proj_out.weight) is not torch.nn.Parameter
    assert np.abs(r.restore(LQ).astype(int) - plain).mean() <= 1.0
