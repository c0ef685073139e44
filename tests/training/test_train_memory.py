"""The training memory model (benchmarks/train_memory.py) against what autograd really saves, and its one source."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import Tensor

from fluxir.models.flux import load_config
from fluxir.training import ControlledFlux, Models, build_adapter, flow_matching_loss

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_memory = load_benchmark("train_memory")


def saved_by_autograd(loss: Tensor, weights: set[int]) -> int:
    """Bytes of the distinct storages autograd's graph holds for backward (walked from the loss), weights excluded."""
    storages, seen, stack = {}, set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in weights:
                        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack += [f for f, _ in node.next_functions]
    return sum(storages.values())


@pytest.mark.parametrize("pixel_loss", ["whole", "none"])
def test_the_activation_estimate_matches_what_autograd_saves_on_a_tiny_model(pixel_loss):
    """The model's count on fake tensors (CPU autocast here) within 10% of the real step's saved bytes."""
    torch.set_num_threads(1)
    width, height, batch_size, text_len = 128, 96, 2, 8
    cfg = train_memory.train_config(pixel_loss, checkpointing=False)
    flux_config, vae_config = load_config("tiny_flux_transformer"), load_config("tiny_vae")
    models, model = train_memory.build_models(flux_config, vae_config, torch.float32, "cpu", text_len, cfg,
                                              train_memory.fake_mode())
    with train_memory.fake_mode():
        batch = train_memory.micro_batch(batch_size, width, height, cfg, "cpu")
    estimate = train_memory.count_step(models, model, batch, cfg, "cpu")
    # The same step for real: random weights, real tensors, CPU autocast.
    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**flux_config).requires_grad_(False).eval()
    vae = AutoencoderKL(**vae_config).requires_grad_(False).eval()
    real = Models(flux, vae, torch.randn(1, text_len, flux.config.joint_attention_dim),
                  torch.randn(1, flux.config.pooled_projection_dim), {})
    adapter = build_adapter(cfg, real)
    n = height // 16 * width // 16
    from fluxir.training import MicroBatch

    step = MicroBatch(*(torch.randn(batch_size, n, 64) for _ in range(3)), t=torch.full((batch_size,), 0.5),
                      crops=None, h=height // 8, w=width // 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = flow_matching_loss(ControlledFlux(flux, adapter), flux, vae, step, real.prompt_embeds,
                                        real.pooled_embeds, cfg)
    weights = {p.untyped_storage().data_ptr() for m in (flux, vae, adapter) for p in m.parameters()}
    actual = saved_by_autograd(loss, weights) / train_memory.GIB
    estimated = estimate["saved_flux_adapter"] + estimate["saved_decoder"]
    assert (estimate["saved_decoder"] > 0) == (pixel_loss == "whole")
    assert abs(estimated - actual) <= 0.1 * actual, (estimated, actual)
