"""FluxIR training: timestep sampler, data order, latent cache, losses, resume, DDP, Kedro + MLflow."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fluxir.io.store import LOCK_NAME, FolderBusy, exclusive_lock
from fluxir.models.adapter import load_adapter
from fluxir.models.flux import unpack
from fluxir.training.checkpoints import list_checkpoints
from fluxir.training.config import TrainConfig, accumulation_steps
from fluxir.training.data import DataOrder, LatentCache, PairTable, decode_latents, pair_gaussians, vae_identity
from fluxir.training.loop import configure_cuda_allocator, ddp_kwargs, make_optimizer, train
from fluxir.training.loss import (
    ControlledFlux,
    build_adapter,
    flow_matching_loss,
    load_models,
    make_micro_batch,
    pixel_loss_latents,
    sample_timesteps,
)

from conftest import free_port, kedro_run
from support import base_params, kill_when, make_pairs, restore_config, tiny_folders, tiny_params


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> pd.DataFrame:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


# ----------------------------------------------------------------------------------------------------
# Parameters, timesteps, data order


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"timestep_sampler": "uniform"}, "train.timestep_sampler must be 'clamped_uniform'"),
        ({"timestep_eps": -0.1}, "train.timestep_eps must be in [0, 1)"),
        ({"batch_size": 0}, "train.batch_size must be an integer >= 1, got 0"),
        ({"pixel_loss_crop": 100}, "train.pixel_loss_crop must be null or a positive multiple of 8"),
        ({"learning_rate": 0}, "train.learning_rate must be > 0"),
        ({"mixed_precision": "fp8"}, "train.mixed_precision must be 'no' or 'bf16'"),
        ({"learning_rat": 1e-5}, "unknown train parameter(s) ['learning_rat']"),
    ],
)
def test_bad_parameters_name_the_value(override, message):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_params(base_params("train", **override))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("processes", "batch_size", "accumulation"), [(1, 1, 64), (2, 1, 32), (4, 1, 16), (8, 1, 8), (4, 4, 4), (8, 8, 1)]
)
def test_global_batch_of_64_is_reached_on_any_number_of_gpus(processes, batch_size, accumulation):
    """The paper's global batch 64 (Sec. 4.1) = batch_size x processes x accumulation, exactly."""
    assert TrainConfig.from_params(base_params("train")).global_batch == 64
    assert accumulation_steps(64, batch_size, processes) == accumulation
    assert batch_size * processes * accumulation == 64


def test_a_global_batch_that_cannot_be_split_names_the_fix():
    with pytest.raises(
        ValueError,
        match=r"train.global_batch=64 cannot be split into train.batch_size=1 x 3 "
        r"process\(es\).*use a number of processes that divides 64",
    ):
        accumulation_steps(64, 1, 3)
    with pytest.raises(
        ValueError, match=r"global_batch=16 .* train.batch_size=4 x 8 process\(es\).*use train.batch_size in \[1, 2\]"
    ):
        accumulation_steps(16, 4, 8)
    with pytest.raises(ValueError, match=r"train.global_batch=1 cannot be split into train.batch_size=1 x 2"):
        accumulation_steps(1, 1, 2)
    with pytest.raises(ValueError, match="train.global_batch=6 is not a multiple of train.batch_size=4"):
        TrainConfig.from_params(base_params("train", global_batch=6, batch_size=4))
    with pytest.raises(ValueError, match=r"unknown train parameter\(s\) \['gradient_accumulation_steps'\]"):
        TrainConfig.from_params(base_params("train", gradient_accumulation_steps=4))


def test_cuda_settings_ddp_bucket_views_fused_adamw_expandable_segments(monkeypatch):
    """DDP: gradients are bucket views, static graph only without no_sync micro-steps; AdamW fused on CUDA only;
    the allocator's expandable segments are set unless the user chose a PYTORCH_CUDA_ALLOC_CONF."""
    single, accumulating = ddp_kwargs(1).to_kwargs(), ddp_kwargs(8).to_kwargs()
    assert single == {"gradient_as_bucket_view": True, "static_graph": True}  # what accelerate hands to DDP
    assert accumulating == {"gradient_as_bucket_view": True}
    params, cfg = [torch.nn.Parameter(torch.zeros(3))], TrainConfig.from_params(base_params("train"))
    assert make_optimizer(params, cfg, "cpu").defaults["fused"] is False
    assert make_optimizer(params, cfg, "cuda").defaults["fused"] is True  # builds here: fused CPU kernels exist
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    configure_cuda_allocator()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    configure_cuda_allocator()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"


