"""Full-format tiny model folders: the code paths a first real run takes, offline.

The folders come from ``scripts/tiny_models.py``: the hub snapshots' component classes and file layout (CLIP
vocab.json/merges.txt, T5/Gemma tokenizer.json, safetensors weights) at tiny sizes with random weights.
They prove loaders, keywords, shapes, memory release and conventions; never image quality.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fluxir.fluxgen.generate import GenerationConfig, generate_into_store
from fluxir.io.images import read_image
from fluxir.io.store import ImageStore
from fluxir.models.loading import load_pipeline
from fluxir.models.prompts import PromptEncoder
from tiny_models import write_tiny_pipeline
from tiny_pipelines import HUB_CLASSES

from conftest import kedro_run, make_project_copy
from support import base_params, restore_config

DOMAIN_PROMPTS = ["a photo of a city street at night", "a detailed portrait"]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------------
# The builder


def test_flux_folder_has_the_hub_layout_and_matching_dimensions(full_flux_dir):
    index = json.loads((full_flux_dir / "model_index.json").read_text())
    assert {k: tuple(v) for k, v in index.items() if k in HUB_CLASSES["flux"]} == HUB_CLASSES["flux"]
    # FLUX.1-dev's CLIP tokenizer folder has only the original BPE files; T5's has tokenizer.json.
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (full_flux_dir / "tokenizer").iterdir()}
    assert not (full_flux_dir / "tokenizer" / "tokenizer.json").exists()
    assert (full_flux_dir / "tokenizer_2" / "tokenizer.json").is_file()
    pipe = load_pipeline(str(full_flux_dir), dtype="float32")
    assert [type(pipe.components[n]).__name__ for n in ("tokenizer", "text_encoder", "text_encoder_2")] == [
        "CLIPTokenizer",
        "CLIPTextModel",
        "T5EncoderModel",
    ]
    assert type(pipe.tokenizer_2).__name__ in ("T5TokenizerFast", "T5Tokenizer")  # one class in transformers 5
    cfg = pipe.transformer.config
    assert pipe.text_encoder_2.config.d_model == cfg.joint_attention_dim
    assert pipe.text_encoder.config.hidden_size == cfg.pooled_projection_dim
    assert pipe.tokenizer.model_max_length == 77 == pipe.text_encoder.config.max_position_embeddings
    # Real tokenization: known words are single tokens, and CLIP wraps them in <|startoftext|> ... <|endoftext|>.
    ids = pipe.tokenizer("a photo").input_ids
    assert len(ids) == 4 and ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert pipe.tokenizer_2("a photo").input_ids[-1] == pipe.tokenizer_2.eos_token_id


def test_builder_is_deterministic_idempotent_and_refuses_a_foreign_folder(full_flux_dir, tmp_path):
    again = write_tiny_pipeline("flux", tmp_path / "flux")
    assert _digests(again) == _digests(full_flux_dir), "same seed, same bytes"
    stamp = (again / "model_index.json").stat().st_mtime_ns
    assert write_tiny_pipeline("flux", again) == again and (again / "model_index.json").stat().st_mtime_ns == stamp
    assert not (tmp_path / "flux.tmp").exists()
    other = write_tiny_pipeline("flux", tmp_path / "other", seed=1)
    assert (
        _digests(other)["transformer/diffusion_pytorch_model.safetensors"]
        != _digests(again)["transformer/diffusion_pytorch_model.safetensors"]
    )
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="foreign exists but is not a complete tiny sdxl folder"):
        write_tiny_pipeline("sdxl", tmp_path / "foreign")
    with pytest.raises(ValueError, match="unknown tiny model kind 'flux2'"):
        write_tiny_pipeline("flux2", tmp_path / "x")


# ----------------------------------------------------------------------------------------------------
# Bad folders: one message naming the path


def test_missing_component_wrong_tokenizer_and_truncated_weights_are_named(full_flux_dir, tmp_path):
    missing = Path(shutil.copytree(full_flux_dir, tmp_path / "missing"))
    shutil.rmtree(missing / "text_encoder_2")
    with pytest.raises(ValueError) as err:
        load_pipeline(str(missing), "float32")
    assert f"{missing / 'text_encoder_2'}: missing" in str(err.value) and "T5EncoderModel" in str(err.value)

    swapped = Path(shutil.copytree(full_flux_dir, tmp_path / "swapped"))
    shutil.rmtree(swapped / "tokenizer")
    shutil.copytree(full_flux_dir / "tokenizer_2", swapped / "tokenizer")  # T5 files where CLIP's belong
    with pytest.raises(ValueError) as err:
        load_pipeline(str(swapped), "float32")
    message = str(err.value)
    assert f"{swapped / 'tokenizer' / 'tokenizer_config.json'}: tokenizer_class 'T5Tokenizer'" in message
    assert "lists 'tokenizer' as 'CLIPTokenizer'" in message

    truncated = Path(shutil.copytree(full_flux_dir, tmp_path / "truncated"))
    weights = truncated / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    shutil.rmtree(truncated / "vae")  # every problem is listed, not just the first
    with pytest.raises(ValueError) as err:
        load_pipeline(str(truncated), "float32")
    assert f"{weights}: truncated" in str(err.value) and f"{truncated / 'vae'}: missing" in str(err.value)


# ----------------------------------------------------------------------------------------------------
# FluxGen through the real encode_prompt


def test_prompts_are_encoded_without_autograd_and_the_encoders_are_freed(full_flux_dir):
    pipe = load_pipeline(str(full_flux_dir), dtype="float32")
    grad_during_encoding = []
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.register_forward_hook(lambda m, i, o: grad_during_encoding.append(torch.is_grad_enabled()))
    refs = [weakref.ref(m) for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2)]
    with torch.no_grad():
        expected = pipe.encode_prompt(prompt=DOMAIN_PROMPTS[0], prompt_2=None, max_sequence_length=16)

    encoder = PromptEncoder(pipe, ["", *DOMAIN_PROMPTS], max_sequence_length=16, device="cpu")
    # On FLUX.1-dev an encoder run with autograd on keeps T5's activations alive (and crashed training).
    assert grad_during_encoding and not any(grad_during_encoding)
    assert (
        pipe.text_encoder is None
        and pipe.text_encoder_2 is None
        and pipe.tokenizer is None
        and pipe.tokenizer_2 is None
    )
    gc.collect()
    assert [r() for r in refs] == [None] * 4, "T5/CLIP and the tokenizers are garbage-collected"
    empty, domain = encoder.cache[""], encoder.cache[DOMAIN_PROMPTS[0]]
    assert empty["prompt_embeds"].shape == (1, 16, 32) and empty["pooled_prompt_embeds"].shape == (1, 32)
    assert torch.equal(domain["prompt_embeds"], expected[0]) and torch.equal(
        domain["pooled_prompt_embeds"], expected[1]
    )
    assert not torch.allclose(empty["prompt_embeds"], domain["prompt_embeds"]), "the prompt reaches the embedding"
    for embeds in encoder.cache.values():
        assert all(t.grad_fn is None and not t.requires_grad for t in embeds.values())


def _generation_cfg(model: Path, **overrides) -> GenerationConfig:
    params = {
        "model": str(model),
        "num_images": 4,
        "height": 48,
        "width": 64,
        "steps": 2,
        "dtype": "float32",
        "device": "cpu",
        "max_sequence_length": 16,
    }
    return GenerationConfig.from_params(base_params("fluxgen", **{**params, **overrides}))


@pytest.mark.parametrize("prompts", [[], DOMAIN_PROMPTS], ids=["empty_prompt", "domain_prompts"])
def test_fluxgen_seeds_batches_and_resume_with_real_text_encoders(full_flux_dir, tmp_path, prompts):
    one = ImageStore(tmp_path / "one")
    assert generate_into_store(_generation_cfg(full_flux_dir, prompts=prompts), one, progress=False) == [0, 1, 2, 3]
    images = [read_image(one.path_for(i)) for i in range(4)]
    assert len({a.tobytes() for a in images}) == 4, "each id has its own noise"
    batched = ImageStore(tmp_path / "batched")
    generate_into_store(_generation_cfg(full_flux_dir, prompts=prompts, batch_size=3), batched, progress=False)
    for i in range(4):  # same seed -> same image, whatever the batch (tolerance: batched matmuls on CPU)
        assert np.abs(read_image(batched.path_for(i)).astype(int) - images[i]).max() <= 1
    one.path_for(2).unlink()
    kept = one.path_for(1).stat().st_mtime_ns
    assert generate_into_store(_generation_cfg(full_flux_dir, prompts=prompts), one, progress=False) == [2]
    assert one.path_for(1).stat().st_mtime_ns == kept
    assert np.array_equal(read_image(one.path_for(2)), images[2]), "resume regenerates the same pixels"


@pytest.mark.parametrize("kind", ["sdxl", "pixart_sigma", "sana"])
def test_other_backends_cache_the_embeddings_their_call_computes_and_free_the_encoders(
    full_format_model, tmp_path, kind
):
    """Embeddings encoded once (with the negative ones for classifier-free guidance) give the images the
    pipeline makes from the prompt text itself; the text encoders and tokenizers are gone afterwards."""
    model = full_format_model(kind)
    cfg = _generation_cfg(model, num_images=2, prompts=DOMAIN_PROMPTS, guidance=4.0)
    store = ImageStore(tmp_path)
    generate_into_store(cfg, store, progress=False)

    pipe = load_pipeline(str(model), dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    extra = {"clean_caption": False} if kind == "pixart_sigma" else {}
    expected = pipe(
        prompt=DOMAIN_PROMPTS,
        height=48,
        width=64,
        num_inference_steps=2,
        guidance_scale=4.0,
        generator=[torch.Generator().manual_seed(i) for i in (0, 1)],
        output_type="np",
        **extra,
    ).images
    for i in (0, 1):
        assert np.abs(read_image(store.path_for(i)).astype(int) - np.round(expected[i] * 255)).max() <= 1

    encoders = [n for n in pipe.components if n.startswith(("text_encoder", "tokenizer"))]
    refs = [weakref.ref(getattr(pipe, n)) for n in encoders]
    encoder = PromptEncoder(pipe, DOMAIN_PROMPTS, 16, "cpu", guidance=4.0)
    assert all(getattr(pipe, n) is None for n in encoders)
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    kwargs = encoder.batch_kwargs(DOMAIN_PROMPTS)
    assert "negative_prompt_embeds" in kwargs and kwargs["prompt_embeds"].shape[0] == 2
    with pytest.raises(ValueError, match="pass guidance"):
        PromptEncoder(load_pipeline(str(model), dtype="float32"), [""], 16, "cpu")


@pytest.mark.parametrize("kind", ["pixart_sigma", "sana"])
def test_t5_and_gemma_backends_use_the_prompt_as_given(full_format_model, tmp_path, kind):
    """PixArt-Sigma cleans captions by default only where bs4/ftfy are installed (warning on every call
    otherwise): fluxgen turns that off so a prompt gives the same pixels on every machine. (Sana's default
    is already off; its case runs domain prompts through the Gemma tokenizer.)"""
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    diffusers_logger = logging.getLogger("diffusers")  # diffusers' own handler does not propagate to pytest
    diffusers_logger.addHandler(handler)
    try:
        store = ImageStore(tmp_path)
        generate_into_store(
            _generation_cfg(full_format_model(kind), num_images=2, prompts=DOMAIN_PROMPTS), store, progress=False
        )
    finally:
        diffusers_logger.removeHandler(handler)
    assert all(store.exists(i) for i in (0, 1))
    assert not [r for r in records if "clean_caption" in r]


def test_domain_prompts_change_the_images(full_flux_dir, tmp_path):
    empty, domain = ImageStore(tmp_path / "e"), ImageStore(tmp_path / "d")
    generate_into_store(_generation_cfg(full_flux_dir, num_images=1), empty, progress=False)
    generate_into_store(_generation_cfg(full_flux_dir, num_images=1, prompts=DOMAIN_PROMPTS), domain, progress=False)
    assert not np.array_equal(read_image(empty.path_for(0)), read_image(domain.path_for(0)))


# ----------------------------------------------------------------------------------------------------
# Training and restoration load the same folder


def test_training_on_real_text_encoders_runs_several_optimizer_steps(full_flux_dir, tmp_path):
    """Prompt embeddings from real T5/CLIP carry no autograd graph: a graph would be freed by the first backward
    and the second optimizer step would fail ("backward through the graph a second time")."""
    from fluxir.training.config import TrainConfig
    from fluxir.training.loop import train
    from fluxir.training.loss import load_models

    from support import make_pairs, tiny_folders, tiny_params

    params = tiny_params(tmp_path, f"train.model={full_flux_dir}", "train.max_steps=3", "train.checkpoint_every=3")
    models = load_models(TrainConfig.from_params(params), "cpu")
    assert models.prompt_embeds.grad_fn is None and models.pooled_embeds.grad_fn is None
    assert models.prompt_embeds.shape == (1, 8, 32), "train.max_sequence_length T5 tokens of the empty prompt"
    result = train(params, make_pairs(tmp_path / "pairs", n=4), folders=tiny_folders(tmp_path), progress=False)
    assert list(result.history.step) == [1, 2, 3] and np.isfinite(result.history.loss).all()


def _restore_cfg(**overrides):

    params = {
        "steps": 4,
        "schedule": "flux_shift",
        "scale": 4,
        "tile_size": None,
        "vae_tile_size": None,
        "color_fix": "none",
        "seed": 3,
        "dtype": "float32",
        "device": "cpu",
        "max_sequence_length": 16,
    }
    return restore_config(**{**params, **overrides})


def test_sampler_without_adapter_is_diffusers_flux_pipeline(full_flux_dir):
    """Same noise, prompt embeddings, steps, guidance and schedule: the decoded images agree within 1/255, so
    the restorer's time direction, sign, packing and VAE scaling are the library's."""
    from fluxir.models.flux import pack_grid
    from fluxir.restoration.sampler import Restorer

    pipe = load_pipeline(str(full_flux_dir), dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    cfg = _restore_cfg()
    restorer = Restorer.from_pipeline(pipe, adapter=None, config=cfg)  # encodes "" with the real T5/CLIP
    assert pipe.text_encoder_2 is None, "the restorer dropped T5/CLIP after encoding"
    lq = (np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)
    ours = restorer.restore(lq)  # (48, 64, 3) uint8
    noise = torch.randn(1, 16, 6, 8, generator=torch.Generator("cpu").manual_seed(cfg.seed))  # the restorer's z_1
    theirs = pipe(
        prompt_embeds=restorer.prompt_embeds,
        pooled_prompt_embeds=restorer.pooled_prompt_embeds,
        latents=pack_grid(noise).reshape(1, -1, 64),
        height=48,
        width=64,
        num_inference_steps=cfg.steps,
        guidance_scale=restorer.guidance,
        output_type="np",
    ).images[0]  # (48, 64, 3) float in [0, 1]
    assert ours.shape == theirs.shape == (48, 64, 3)
    assert np.abs(ours / 255.0 - theirs).max() <= 1 / 255
    other = Restorer.from_pipeline(pipe, None, _restore_cfg(seed=4)).restore(lq)
    assert np.abs(other.astype(int) - ours).max() > 10, "the comparison can fail: another noise differs"


def test_training_target_has_the_sign_the_sampler_integrates(full_flux_dir, tmp_path):
    """A model predicting the velocity that the sampler's Euler step (diffusers' FlowMatchEulerDiscreteScheduler,
    which the restorer reproduces above) takes from z_t straight to z_0 has zero training loss (Eq. 7-8)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fluxir.training.config import TrainConfig
    from fluxir.training.loss import MicroBatch, flow_matching_loss

    from support import tiny_params

    cfg = TrainConfig.from_params({**tiny_params(tmp_path, f"train.model={full_flux_dir}"), "pixel_loss_weight": 0})
    gen = torch.Generator().manual_seed(0)
    z0, z1, zlq = (torch.randn(2, 12, 64, generator=gen) for _ in range(3))
    batch = MicroBatch(z0=z0, z1=z1, z_lq=zlq, t=torch.tensor([0.3, 0.8]), crops=None, h=6, w=8)

    def euler_to_z0(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity v with scheduler.step(v, t -> 0) == z_0, per sample (the step is linear in v)."""
        velocities = []
        for i in range(z_t.shape[0]):
            scheduler = FlowMatchEulerDiscreteScheduler()
            scheduler.set_timesteps(sigmas=[float(t[i])], device="cpu")  # sigmas [t, 0]
            origin = scheduler.step(torch.zeros_like(z_t[i]), scheduler.timesteps[0], z_t[i]).prev_sample
            scheduler._step_index = None
            unit = scheduler.step(torch.ones_like(z_t[i]), scheduler.timesteps[0], z_t[i]).prev_sample - origin
            velocities.append((z0[i] - origin) / unit)  # unit = (0 - t)
        return torch.stack(velocities)

    class EulerProbe(torch.nn.Module):
        def __init__(self, sign: float) -> None:
            super().__init__()
            self.sign = sign

        def forward(self, z_t, z_lq, prompt, pooled, t, img_ids, txt_ids):  # ControlledFlux's signature
            return self.sign * euler_to_z0(z_t, t)

    flux = load_pipeline(str(full_flux_dir), dtype="float32").transformer
    prompt, pooled = torch.zeros(1, 8, 32), torch.zeros(1, 32)
    right = flow_matching_loss(EulerProbe(1.0), flux, None, batch, prompt, pooled, cfg)[1]
    wrong = flow_matching_loss(EulerProbe(-1.0), flux, None, batch, prompt, pooled, cfg)[1]
    assert float(right) < 1e-10 and float(wrong) > 1.0


# ----------------------------------------------------------------------------------------------------
# Kedro: every pipeline on the full-format Flux; other backends as a parameter change (paper Tables 4/7)


def _latest(project: Path, relative: str) -> Path:
    return max((project / relative).glob("*/*"))


@pytest.mark.parametrize("kind", ["sdxl", "pixart_sigma", "sana"])
def test_kedro_fluxgen_with_another_backend(full_format_model, tmp_path, kind):
    import mlflow

    model = full_format_model(kind)
    project = make_project_copy(tmp_path / "project")
    kedro_run(
        project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        f"--params=fluxgen.model={model},fluxgen.num_images=4,fluxgen.steps=2",
    )
    generated = pd.read_parquet(_latest(project, "data/02_intermediate/generated_images.parquet"))
    assert list(generated["image_id"]) == [0, 1, 2, 3] and set(generated["model"]) == {str(model)}
    images = [read_image(project / p) for p in generated["path"]]
    assert {a.shape for a in images} == {(48, 64, 3)}, "resolution binning resized back to fluxgen's size"
    assert len({a.tobytes() for a in images}) == 4 and min(float(a.std()) for a in images) > 1
    pairs = pd.read_parquet(_latest(project, "data/05_model_input/pairs_manifest.parquet"))
    assert 0 < len(pairs) <= 4
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.data.params["fluxgen.model"] == str(model)


def test_kedro_all_pipelines_on_the_full_format_flux(full_flux_dir, tmp_path):
    """`kedro run` (fluxgen -> train -> evaluate) and then `--pipeline=restore`, all on the FLUX.1-dev-format folder."""
    from fluxir.models.adapter import load_adapter

    from support import make_mixed_folder

    project = make_project_copy(tmp_path / "project")
    model = str(full_flux_dir)
    # the documented `kedro run --env=tiny` (docs/index.md) on the full-format Flux, with fewer images and steps
    kedro_run(
        project,
        "run",
        "--env=tiny",
        "--params="
        + ",".join(
            [
                f"fluxgen.model={model}",
                "fluxgen.num_images=6",
                "fluxgen.steps=2",
                f"train.model={model}",
                "train.max_steps=3",
                "train.validate_every=3",
                "train.checkpoint_every=3",
                "train.log_every=1",
                f"evaluate.restore.model={model}",
                "evaluate.restore.steps=2",
            ]
        ),
    )
    history = pd.read_parquet(next((project / "data/07_model_output/train_history.parquet").rglob("*.parquet")))
    assert list(history.step) == [1, 2, 3], "three optimizer steps on real T5/CLIP embeddings"
    adapter = load_adapter(next((project / "data/06_models/fluxir_adapter").glob("*/fluxir_adapter")))
    assert adapter.config.text_seq_len == 8, "train.max_sequence_length T5 tokens"
    table = pd.read_parquet(_latest(project, "data/08_reporting/evaluation_per_image.parquet"))
    fluxir = table[table["method"] == "fluxir"]
    assert set(fluxir["label"]) >= {"PSNR", "SSIM", "LPIPS"} and fluxir["value"].notna().all()

    make_mixed_folder(project / "photos")
    kedro_run(
        project,
        "run",
        "--env=tiny",
        "--pipeline=restore",
        "--params="
        + ",".join(
            [
                f"restore.model={model}",
                "restore.input_dir=photos",
                "restore.output_dir=restored",
                "restore.progress=false",
            ]
        ),
    )
    summary = json.loads(_latest(project, "data/08_reporting/restore_summary.json").read_text())
    assert summary["restored"] == 5 and summary["failed"] == 3
    assert read_image(project / "restored" / "rgb.png").shape == (40, 56, 3)
