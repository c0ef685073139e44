"""Bounded restoration: an oversized output is refused before any model loads, the cost is stated before each
image, and running out of memory on one file leaves a row in the failures while the others are restored."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fluxir.models.adapter import FluxIRAdapter
from fluxir.restoration.files import restore_files
from fluxir.restoration.sampler import RestoreConfig, check_output_size

from conftest import TINY_FLUX

FAST = {"steps": 2, "dtype": "float32", "device": "cpu", "tile_size": None, "vae_tile_size": None, "color_fix": "none"}


def _photo(path, width, height):
    rng = np.random.default_rng(width * height)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_a_phone_photo_at_scale_4_is_refused_with_sizes_scale_and_the_parameter():
    with pytest.raises(ValueError) as err:
        check_output_size(4000, 6000, RestoreConfig(), "phone.jpg")
    message = str(err.value)
    assert "phone.jpg: 6000x4000 with restore.scale 4 gives a 24000x16000 output (384.0 MP" in message
    assert "above restore.max_output_megapixels = 16" in message
    assert "Lower restore.scale (at most 0.8 fits)" in message
    work = check_output_size(768, 1024, RestoreConfig(), "ok.png")  # 4096x3072 = 12.6 MP: allowed
    assert work.out_size == (4096, 3072) and work.tiles == 20 and work.passes == 400


def test_an_oversized_file_fails_before_the_model_is_loaded(tmp_path):
    big = _photo(tmp_path / "big.png", 64, 48)
    cfg = RestoreConfig(**FAST, max_output_megapixels=0.01)  # x4: 256x192 = 0.05 MP
    # the model does not exist: loading it would raise, so an entry in the failures proves it was never loaded
    results, failures, load_seconds = restore_files(
        "no/such/model", None, cfg, [(big, str(tmp_path / "out.png"))], progress=False
    )
    assert results == [] and load_seconds == 0.0
    assert failures == [{"input": big, "reason": failures[0]["reason"]}]
    assert "big.png: 64x48 with restore.scale 4 gives a 256x192 output" in failures[0]["reason"]
    assert not (tmp_path / "out.png").exists()


class RunsOutOfMemoryOn(FluxIRAdapter):
    """A tiny adapter whose control pass fails as a too-large allocation would, for one input size only."""

    tokens_that_fail = -1

    def features(self, hidden_states, lq_latents, *args, **kwargs):
        if lq_latents.shape[1] == self.tokens_that_fail:
            raise MemoryError("Unable to allocate 4.6 GiB for an array")
        return super().features(hidden_states, lq_latents, *args, **kwargs)


def test_out_of_memory_on_one_file_is_its_failure_row_and_the_others_are_restored(tmp_path, caplog):
    from fluxir.models.flux import load_pipeline

    flux = load_pipeline(str(TINY_FLUX), dtype="float32", device="cpu").transformer
    adapter = RunsOutOfMemoryOn.from_flux(flux, text_seq_len=8)
    adapter.tokens_that_fail = (48 * 4 // 16) * (48 * 4 // 16)  # the 48x48 input's output grid, 12 x 12 tokens
    jobs = [
        (_photo(tmp_path / f"{name}.png", w, h), str(tmp_path / "out" / f"{name}.png"))
        for name, (w, h) in {"a": (32, 32), "b": (48, 48), "c": (32, 48)}.items()
    ]
    with caplog.at_level(logging.INFO, logger="fluxir.restoration.files"):
        results, failures, _ = restore_files(str(TINY_FLUX), adapter, RestoreConfig(**FAST), jobs, progress=False)
    assert [r.input for r in results] == [jobs[0][0], jobs[2][0]]
    assert [f["input"] for f in failures] == [jobs[1][0]]
    assert failures[0]["reason"].startswith("out of CPU memory at a 192x192 output (Unable to allocate 4.6 GiB")
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "c.png").is_file()
    assert not (tmp_path / "out" / "b.png").exists()
    log = caplog.text
    assert "32x32 -> 128x128 (0.0 MP), 1 tile(s) x 2 steps, time measured on this first image" in log
    assert "32x48 -> 128x192 (0.0 MP), 1 tile(s) x 2 steps, about" in log  # estimated from the first image's rate