def test_yaml_1_1_quirks_are_read_as_meant():
    cfg = TrainConfig.from_params(
        base_params("train", mixed_precision=False, learning_rate="1e-5")
    )  # `no`, `1e-5` unquoted
    assert cfg.mixed_precision == "no" and cfg.learning_rate == 1e-5
    with pytest.raises(ValueError, match="train.learning_rate must be a number, got 'fast'"):
        TrainConfig.from_params(base_params("train", learning_rate="fast"))


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_clamped_uniform_puts_eps_over_1_plus_2eps_on_each_end(eps):
    n = 400_000
    t = sample_timesteps(n, torch.Generator().manual_seed(0), "clamped_uniform", eps)
    p = eps / (1 + 2 * eps)  # Eq. 5-6 (the paper's text says 1/(1+2eps), which cannot be: it would exceed 1/2)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(float((t == 0).float().mean()) - p) < 5 * sigma
    assert abs(float((t == 1).float().mean()) - p) < 5 * sigma
    inner = t[(t > 0) & (t < 1)]
    assert t.min() == 0 and t.max() == 1
    hist = torch.histc(inner, bins=10, min=0, max=1) / len(inner)  # uniform in between
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005)


def test_logit_normal_never_hits_the_ends_and_centres_on_half():
    t = sample_timesteps(200_000, torch.Generator().manual_seed(0), "logit_normal")
    assert float((t == 0).float().mean()) == 0 and float((t == 1).float().mean()) == 0
    assert abs(float(t.median()) - 0.5) < 0.01
    assert float(((t < 0.05) | (t > 0.95)).float().mean()) < 0.01  # SD3's sampler rarely trains t ~ 1


def test_data_order_is_a_function_of_seed_and_step(pairs):
    table = PairTable.from_manifest(pairs, 4)
    train_idx, val_idx = table.split(2)
    assert val_idx == [6, 7] and len(train_idx) == 6
    buckets = table.buckets(train_idx)
    assert sorted(buckets) == [(32, 48), (48, 48), (64, 48)]
    order = DataOrder(buckets, global_batch=2, seed=0)
    epoch0 = [order.batch(g)[1] for g in range(order.per_epoch)]
    assert sorted(i for b in epoch0 for i in b) == train_idx  # each pair once per epoch
    for batch in epoch0:  # one aspect per batch
        assert len({(table.rows.width[i], table.rows.height[i]) for i in batch}) == 1
    fresh = DataOrder(buckets, 2, seed=0)
    assert [fresh.batch(g) for g in (7, 3, 11)] == [order.batch(g) for g in (7, 3, 11)]  # no hidden state
    other = DataOrder(buckets, 2, seed=1)
    assert [other.batch(g)[1] for g in range(9)] != [order.batch(g)[1] for g in range(9)]


def test_manifest_errors_name_the_pair(tmp_path, pairs):
    bad = pairs.copy()
    Image.open(bad.lq_path[3]).resize((5, 5)).save(tmp_path / "small.png")
    bad.loc[3, ["lq_path", "lq_width", "lq_height"]] = [str(tmp_path / "small.png"), 5, 5]
    with pytest.raises(
        ValueError, match=r"pair 3: LQ .* is \(5, 5\) but must be exactly 1/4 of the HQ size \(64, 48\)"
    ):
        PairTable.from_manifest(bad, 4)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['lq_sha256'\]"):
        PairTable.from_manifest(pairs.drop(columns="lq_sha256"), 4)
    with pytest.raises(ValueError, match="num_validation_pairs=8 leaves no training pair out of 8"):
        PairTable.from_manifest(pairs, 4).split(8)


# ----------------------------------------------------------------------------------------------------
# Latents, cache, losses


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    cfg = TrainConfig.from_params(tiny_params(tmp_path_factory.mktemp("m")))
    return cfg, load_models(cfg, "cpu")


