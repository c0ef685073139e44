"""FluxIR adapter: sizes vs the paper's Table 2, identity at init, gradients, variants, I/O."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import FluxTransformer2DModel
from kedro.io import DataCatalog
from kedro.io.core import Version
from safetensors.torch import load_file

from fluxir.datasets import FluxIRAdapterDataset
from fluxir.io.atomic import write_manifest
from fluxir.models.adapter import (
    FluxIRAdapter,
    adapter_parameter_breakdown,
    count_parameters,
    load_adapter,
    save_adapter,
)
from fluxir.models.adapter_config import FluxIRConfig, check_compatible
from fluxir.models.controlled_flux import controlled_flux_forward, freeze_flux
from fluxir.models.flux import build_transformer, load_config

from support import adapter_params

TEXT_LEN = 6  # prompt tokens in the tiny inputs
TINY = {"text_seq_len": 8}  # theta_p rows for tiny adapters


def tiny(**overrides) -> dict:
    """``from_flux`` settings of a tiny adapter: conf/base's train.adapter (rank, guidance), 8 prompt tokens."""
    return adapter_params(**TINY, **overrides)


def make_inputs(flux, batch: int = 2, h: int = 4, w: int = 4, text_len: int = TEXT_LEN, seed: int = 0):
    """Packed Flux inputs as FluxPipeline builds them: (B, h*w, 64) latents, ids, t in [0, 1], guidance."""
    cfg = flux.config
    g = torch.Generator().manual_seed(seed)
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    return {
        "hidden_states": torch.randn(batch, h * w, cfg.in_channels, generator=g),
        "lq_latents": torch.randn(batch, h * w, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.rand(batch, generator=g),
        "img_ids": img_ids.reshape(h * w, 3),
        "txt_ids": torch.zeros(text_len, 3),
        "guidance": torch.full((batch,), 3.5) if cfg.guidance_embeds else None,
    }


def flux_sample(flux, inputs):
    kw = {k: v for k, v in inputs.items() if k != "lq_latents"}
    return flux(**kw).sample


def perturb(adapter: FluxIRAdapter, seed: int = 1, scale: float = 0.1, streams=("se_z", "se_p")) -> FluxIRAdapter:
    """Give the zero-initialised parts non-zero values (a 'trained' adapter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.split(".")[0] in streams or name.startswith(("input_proj", "theta")):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return adapter


@pytest.fixture(scope="module")
def tiny_flux():
    flux = build_transformer("tiny_flux_transformer", seed=0)
    freeze_flux(flux)
    return flux


@pytest.fixture(scope="module")
def deep_flux():
    """All 19 + 38 blocks of FLUX.1-dev, tiny width (2 heads x 16): for per-block gradient checks."""
    cfg = {**load_config("tiny_flux_transformer"), "num_layers": 19, "num_single_layers": 38}
    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**cfg)
    freeze_flux(flux)
    return flux


# ------------------------------------------------------------------------------------------ sizes


@pytest.fixture(scope="module")
def dev_config():
    return FluxIRConfig.from_flux(build_transformer("flux1_dev_transformer", device="meta"), **adapter_params())


def test_flux1_dev_sizes_match_table_2(dev_config):
    meta_flux = build_transformer("flux1_dev_transformer", device="meta")
    assert count_parameters(meta_flux) == 11_901_408_320
    assert dev_config == FluxIRConfig(**adapter_params())  # the base-size defaults are FLUX.1-dev's
    paper_se = {16: 11.6, 32: 22.8, 64: 45.2, 128: 90.0, None: 1076.2}  # Table 2, millions
    for rank, se_m in paper_se.items():
        sizes = adapter_parameter_breakdown(FluxIRConfig.from_params({**dev_config.to_dict(), "rank": rank}))
        assert round(sizes["without_se"] / 1e6) == 387
        assert abs(sizes["without_se"] / 387e6 - 1) < 0.005
        assert round(sizes["se"] / 1e6, 1) == se_m, (rank, sizes["se"])
        assert sizes["total"] == sizes["without_se"] + sizes["se"]
    # Parts of the 387M: D is a copy of one Flux double block; embedders are Flux's.
    sizes = adapter_parameter_breakdown(dev_config)
    assert sizes["block"] == count_parameters(meta_flux.transformer_blocks[0])
    assert sizes["embedders"] == sum(
        count_parameters(getattr(meta_flux, n)) for n in ("x_embedder", "context_embedder", "time_text_embed")
    )
    assert sizes["text_embeddings"] == 512 * 4096 + 768
    # The paper's "0.4B adapter" at r = 32; full-rank SE is > 72% of the full-rank adapter (Sec. 4.3).
    assert round(sizes["total"] / 1e9, 1) == 0.4


def test_from_flux_on_meta_allocates_nothing():
    meta_flux = build_transformer("flux1_dev_transformer", device="meta")
    adapter = FluxIRAdapter.from_flux(meta_flux, **adapter_params())
    assert all(p.device.type == "meta" for p in adapter.parameters())
    assert count_parameters(adapter, trainable_only=True) == adapter_parameter_breakdown(adapter.config)["total"]


def test_variant_parameter_counts(tiny_flux):
    c, n = 32, 4  # tiny: inner dim, 2 + 2 blocks
    base = FluxIRAdapter.from_flux(tiny_flux, **tiny(rank=16))
    without_se = count_parameters(base) - count_parameters(base.se_z) - count_parameters(base.se_p)
    theta = 8 * 32 + 32  # theta_p (text_seq_len x joint) + theta_y (pooled)

    def se(rank):  # Eq. 3 with biases: W_s, B_s, W_e, B_e  /  full: one c x c Linear
        return c * rank + rank + rank * c + c if rank else c * c + c

    cases = {
        "r16": ({"rank": 16}, without_se + 2 * n * se(16)),
        "full": ({"rank": None}, without_se + 2 * n * se(None)),
        "full_str": ({"rank": "full"}, without_se + 2 * n * se(None)),
        "shared": ({"rank": None, "shared_se": True}, without_se + 2 * se(None)),
        "no_theta": ({"rank": 16, "learn_text_embeddings": False}, without_se - theta + 2 * n * se(16)),
        "no_se_p": ({"rank": 16, "text_control": False}, without_se + n * se(16)),
    }
    for name, (overrides, expected) in cases.items():
        adapter = FluxIRAdapter.from_flux(tiny_flux, **tiny(**overrides))
        assert count_parameters(adapter) == expected, name
        assert count_parameters(adapter) == adapter_parameter_breakdown(adapter.config)["total"], name
    assert FluxIRAdapter.from_flux(tiny_flux, **tiny(rank=16, text_control=False)).se_p is None


# ------------------------------------------------------------------------------------------ identity


def test_fresh_adapter_leaves_flux_output_bit_identical(tiny_flux):
    adapter = FluxIRAdapter.from_flux(tiny_flux, **tiny())
    for seed, t in enumerate([0.0, 0.25, 0.7, 1.0]):
        inputs = make_inputs(tiny_flux, seed=seed)
        inputs["timestep"] = torch.full((2,), t)
        with torch.no_grad():
            ref = flux_sample(tiny_flux, inputs)
            assert torch.equal(controlled_flux_forward(tiny_flux, adapter, **inputs), ref)
            assert torch.equal(controlled_flux_forward(tiny_flux, None, **inputs), ref)


def test_adapter_controls_both_streams(tiny_flux):
    inputs = make_inputs(tiny_flux)
    with torch.no_grad():
        ref = flux_sample(tiny_flux, inputs)
        for streams in (("se_z",), ("se_p",)):  # image control alone, text control alone
            adapter = perturb(FluxIRAdapter.from_flux(tiny_flux, **tiny()), streams=streams)
            out = controlled_flux_forward(tiny_flux, adapter, **inputs)
            assert (out - ref).abs().max() > 1e-3, streams
        # The LQ latent reaches the output (through M_i, Eq. 1) once the adapter is non-zero.
        adapter = perturb(FluxIRAdapter.from_flux(tiny_flux, **tiny()))
        out = controlled_flux_forward(tiny_flux, adapter, **inputs)
        other = controlled_flux_forward(tiny_flux, adapter, **{**inputs, "lq_latents": -inputs["lq_latents"]})
        assert (out - other).abs().max() > 1e-4


def test_forward_returns_one_control_per_block(tiny_flux):
    inputs = make_inputs(tiny_flux)
    adapter = perturb(FluxIRAdapter.from_flux(tiny_flux, **tiny()))
    z, p = adapter(**inputs)
    assert len(z) == len(p) == 4
    assert z[0].shape == (2, 16, 32) and p[0].shape == (2, TEXT_LEN, 32)
    assert not torch.equal(z[0], z[1])  # a dedicated SE per block
    shared = perturb(FluxIRAdapter.from_flux(tiny_flux, **tiny(shared_se=True)))
    z, p = shared(**inputs)
    assert all(zi is z[0] for zi in z) and all(pi is p[0] for pi in p)
    z, p = FluxIRAdapter.from_flux(tiny_flux, **tiny(text_control=False))(**inputs)
    assert p == [None] * 4 and len(z) == 4


# ------------------------------------------------------------------------------------------ training


def test_only_adapter_trains_and_every_se_gets_gradient(deep_flux):
    flux_before = {k: v.clone() for k, v in deep_flux.state_dict().items()}
    adapter = FluxIRAdapter.from_flux(deep_flux, **tiny())
    assert len(adapter.se_z) + len(adapter.se_p) == 114
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    inputs = make_inputs(deep_flux, batch=1)
    out = controlled_flux_forward(deep_flux, adapter, **inputs)
    out.square().mean().backward()
    assert all(p.grad is None for p in deep_flux.parameters())
    for i, (se_z, se_p) in enumerate(zip(adapter.se_z, adapter.se_p)):
        for stream, se in (("z", se_z), ("p", se_p)):
            grad = se.excite.weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"SE_{stream}^{i} got no gradient"
    opt.step()
    assert all(torch.equal(v, flux_before[k]) for k, v in deep_flux.state_dict().items())
    assert adapter.se_p[-1].excite.weight.abs().sum() > 0  # the last block's text SE trains too


def test_gradient_checkpointing_same_output_and_grads(tiny_flux):
    inputs = make_inputs(tiny_flux)
    trained = perturb(FluxIRAdapter.from_flux(tiny_flux, **tiny()))

    def run(checkpointing: bool):
        adapter = copy.deepcopy(trained)
        calls = []
        # A pre-hook: the recomputation stops early once it has what backward needs, so a post-hook may not fire.
        hook = tiny_flux.transformer_blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
        if checkpointing:
            tiny_flux.enable_gradient_checkpointing()
            adapter.enable_gradient_checkpointing()
        try:
            out = controlled_flux_forward(tiny_flux, adapter, **inputs)
            out.square().mean().backward()
        finally:
            tiny_flux.disable_gradient_checkpointing()
            hook.remove()
        return out.detach(), {n: p.grad for n, p in adapter.named_parameters()}, len(calls)

    out, grads, calls = run(False)
    out_ckpt, grads_ckpt, calls_ckpt = run(True)
    assert (calls, calls_ckpt) == (1, 2)  # checkpointing recomputed the block in backward
    assert torch.equal(out, out_ckpt)
    for name, g in grads.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_identity_and_backward(tiny_flux):
    inputs = make_inputs(tiny_flux)
    adapter = FluxIRAdapter.from_flux(tiny_flux, **tiny())  # fp32 master weights
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            ref = flux_sample(tiny_flux, inputs)
        out = controlled_flux_forward(tiny_flux, adapter, **inputs)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out.detach(), ref)
    out.float().square().mean().backward()
    grads = [p.grad for p in adapter.se_z.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_compiled_flux_blocks(tiny_flux):
    flux = build_transformer("tiny_flux_transformer", seed=0)  # own copy: compile changes the modules
    freeze_flux(flux)
    adapter = perturb(FluxIRAdapter.from_flux(flux, **tiny()))
    inputs = make_inputs(flux, batch=1)
    ref = controlled_flux_forward(flux, adapter, **inputs)
    for block in list(flux.transformer_blocks) + list(flux.single_transformer_blocks):
        block.compile(backend="aot_eager")  # inductor works too but needs a minute on CPU
    torch._dynamo.reset()
    out = controlled_flux_forward(flux, adapter, **inputs)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert adapter.se_z[0].excite.weight.grad.abs().sum() > 0
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ I/O


def test_kedro_dataset_versioned_roundtrip(tiny_flux, tmp_path):
    inputs = make_inputs(tiny_flux)
    first = perturb(FluxIRAdapter.from_flux(tiny_flux, **tiny(rank=4)), seed=1)
    second = perturb(FluxIRAdapter.from_flux(tiny_flux, **tiny(rank=4)), seed=2)
    catalog = DataCatalog.from_config(
        {
            "fluxir_adapter": {
                "type": "fluxir.datasets.FluxIRAdapterDataset",
                "filepath": str(tmp_path / "adapter"),
                "versioned": True,
            }
        }
    )
    dataset = catalog["fluxir_adapter"]
    assert isinstance(dataset, FluxIRAdapterDataset) and not dataset.exists()
    catalog.save("fluxir_adapter", first)  # a catalog saves one version per run: save again as a new run
    dataset = FluxIRAdapterDataset(filepath=str(tmp_path / "adapter"), version=Version(None, None))
    dataset.save(second)
    versions = dataset.list_versions(full_path=False)
    assert len(versions) == 2
    loaded = dataset.load()  # the latest
    assert loaded.config == second.config
    with torch.no_grad():
        assert torch.equal(
            controlled_flux_forward(tiny_flux, loaded, **inputs), controlled_flux_forward(tiny_flux, second, **inputs)
        )
        old = FluxIRAdapterDataset(filepath=str(tmp_path / "adapter"), version=Version(versions[-1], None)).load()
        assert torch.equal(
            controlled_flux_forward(tiny_flux, old, **inputs), controlled_flux_forward(tiny_flux, first, **inputs)
        )
    # Adapter weights only, and a small readable config; no temporary folders left behind.
    folder = tmp_path / "adapter" / versions[0] / "adapter"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "config.json", "manifest.json"]
    assert sorted(p.name for p in (tmp_path / "adapter" / versions[0]).iterdir()) == ["adapter"]
    assert set(load_file(folder / "adapter.safetensors")) == set(second.state_dict())
    assert json.loads((folder / "config.json").read_text())["rank"] == 4
    assert all(p.requires_grad for p in loaded.parameters())


def test_save_load_full_rank_without_text_variant(tiny_flux, tmp_path):
    adapter = perturb(
        FluxIRAdapter.from_flux(
            tiny_flux, **tiny(rank="full", learn_text_embeddings=False, text_control=False, shared_se=True)
        )
    )
    save_adapter(adapter, tmp_path / "a")
    save_adapter(adapter, tmp_path / "a")  # an existing folder is replaced
    loaded = load_adapter(tmp_path / "a", dtype=torch.bfloat16)
    assert loaded.config == adapter.config and loaded.config.rank is None
    assert loaded.dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    for (k, v), (k2, v2) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v.to(torch.bfloat16), v2)


# ------------------------------------------------------------------------------------------ bad input


def test_mismatched_adapter_names_both_shapes(tiny_flux, tmp_path):
    adapter = FluxIRAdapter.from_flux(tiny_flux, **tiny())
    wider = FluxTransformer2DModel(**{**load_config("tiny_flux_transformer"), "num_attention_heads": 4})
    with pytest.raises(ValueError, match=r"inner_dim: adapter 32 vs flux 64"):
        check_compatible(adapter, wider)
    with pytest.raises(ValueError, match=r"inner_dim: adapter 32 vs flux 64"):
        controlled_flux_forward(wider, adapter, **make_inputs(wider))
    deeper = FluxTransformer2DModel(**{**load_config("tiny_flux_transformer"), "num_single_layers": 3})
    with pytest.raises(ValueError, match=r"num_single_layers: adapter 2 vs flux 3"):
        check_compatible(adapter.config, deeper)
    with pytest.raises(ValueError, match="inner_dim: adapter 32 vs flux 64"):
        FluxIRAdapter.from_flux(wider, config=adapter.config)
    # Weights that do not fit their config.json: the loader names both tensor shapes.
    save_adapter(adapter, tmp_path / "a")
    cfg_file = tmp_path / "a" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "rank": 16}))
    with pytest.raises(ValueError, match=r"config.json: \d+ bytes, the manifest says"):  # changed after saving
        load_adapter(tmp_path / "a")
    write_manifest(tmp_path / "a")  # the changed config.json recorded as if saved so
    with pytest.raises(ValueError, match=r"torch.Size\(\[32, 32\]\).*torch.Size\(\[16, 32\]\)"):
        load_adapter(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").unlink()  # a folder without its manifest is not a finished save
    with pytest.raises(ValueError, match=r"is damaged: .*manifest.json is missing"):
        load_adapter(tmp_path / "a")


def test_bad_inputs_fail_clearly(tiny_flux):
    adapter = FluxIRAdapter.from_flux(tiny_flux, **tiny())
    inputs = make_inputs(tiny_flux)
    with pytest.raises(ValueError, match="lq_latents"):
        controlled_flux_forward(tiny_flux, adapter, **{**inputs, "lq_latents": inputs["lq_latents"][:, :8]})
    with pytest.raises(ValueError, match="text_seq_len=8"):
        controlled_flux_forward(tiny_flux, adapter, **make_inputs(tiny_flux, text_len=9))
    with pytest.raises(ValueError, match="guidance"):
        controlled_flux_forward(tiny_flux, adapter, **{**inputs, "guidance": None})
    with pytest.raises(ValueError, match="rank"):
        FluxIRConfig(**adapter_params(rank=0))
    with pytest.raises(ValueError, match="rank"):
        FluxIRConfig(**adapter_params(rank="half"))
    with pytest.raises(ValueError, match=r"unknown FluxIRConfig parameter\(s\)"):
        FluxIRConfig.from_flux(tiny_flux, **adapter_params(rnak=4))
    # rank and guidance have one source, conf/base's train.adapter: without them from_flux says where they are
    for missing in ("rank", "guidance"):
        given = {k: v for k, v in adapter_params().items() if k != missing}
        with pytest.raises(ValueError, match=rf"needs {missing}: .*train\.adapter in conf/base/parameters_train\.yml"):
            FluxIRAdapter.from_flux(tiny_flux, **given)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_adapter("/nonexistent/adapter")
    full = FluxIRConfig(**adapter_params(rank=None))
    assert FluxIRConfig.from_params(full.to_dict()) == full


def test_dataset_config_name_matches_the_adapter_module():
    from fluxir import datasets
    from fluxir.models import adapter

    assert datasets.CONFIG_NAME == adapter.CONFIG_NAME


def test_missing_trained_adapter_says_what_to_run(tmp_path):
    from kedro.io.core import DatasetError, Version

    from fluxir.datasets import FluxIRAdapterDataset, require_adapter

    missing = FluxIRAdapterDataset(filepath=str(tmp_path / "fluxir_adapter"), version=Version(None, None)).load()
    with pytest.raises(
        ValueError,
        match=r"restore needs a trained FluxIR adapter: .*run `kedro run --pipeline=train` "
        r"first.*restore.method=flux_controlnet or realesrgan",
    ):
        require_adapter(missing, "restore")
    with pytest.raises(DatasetError):  # a version asked for by name that does not exist still fails at load
        FluxIRAdapterDataset(
            filepath=str(tmp_path / "fluxir_adapter"), version=Version("2020-01-01T00.00.00.000Z", None)
        ).load()
