"""torch.compile of the Flux blocks and the adapter block: the same outputs and gradients as eager, within a tolerance.

Inductor compiles C++ kernels on the CPU, so these tests need a C++ compiler. The first run in a fresh
machine compiles for minutes; torch's inductor cache makes later runs take seconds.
"""

from __future__ import annotations

import contextlib
import copy
import shutil

import pytest
import torch

from fluxir.models.adapter import FluxIRAdapter
from fluxir.models.controlled_flux import controlled_flux_forward
from fluxir.models.flux import compile_blocks, image_ids
from fluxir.models.loading import load_pipeline

from support import adapter_params, restore_config

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile (inductor) on the CPU needs a C++ compiler (g++/clang++), none on PATH",
)


def _inputs(flux, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = flux.config
    return {
        "hidden_states": torch.randn(2, 12, 64, generator=g),  # (B, N, 64): a 6x8 latent as a 3x4 token grid
        "lq_latents": torch.randn(2, 12, 64, generator=g),
        "encoder_hidden_states": torch.randn(2, 8, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(2, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.3, 0.8]),
        "img_ids": image_ids(3, 4, "cpu"),
        "txt_ids": torch.zeros(8, 3),
        "guidance": torch.tensor([4.0, 4.0]),
    }


def _velocity_and_grads(flux, adapter, inputs):
    adapter.zero_grad(set_to_none=True)
    v = controlled_flux_forward(
        flux,
        adapter,
        inputs["hidden_states"],
        inputs["lq_latents"],
        inputs["encoder_hidden_states"],
        inputs["pooled_projections"],
        inputs["timestep"],
        inputs["img_ids"],
        inputs["txt_ids"],
        guidance=inputs["guidance"],
    )
    v.square().mean().backward()
    return v.detach(), {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}


@pytest.mark.e2e  # torch.compile builds its kernels in worker processes (minutes of C++ on 2 cores)
def test_compiled_blocks_give_the_eager_velocity_and_gradients(tiny_flux_dir):
    pipe = load_pipeline(str(tiny_flux_dir), dtype="float32", device="cpu")
    flux = pipe.transformer.requires_grad_(False)
    torch.manual_seed(0)
    adapter = FluxIRAdapter.from_flux(flux, **adapter_params())
    with torch.no_grad():  # non-zero controls, so the adapter's output reaches the velocity
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inputs = _inputs(flux)
    eager_v, eager_g = _velocity_and_grads(flux, adapter, inputs)

    flux_c, adapter_c = copy.deepcopy(flux), copy.deepcopy(adapter)
    compile_blocks(flux_c, adapter_c)
    assert list(adapter_c.state_dict()) == list(adapter.state_dict())  # names unchanged: checkpoints still load
    compiled_v, compiled_g = _velocity_and_grads(flux_c, adapter_c, inputs)

    assert eager_g.keys() == compiled_g.keys() and len(eager_g) > 10
    scale = float(eager_v.abs().max())
    assert float((compiled_v - eager_v).abs().max()) <= 1e-4 * scale
    for name, grad in eager_g.items():
        assert float((compiled_g[name] - grad).abs().max()) <= 1e-4 * float(grad.abs().max()) + 1e-7, name
    # and the comparison can fail: another control input changes the velocity far beyond the tolerance
    other_v, _ = _velocity_and_grads(flux_c, adapter_c, {**inputs, "lq_latents": inputs["lq_latents"] * 1.1})
    assert float((other_v - eager_v).abs().max()) > 1e-2 * scale


def _compiled(module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_restore_and_train_compile_switch_compiles_the_blocks(tiny_flux_dir, tmp_path):
    from fluxir.restoration.sampler import Restorer
    from fluxir.training.config import TrainConfig
    from fluxir.training.loop import start_run

    from support import make_pairs, tiny_folders, tiny_params

    pipe = load_pipeline(str(tiny_flux_dir), dtype="float32", device="cpu")
    adapter = FluxIRAdapter.from_flux(pipe.transformer, **adapter_params())
    for compile_on in (False, True):
        cfg = restore_config(dtype="float32", device="cpu", compile=compile_on)
        restorer = Restorer.from_source(str(tiny_flux_dir), adapter, cfg)
        blocks = [
            *restorer.transformer.transformer_blocks,
            *restorer.transformer.single_transformer_blocks,
            restorer.adapter.block,
        ]
        assert [_compiled(b) for b in blocks] == [compile_on] * len(blocks)
    params = tiny_params(tmp_path, "train.compile=true")
    with contextlib.ExitStack() as lock:
        run = start_run(
            TrainConfig.from_params(params), make_pairs(tmp_path / "pairs", n=4), None, lock, tiny_folders(tmp_path)
        )
    assert _compiled(run.models.flux.transformer_blocks[0]) and _compiled(run.adapter.block)
    with contextlib.ExitStack() as lock:
        uncompiled = start_run(
            TrainConfig.from_params({**params, "compile": False}),
            make_pairs(tmp_path / "pairs", n=4),
            None,
            lock,
            tiny_folders(tmp_path),
        )
    assert run.run_key == uncompiled.run_key, "compile is not part of the run key"