def test_latent_cache_is_keyed_by_image_and_vae(tmp_path, pairs, tiny_models):
    _, models = tiny_models
    table = PairTable.from_manifest(pairs, 4)
    vae_id = vae_identity(models.vae)
    cache = LatentCache(tmp_path / "cache", vae_id)
    hq, lq = pair_gaussians(models.vae, cache, table, 0)
    assert hq.shape == (32, 6, 8) and lq.shape == (32, 6, 8)  # [mean, logvar] of 16 channels at 48x64 / 8
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 1
    again = pair_gaussians(models.vae, cache, table, 0)  # served from disk, same values
    assert torch.equal(again[0], hq) and torch.equal(again[1], lq)
    # A changed image has a new sha256 in a rebuilt manifest -> a new key; a changed VAE -> a new key.
    row = table.rows.iloc[0]
    assert cache.key(row, 4) != cache.key(row.replace({row.hq_sha256: "0" * 64}), 4)
    with torch.no_grad():
        models.vae.decoder.conv_out.bias.add_(1e-3)
    try:
        assert vae_identity(models.vae) != vae_id
    finally:
        with torch.no_grad():
            models.vae.decoder.conv_out.bias.sub_(1e-3)
    assert vae_identity(models.vae) == vae_id
    # A file that changed after the manifest was written is refused when it is (re-)encoded.
    stale = pairs.copy()
    Image.open(stale.hq_path[1]).transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "flipped.png")
    stale.loc[1, "hq_path"] = str(tmp_path / "flipped.png")
    with pytest.raises(ValueError, match="pair 1: .*flipped.png has sha256 .* but the manifest says"):
        pair_gaussians(models.vae, cache, PairTable.from_manifest(stale, 4), 1)


def test_the_two_readings_of_eq9_differ_at_t_above_0_and_agree_in_their_limits(tiny_models):
    """paper: V_d(z_0 + t v_p) vs V_d(z_0 + t v_gt); x0: V_d(z_t - t v_p) vs V_d(z_0) (docs/training.md)."""
    _, models = tiny_models
    g = torch.Generator().manual_seed(0)
    z0, z1, v_p = (torch.randn(2, 12, 64, generator=g) for _ in range(3))  # (B, N, 64): a 6x8 latent grid
    v_gt = z1 - z0

    def l_p(form: str, t: torch.Tensor, v: torch.Tensor) -> list[float]:
        t = t.view(2, 1, 1)
        pred, target = pixel_loss_latents(z0, (1 - t) * z0 + t * z1, t, v, v_gt, form)
        assert torch.allclose(pred - target, (1 if form == "paper" else -1) * t * (v - v_gt), atol=1e-5)
        with torch.no_grad():
            x = [decode_latents(models.vae, unpack(z, 6, 8)) for z in (pred, target)]
        return [float(d) for d in (x[0] - x[1]).abs().mean(dim=(1, 2, 3))]

    t = torch.tensor([0.3, 0.9])
    paper, x0 = l_p("paper", t, v_p), l_p("x0", t, v_p)
    assert all(p > 0 and q > 0 for p, q in zip(paper, x0))
    assert all(abs(p - q) > 1e-3 * max(p, q) for p, q in zip(paper, x0))  # the decoder sees different points
    assert l_p("paper", torch.zeros(2), v_p) == l_p("x0", torch.zeros(2), v_p) == [0.0, 0.0]  # t = 0: both z_0
    assert max(l_p("paper", t, v_gt) + l_p("x0", t, v_gt)) < 1e-6  # a perfect velocity: both vanish
    _, target = pixel_loss_latents(z0, z0, t.view(2, 1, 1), v_p, v_gt, "x0")
    assert torch.equal(target, z0)  # x0's target is the clean latent; paper's is the noisy z_t
    with pytest.raises(ValueError, match="train.pixel_loss_form must be 'paper'"):
        TrainConfig.from_params(base_params("train", pixel_loss_form="x_0"))


