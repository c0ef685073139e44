"""The training memory model (benchmarks/train_memory.py) against what autograd really saves, and its one source."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import Tensor

from fluxir.models.flux import load_config
from fluxir.training.loss import ControlledFlux, Models, build_adapter, flow_matching_loss

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
    models, model = train_memory.build_models(
        flux_config, vae_config, torch.float32, "cpu", text_len, cfg, train_memory.fake_mode()
    )
    with train_memory.fake_mode():
        batch = train_memory.micro_batch(batch_size, width, height, cfg, "cpu")
    estimate = train_memory.count_step(models, model, batch, cfg, "cpu")
    # The same step for real: random weights, real tensors, CPU autocast.
    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**flux_config).requires_grad_(False).eval()
    vae = AutoencoderKL(**vae_config).requires_grad_(False).eval()
    real = Models(
        flux,
        vae,
        torch.randn(1, text_len, flux.config.joint_attention_dim),
        torch.randn(1, flux.config.pooled_projection_dim),
        {},
    )
    adapter = build_adapter(cfg, real)
    n = height // 16 * width // 16
    from fluxir.training.loss import MicroBatch

    step = MicroBatch(
        *(torch.randn(batch_size, n, 64) for _ in range(3)),
        t=torch.full((batch_size,), 0.5),
        crops=None,
        h=height // 8,
        w=width // 8,
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = flow_matching_loss(
            ControlledFlux(flux, adapter), flux, vae, step, real.prompt_embeds, real.pooled_embeds, cfg
        )
    weights = {p.untyped_storage().data_ptr() for m in (flux, vae, adapter) for p in m.parameters()}
    actual = saved_by_autograd(loss, weights) / train_memory.GIB
    estimated = estimate["saved_flux_adapter"] + estimate["saved_decoder"]
    assert (estimate["saved_decoder"] > 0) == (pixel_loss == "whole")
    assert abs(estimated - actual) <= 0.1 * actual, (estimated, actual)


def test_docs_tables_and_preflight_budget_come_from_the_committed_memory_table():
    """One source: src/fluxir/configs/train_memory.json (benchmarks/train_memory.py --write)."""
    from fluxir.preflight.machine import train_memory_budget_gb

    table = json.loads(train_memory.OUTPUT.read_text())
    assert train_memory.markdown_table(table) in (ROOT / "docs/training.md").read_text()
    row = next(
        r
        for r in table["rows"]
        if (r["size"], r["batch_size"], r["pixel_loss"], r["gradient_checkpointing"]) == ("1024x768", 1, "whole", True)
    )
    assert train_memory_budget_gb(yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["train"])[
        1
    ] == round(row["total"] * 2**30 / 1e9, 1)
    crop = next(
        r
        for r in table["rows"]
        if (r["size"], r["batch_size"], r["pixel_loss"], r["gradient_checkpointing"])
        == ("1024x768", 4, "crop_512", True)
    )
    assert train_memory_budget_gb({"batch_size": 4, "pixel_loss_crop": 256})[1] == round(crop["total"] * 2**30 / 1e9, 1)
    # Under CUDA autocast the decoder's float32 norms would cost ~1.6x; the VAE runs outside it.
    whole = table["decoder_saved_gib_if_under_cuda_autocast"]["1024x768"]
    assert whole > 1.5 * row["saved_decoder"]


def test_full_scale_docs_quote_the_committed_memory_table():
    """docs/full_scale.md's memory figures (section 5 and the preflight list) are the memory model's."""
    from fluxir.preflight.machine import train_memory_budget_gb

    table = json.loads(train_memory.OUTPUT.read_text())
    docs = (ROOT / "docs/full_scale.md").read_text()
    static, fits = table["static_gib"], table["largest_batch_that_fits"]["80GB"]["1024x768"]
    whole = next(
        r["total"]
        for r in table["rows"]
        if (r["size"], r["batch_size"], r["pixel_loss"], r["gradient_checkpointing"]) == ("1024x768", 1, "whole", True)
    )
    gb = 2**30 / 1e9
    for quoted in (
        f"Flux bf16 ({static['flux_weights'] * gb:.1f} GB)",
        f"AdamW state (4 x {static['adapter_weights'] * gb:.1f} GB)",
        f"{table['static_total_gib']:.1f} GiB before activations",
        f"batch 1 with whole-image L_P {whole:.1f} GiB",
        f"up to {fits['whole']} samples with whole-image L_P or {fits['crop_512']} with `train.pixel_loss_crop=512`",
    ):
        assert quoted in docs
    defaults = yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["train"]
    assert f"{train_memory_budget_gb(defaults)[1]:.0f} GB at the defaults" in docs


gpu_cost = load_benchmark("gpu_cost")


def test_docs_cost_tables_come_from_the_stored_flop_counts():
    """docs/training.md's cost table and docs/full_scale.md's "Time" table: `gpu_cost.py --markdown`."""
    flops = gpu_cost.stored_flops()
    assert gpu_cost.training_md(flops) in (ROOT / "docs/training.md").read_text()
    assert gpu_cost.full_scale_md(flops) in (ROOT / "docs/full_scale.md").read_text()


def test_the_paper_runs_max_steps_fits_the_papers_budget_at_40_percent_mfu():
    plan = gpu_cost.cost_plan(8, "h800", 0.4, None, 96, gpu_cost.stored_flops())
    max_steps = yaml.safe_load((ROOT / "conf/run_paper.yml").read_text())["run"]["params"]["train"]["max_steps"]
    assert plan["paper"]["train_steps_in_budget_at_mfu"] == max_steps  # the paper's run file is its only copy
    assert plan["stages"]["train"]["gpu_hours"] <= plan["paper"]["gpu_hours"]  # 14 GPU-days on H800
    assert (
        plan["stages"]["train"]["steps"] + 1000
        > plan["paper"]["gpu_hours"] * 3600 * 989 * 0.4 / plan["train_step_tflop"]
    )
    # the YAML comment shows the derivation with the same numbers
    derivation = f"/ {plan['train_step_tflop']:,.0f} = {plan['paper_budget_steps_unrounded']:,}"
    assert derivation in (ROOT / "conf/run_paper.yml").read_text()


@pytest.mark.slow  # counts FLUX.1-dev's FLOPs on meta: about a minute on a shared 2-core machine
def test_the_stored_flop_counts_are_what_the_code_counts_now():
    """`gpu_cost.py --write` after a change to Flux, the adapter, the VAE or the loss keeps the docs honest."""
    fresh, stored = gpu_cost.flop_counts(), gpu_cost.stored_flops()
    assert fresh.keys() == stored.keys()
    for key, value in fresh.items():
        assert value == pytest.approx(stored[key], rel=1e-9), key
