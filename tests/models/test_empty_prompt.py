"""The empty prompt encoded once per (model, sequence length): later loads never build T5 or CLIP.

On the full-format tiny Flux (real CLIPTextModel and T5EncoderModel classes): the text encoders' classes
are counted each time one is instantiated; with the cached embeddings, training, generation with the
empty prompt and restoration instantiate none, and their results equal those of a run that encodes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from fluxir.fluxgen.generate import GenerationConfig, generate_into_store
from fluxir.io.store import ImageStore
from fluxir.models.prompts import empty_prompt_file, empty_prompt_key

from support import base_params, restore_config


@pytest.fixture
def text_encoders_built(monkeypatch):
    """Names of the text-encoder classes instantiated from now on, one entry per instance."""
    built: list[str] = []
    for cls in (transformers.CLIPTextModel, transformers.T5EncoderModel):
        original = cls.__init__

        def counting_init(self, *args, _original=original, _name=cls.__name__, **kwargs):
            built.append(_name)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting_init)
    return built


def test_training_encodes_once_then_loads_no_text_encoder(full_flux_dir, tmp_path, text_encoders_built):
    from fluxir.training.config import TrainConfig
    from fluxir.training.loss import load_models

    from support import tiny_params

    cfg = TrainConfig.from_params(tiny_params(tmp_path, f"train.model={full_flux_dir}"))
    cache = tmp_path / "prompt_embeddings"
    first = load_models(cfg, "cpu", cache)
    assert sorted(text_encoders_built) == ["CLIPTextModel", "T5EncoderModel"]
    assert empty_prompt_file(cache, cfg.model, cfg.max_sequence_length, cfg.dtype).is_file()
    text_encoders_built.clear()
    second = load_models(cfg, "cpu", cache)
    assert text_encoders_built == [], "T5 and CLIP were instantiated although the empty prompt was cached"
    assert torch.equal(first.prompt_embeds, second.prompt_embeds)
    assert torch.equal(first.pooled_embeds, second.pooled_embeds)
    assert second.prompt_embeds.shape == (1, cfg.max_sequence_length, 32)
    # another sequence length is another entry (encoded, not reused)
    other = TrainConfig.from_params(
        tiny_params(tmp_path, f"train.model={full_flux_dir}", "train.max_sequence_length=6")
    )
    assert load_models(other, "cpu", cache).prompt_embeds.shape == (1, 6, 32)
    assert sorted(text_encoders_built) == ["CLIPTextModel", "T5EncoderModel"]


def test_generation_and_restoration_reuse_the_cached_prompt(full_flux_dir, tmp_path, text_encoders_built):
    from fluxir.restoration.sampler import Restorer

    cache = tmp_path / "prompt_embeddings"
    cfg = GenerationConfig.from_params(
        base_params(
            "fluxgen",
            model=str(full_flux_dir),
            num_images=2,
            height=48,
            width=64,
            steps=2,
            dtype="float32",
            device="cpu",
            write_threads=0,
        )
    )
    encoded, cached = ImageStore(tmp_path / "encoded"), ImageStore(tmp_path / "cached")
    generate_into_store(cfg, encoded, progress=False, prompt_cache=cache)
    assert sorted(text_encoders_built) == ["CLIPTextModel", "T5EncoderModel"]
    text_encoders_built.clear()
    generate_into_store(cfg, cached, progress=False, prompt_cache=cache)
    assert text_encoders_built == []
    for i in range(2):
        assert np.array_equal(encoded.read(i), cached.read(i))

    restore = restore_config(
        steps=2,
        tile_size=None,
        vae_tile_size=None,
        color_fix="none",
        dtype="float32",
        device="cpu",
        max_sequence_length=cfg.max_sequence_length,
    )
    lq = (np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)
    from_cache = Restorer.from_source(str(full_flux_dir), None, restore, prompt_cache=cache).restore(lq)
    assert text_encoders_built == [], "the generation's entry serves restoration (same model, length, dtype)"
    encoding = Restorer.from_source(str(full_flux_dir), None, restore).restore(lq)  # no cache: encodes
    assert sorted(text_encoders_built) == ["CLIPTextModel", "T5EncoderModel"]
    assert np.array_equal(from_cache, encoding)


def test_the_key_follows_the_text_encoder_files(full_flux_dir, tmp_path):
    import shutil

    copy = tmp_path / "flux"
    shutil.copytree(full_flux_dir, copy)
    key = empty_prompt_key(str(copy), 512, "bfloat16")
    assert key == empty_prompt_key(str(copy), 512, "bfloat16")
    assert key != empty_prompt_key(str(copy), 256, "bfloat16") != empty_prompt_key(str(copy), 512, "float32")
    weights = next((copy / "text_encoder_2").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # a replaced T5 (new mtime): the old embeddings are not reused
    assert empty_prompt_key(str(copy), 512, "bfloat16") != key