def test_pixel_loss_follows_eq9(pairs, tiny_models):
    """t = 0: z_0 + t v = z_0 for both terms, so L_P = 0; alpha = 0 leaves L = L_MSE."""
    cfg, models = tiny_models
    table = PairTable.from_manifest(pairs, 4)
    gauss = [pair_gaussians(models.vae, LatentCache(None, "x"), table, i) for i in (0, 3)]
    model = ControlledFlux(models.flux, build_adapter(cfg, models))
    batch = make_micro_batch(cfg, models.vae, gauss, [1, 2])
    args = (model, models.flux, models.vae, batch, models.prompt_embeds, models.pooled_embeds)
    batch.t = torch.tensor([0.5, 1.0])
    loss, mse, pixel = flow_matching_loss(*args, cfg)
    assert pixel > 0 and torch.allclose(loss, mse + cfg.pixel_loss_weight * pixel)
    batch.t = torch.zeros(2)
    assert float(flow_matching_loss(*args, cfg)[2]) == 0.0
    batch.t = torch.tensor([0.5, 1.0])
    no_pixel = flow_matching_loss(*args, TrainConfig.from_params({**tiny_params(Path("/x")), "pixel_loss_weight": 0}))
    assert torch.equal(no_pixel[0], mse) and float(no_pixel[2]) == 0.0
    crop = flow_matching_loss(*args, TrainConfig.from_params({**tiny_params(Path("/x")), "pixel_loss_crop": 16}))
    assert torch.equal(crop[1], mse) and crop[2] > 0
    x0 = flow_matching_loss(*args, TrainConfig.from_params({**tiny_params(Path("/x")), "pixel_loss_form": "x0"}))
    assert torch.equal(x0[1], mse) and x0[2] > 0 and not torch.isclose(x0[2], pixel)


def test_the_frozen_vae_runs_in_its_own_dtype_outside_autocast(pairs, tiny_models):
    """Under the step's autocast the VAE still runs with autocast off (CUDA would run its norms in float32)."""
    cfg, models = tiny_models
    table = PairTable.from_manifest(pairs, 4)
    model = ControlledFlux(models.flux, build_adapter(cfg, models))
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
        for m in (models.vae.encoder.conv_out, models.vae.decoder.conv_out)
    ]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            gauss = [pair_gaussians(models.vae, LatentCache(None, "x"), table, 0)]
            batch = make_micro_batch(cfg, models.vae, gauss, [1])
            batch.t = torch.tensor([0.5])
            loss, _, pixel = flow_matching_loss(
                model, models.flux, models.vae, batch, models.prompt_embeds, models.pooled_embeds, cfg
            )
            assert torch.is_autocast_enabled("cpu")  # switched off only around the VAE
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 3 and pixel > 0  # one encode, two decodes (prediction and target)
    assert seen == [(False, torch.float32)] * 3  # the tiny VAE is float32; CPU autocast would give bf16


def test_the_adapter_carries_its_training_guidance(tmp_path, tiny_models):
    """train.adapter.guidance is fed to Flux in training, saved with the adapter, and used by restoration."""
    from fluxir.models.adapter import load_adapter, save_adapter
    from fluxir.restoration.sampler import RestoreConfig, Restorer

    cfg, models = tiny_models
    adapter = build_adapter(TrainConfig.from_params(tiny_params(tmp_path, "train.adapter.guidance=2.5")), models)
    assert adapter.config.guidance == 2.5 and build_adapter(cfg, models).config.guidance == 4.0
    adapter.training_record = {"steps": 3, "global_batch": 64}
    save_adapter(adapter, tmp_path / "adapter")
    assert load_adapter(tmp_path / "adapter").training_record == {"steps": 3, "global_batch": 64}
    restorer = Restorer(
        models.flux,
        models.vae,
        models.scheduler_config,
        models.prompt_embeds,
        models.pooled_embeds,
        load_adapter(tmp_path / "adapter"),
        restore_config(dtype="float32", device="cpu"),
    )
    assert restorer.guidance == 2.5
    with pytest.raises(ValueError, match=r"unknown restore parameter\(s\) \['guidance'\]"):  # the adapter's is used
        RestoreConfig.from_params({"guidance": 4.0})


def test_any_split_of_the_global_batch_trains_the_same(tmp_path, pairs):
    """Global batch 2 as 1 pair x 2 accumulation micro-steps or as 2 pairs in one: same samples, same steps."""
    common = ("train.max_steps=3", "train.global_batch=2")
    accumulated = train(
        tiny_params(tmp_path / "a", *common, "train.batch_size=1"),
        pairs,
        folders=tiny_folders(tmp_path / "a"),
        progress=False,
    )
    at_once = train(
        tiny_params(tmp_path / "b", *common, "train.batch_size=2"),
        pairs,
        folders=tiny_folders(tmp_path / "b"),
        progress=False,
    )
    assert accumulated.run_dir.name == at_once.run_dir.name  # batch_size does not change what is learned
    np.testing.assert_allclose(accumulated.history.loss, at_once.history.loss, rtol=1e-4)
    split = max_diff(accumulated.adapter, at_once.adapter)
    assert split < 5e-5  # float sums in another order only (the kernels' order depends on the batch shape)
    single = train(
        tiny_params(tmp_path / "c", "train.max_steps=3"), pairs, folders=tiny_folders(tmp_path / "c"), progress=False
    )  # global batch 1
    assert max_diff(single.adapter, at_once.adapter) > max(1e-4, 4 * split)  # another batch: clearly apart


def test_a_second_run_of_the_same_settings_refuses_while_the_first_holds_the_folder(tmp_path, pairs):
    """One writer per checkpoint folder: the second run names the holder and writes nothing; once the first has
    ended the same command resumes from its checkpoint."""
    params = tiny_params(tmp_path, "train.max_steps=2", "train.checkpoint_every=1")
    first = train(params, pairs, folders=tiny_folders(tmp_path), progress=False)
    before = sorted(p.name for p in first.run_dir.iterdir())
    with exclusive_lock(first.run_dir / LOCK_NAME, "a training run"):  # a run of these settings still going
        with pytest.raises(
            FolderBusy, match=rf"checkpoint folder .*{first.run_dir.name} is being written by pid {os.getpid()}"
        ):
            train({**params, "max_steps": 3}, pairs, folders=tiny_folders(tmp_path), progress=False)
    assert sorted(p.name for p in first.run_dir.iterdir()) == before
    assert train({**params, "max_steps": 3}, pairs, folders=tiny_folders(tmp_path), progress=False).resumed_from == 2


def test_cache_and_checkpointing_do_not_change_training(tmp_path, pairs):
    """Latent cache on/off and gradient checkpointing (Flux, adapter, decoder) give the same steps."""
    common = ("train.max_steps=3", "train.pixel_loss_crop=16")
    ref = train(tiny_params(tmp_path / "a", *common), pairs, folders=tiny_folders(tmp_path / "a"), progress=False)
    assert len(list((tmp_path / "a" / "cache").rglob("*.safetensors"))) > 0
    other = train(
        tiny_params(
            tmp_path / "b",
            *common,
            "train.cache_latents=false",
            "train.gradient_checkpointing=true",
            "train.decoder_gradient_checkpointing=true",
        ),
        pairs,
        folders=tiny_folders(tmp_path / "b"),
        progress=False,
    )
    assert not (tmp_path / "b" / "cache").exists()
    np.testing.assert_allclose(other.history.loss, ref.history.loss, rtol=1e-5)
    assert max_diff(other.adapter, ref.adapter) < 1e-6


# ----------------------------------------------------------------------------------------------------
# Learning, NaN guard, resume


def test_200_steps_reduce_the_loss(tmp_path, pairs):
    """Tiny env (lr 1e-3, see conf/tiny): the last-20-step mean loss is clearly below the first-20."""
    result = train(
        tiny_params(tmp_path, "train.max_steps=200", "train.checkpoint_every=200"),
        pairs,
        folders=tiny_folders(tmp_path),
        progress=False,
    )
    h = result.history
    assert list(h.step) == list(range(1, 201))
    first, last = h.loss.head(20).mean(), h.loss.tail(20).mean()
    assert last < 0.9 * first, (first, last)
    assert h.loss_mse.tail(20).mean() < h.loss_mse.head(20).mean()
    assert (h.loss_pixel > 0).any() and np.allclose(h.loss, h.loss_mse + h.loss_pixel, rtol=1e-5)
    assert [s for s, _ in list_checkpoints(result.run_dir)] == [200]


def test_nan_loss_stops_and_keeps_the_good_checkpoint(tmp_path, pairs):
    params = tiny_params(
        tmp_path,
        "train.max_steps=10",
        "train.checkpoint_every=1",
        "train.learning_rate=1e30",
        "train.max_grad_norm=null",
        "train.keep_checkpoints=5",
    )
    with pytest.raises(FloatingPointError) as err:
        train(params, pairs, folders=tiny_folders(tmp_path), progress=False)
    message = str(err.value)
    good = list_checkpoints(Path(next((tmp_path / "ckpt").iterdir())))
    assert good, "the first step (finite loss) should have been checkpointed"
    last_step, last_path = good[-1]
    assert f"non-finite training loss at step {last_step + 1}" in message
    assert f"the last good checkpoint is {last_path} (step {last_step})" in message
    assert "Lower train.learning_rate" in message
    state = json.loads((last_path / "trainer_state.json").read_text())
    assert state["step"] == last_step and all(math.isfinite(r["loss"]) for r in state["history"])
    assert not list(last_path.parent.glob(".tmp-*"))


def _cli(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fluxir.training", "--env", "tiny", "--project", str(project), *args]


@pytest.mark.e2e  # a killed run, or two DDP processes
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, pairs, kedro_project):
    params = ("train.max_steps=60", "train.checkpoint_every=5", "train.keep_checkpoints=50")
    manifest = tmp_path / "manifest.parquet"
    pairs.to_parquet(manifest)
    run = [
        "--manifest",
        str(manifest),
        "--no-mlflow",
        "--output",
        str(tmp_path / "resumed"),
        "--params",
        ",".join(params + (f"train.checkpoint_dir={tmp_path / 'ck'}", f"train.latent_cache_dir={tmp_path / 'lc'}")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(kedro_project, *run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ten_steps_saved() -> bool:
        return (
            max((int(p.name[5:]) for p in (tmp_path / "ck").glob("*/step_*") if not p.name.startswith(".")), default=0)
            >= 10
        )

    kill_when(proc, ten_steps_saved)
    run_dir = next((tmp_path / "ck").iterdir())
    killed_at = list_checkpoints(run_dir)[-1][0]
    assert 10 <= killed_at < 60, f"the run should have been killed part-way, newest checkpoint {killed_at}"

    rerun = subprocess.run(_cli(kedro_project, *run), env=env, check=True, capture_output=True, text=True)
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])  # the command's own summary line
    assert (summary["resumed_from"], summary["final_step"]) == (killed_at, 60)

    whole = train(
        tiny_params(tmp_path / "whole", *params), pairs, folders=tiny_folders(tmp_path / "whole"), progress=False
    )
    assert max_diff(load_adapter(tmp_path / "resumed"), whole.adapter) < 1e-6
    state = json.loads((run_dir / "step_00000060" / "trainer_state.json").read_text())
    np.testing.assert_allclose([r["loss"] for r in state["history"]], whole.history.loss, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Two processes (DDP over gloo) and the Kedro pipeline with MLflow


def _mlflow_runs(project: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


@pytest.mark.e2e  # a killed run, or two DDP processes
def test_two_processes_keep_identical_weights_and_only_rank0_writes(tmp_path, pairs, kedro_project):
    manifest = tmp_path / "manifest.parquet"
    pairs.to_parquet(manifest)
    params = (
        f"train.max_steps=6,train.global_batch=2,train.checkpoint_every=3,train.validate_every=6,train.log_every=2,"
        f"train.checkpoint_dir={tmp_path / 'ck'},train.latent_cache_dir={tmp_path / 'lc'}"
    )
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            "-m",
            "fluxir.training",
            "--env",
            "tiny",
            "--project",
            str(kedro_project),
            "--manifest",
            str(manifest),
            "--output",
            str(tmp_path / "adapter"),
            "--params",
            params,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["final_step"] == 6
    # Each rank trained on its half of every global batch and the ranks stayed in step: the saved adapter and
    # every step's loss are those of one process taking the whole batch (gloo sums in another order: 1e-4).
    one_process = ("train.max_steps=6", "train.global_batch=2", "train.validate_every=6", "train.log_every=2")
    single = train(
        tiny_params(tmp_path / "one", *one_process), pairs, folders=tiny_folders(tmp_path / "one"), progress=False
    )
    assert max_diff(load_adapter(tmp_path / "adapter"), single.adapter) < 1e-4

    # Only rank 0 wrote checkpoints and MLflow records: one run, one value per logged step.
    run_dir = next((tmp_path / "ck").iterdir())
    assert [s for s, _ in list_checkpoints(run_dir)] == [3, 6]
    state = json.loads((run_dir / "step_00000006" / "trainer_state.json").read_text())
    assert state["written_by_rank"] == 0
    assert [r["step"] for r in state["history"]] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in state["history"]], single.history.loss, rtol=1e-4)
    client, runs = _mlflow_runs(kedro_project)
    assert len(runs) == 1
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [2, 4, 6]
    assert runs[0].data.params["train_run.num_processes"] == "2"
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "validation")]
    assert artifacts == ["validation/step_00000006.png"]

    assert runs[0].data.params["train_run.gradient_accumulation_steps"] == "1"

    # Global batch 2: two processes x batch 1 == one process x batch 1 x 2 accumulation steps (same samples,
    # same per-sample randomness; the tolerance covers gloo's all-reduce summing in another order).
    single = train(
        tiny_params(tmp_path / "one", "train.max_steps=6", "train.global_batch=2"),
        pairs,
        folders=tiny_folders(tmp_path / "one"),
        progress=False,
    )
    assert max_diff(load_adapter(tmp_path / "adapter"), single.adapter) < 1e-4


def test_kedro_train_pipeline_saves_adapter_and_logs_to_mlflow(kedro_project):
    from kedro.config import OmegaConfigLoader
    from kedro.io.core import generate_timestamp

    from fluxir.settings import CONFIG_LOADER_ARGS

    catalog = OmegaConfigLoader(str(kedro_project / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "tiny"})[
        "catalog"
    ]
    manifest_path = kedro_project / catalog["pairs_manifest"]["filepath"]  # versioned: <path>/<version>/<name>
    pairs = make_pairs(kedro_project / "data" / "pairs", n=6)
    version = manifest_path / generate_timestamp()
    version.mkdir(parents=True)
    pairs.to_parquet(version / manifest_path.name)
    params = "train.max_steps=6,train.validate_every=3,train.log_every=2,train.checkpoint_every=3"
    # the documented `kedro run --env=tiny --pipeline=train` (docs/training.md), with fewer steps
    kedro_run(kedro_project, "run", "--env=tiny", "--pipeline=train", f"--params={params}")

    adapters = sorted((kedro_project / "data" / "06_models" / "fluxir_adapter").iterdir())
    assert len(adapters) == 1
    adapter = load_adapter(adapters[0] / "fluxir_adapter")
    assert adapter.training_record["steps"] == 6 and adapter.training_record["global_batch"] == 1
    history = pd.read_parquet(next((kedro_project / "data/07_model_output/train_history.parquet").rglob("*.parquet")))
    assert list(history.step) == [1, 2, 3, 4, 5, 6]
    assert (kedro_project / "data/05_model_input/latent_cache").is_dir()
    assert list((kedro_project / "data/06_models/train_checkpoints").glob("*/step_00000006"))

    client, runs = _mlflow_runs(kedro_project)
    assert len(runs) == 1
    run = runs[0]
    for name in (
        "train/loss",
        "train/loss_mse",
        "train/loss_pixel",
        "train/lr",
        "train/samples_per_s",
        "train/peak_memory_mb",
    ):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [2, 4, 6], name
    assert run.data.params["train.learning_rate"] == "0.001"
    assert run.data.params["train_run.adapter_parameters"] == str(sum(p.numel() for p in adapter.parameters()))
    validation = [a.path for a in client.list_artifacts(run.info.run_id, "validation")]
    assert validation == ["validation/step_00000003.png", "validation/step_00000006.png"]
    reporting = [a.path for a in client.list_artifacts(run.info.run_id, "reporting")]
    assert reporting == ["reporting/train_loss_curves.png"]


def test_packing_matches_diffusers_and_inverts():
    from diffusers import FluxPipeline

    from fluxir.models.flux import image_ids, pack, unpack

    z = torch.randn(2, 16, 8, 6)
    assert torch.equal(pack(z), FluxPipeline._pack_latents(z, 2, 16, 8, 6))  # (2, 12, 64)
    assert torch.equal(unpack(pack(z), 8, 6), z)
    ids = image_ids(4, 3, "cpu")  # (12, 3): (0, row, col) of each 2x2 patch of the (8, 6) latent
    assert ids.shape == (12, 3) and ids[5].tolist() == [0.0, 1.0, 2.0]


def test_a_global_batch_larger_than_a_bucket_warns_once(tmp_path, pairs, caplog):
    """8 pairs in three size buckets, 2 held out: a global batch of 4 repeats pairs in every step."""
    with caplog.at_level(logging.WARNING, logger="fluxir.training"):
        train(
            tiny_params(tmp_path / "a", "train.max_steps=2", "train.global_batch=4"),
            pairs,
            folders=tiny_folders(tmp_path / "a"),
            progress=False,
        )
    warned = [r.getMessage() for r in caplog.records if "exceeds the training pairs" in r.getMessage()]
    assert (
        len(warned) == 1 and warned[0].startswith("train.global_batch=4 exceeds") and "of 6 training pairs" in warned[0]
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fluxir.training"):
        train(
            tiny_params(tmp_path / "b", "train.max_steps=1"),
            pairs,
            folders=tiny_folders(tmp_path / "b"),
            progress=False,
        )  # global batch 1
    assert not [r for r in caplog.records if "exceeds the training pairs" in r.getMessage()]
