"""Bounded restoration: an oversized output is refused before any model loads, the cost is stated before each
image, and running out of memory on one file leaves a row in the failures while the others are restored."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from PIL import Image

from fluxir.models.adapter import FluxIRAdapter
from fluxir.parameters.config import load_params
from fluxir.restoration.files import restore_files
from fluxir.restoration.methods import METHODS, restorer_spec
from fluxir.restoration.sampler import Restorer

from conftest import REPO, TINY_FLUX
from support import adapter_params, restore_config

FAST = {"steps": 2, "dtype": "float32", "device": "cpu", "tile_size": None, "vae_tile_size": None, "color_fix": "none"}


def check_output_size(height, width, cfg, name, method="fluxir"):
    """The work of an (height, width) input with ``method`` (the tiny env's settings), its size checked."""
    return restorer_spec(method, cfg, BASELINES).work(height, width, name)


def _photo(path, width, height):
    rng = np.random.default_rng(width * height)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_a_phone_photo_at_scale_4_is_refused_with_sizes_scale_and_the_parameter():
    with pytest.raises(ValueError) as err:
        check_output_size(4000, 6000, restore_config(), "phone.jpg")
    message = str(err.value)
    assert "phone.jpg: 6000x4000 with restore.scale 4 gives a 24000x16000 output (384.0 MP" in message
    assert "above restore.max_output_megapixels = 16" in message
    assert "Lower restore.scale (at most 0.8 fits)" in message
    work = check_output_size(768, 1024, restore_config(), "ok.png")  # 4096x3072 = 12.6 MP: allowed
    assert work.out_size == (4096, 3072) and work.tiles == 20 and work.passes == 400


def test_an_oversized_file_fails_before_the_model_is_loaded(tmp_path):
    big = _photo(tmp_path / "big.png", 64, 48)
    cfg = restore_config(**FAST, max_output_megapixels=0.01)  # x4: 256x192 = 0.05 MP
    # the model does not exist: loading it would raise, so an entry in the failures proves it was never loaded
    spec = restorer_spec("fluxir", cfg, model="no/such/model")
    results, failures, load_seconds = restore_files(spec, [(big, str(tmp_path / "out.png"))], progress=False)
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
    from fluxir.models.loading import load_pipeline

    flux = load_pipeline(str(TINY_FLUX), dtype="float32", device="cpu").transformer
    adapter = RunsOutOfMemoryOn.from_flux(flux, **adapter_params(text_seq_len=8))
    adapter.tokens_that_fail = (48 * 4 // 16) * (48 * 4 // 16)  # the 48x48 input's output grid, 12 x 12 tokens
    jobs = [
        (_photo(tmp_path / f"{name}.png", w, h), str(tmp_path / "out" / f"{name}.png"))
        for name, (w, h) in {"a": (32, 32), "b": (48, 48), "c": (32, 48)}.items()
    ]
    with caplog.at_level(logging.INFO, logger="fluxir.restoration.files"):
        spec = restorer_spec("fluxir", restore_config(**FAST), model=str(TINY_FLUX), adapter=adapter)
        results, failures, _ = restore_files(spec, jobs, progress=False)
    assert [r.input for r in results] == [jobs[0][0], jobs[2][0]]
    assert [f["input"] for f in failures] == [jobs[1][0]]
    assert failures[0]["reason"].startswith("out of CPU memory at a 192x192 output (Unable to allocate 4.6 GiB")
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "c.png").is_file()
    assert not (tmp_path / "out" / "b.png").exists()
    log = caplog.text
    # the first image's estimate comes from a warm-up after the model loaded, the later ones' from the images before
    assert "a.png: 32x32 -> 128x128 (0.0 MP), 1 tile(s) x 2 steps, estimated " in log
    assert re.search(r"a\.png: .*estimated \d+ s \(2 tile-steps x [0-9.e-]+ s, timed on a warm-up\)", log)
    assert re.search(
        r"c\.png: 32x48 -> 128x192 .*estimated \d+ s \(2 tile-steps x .*, rate of the images before\)", log
    )
    assert "no time estimate" not in log


BASELINES = load_params("tiny", [], REPO)["baselines"]


def test_each_method_states_its_own_work():
    cfg = restore_config(**FAST)
    esrgan = METHODS["realesrgan"].settings(BASELINES)  # tiny: tiles of 8 LQ pixels
    work = METHODS["realesrgan"].plan(16, 24, cfg, esrgan)
    assert (work.tiles, work.steps, work.passes) == (6, None, 6)
    assert (
        work.describe()
        == "24x16 -> 96x64 (0.0 MP), 6 Real-ESRGAN tile(s), one pass each (no steps), no time estimate yet"
    )
    assert work.describe(0.5).endswith("estimated 3 s (6 tiles x 0.5 s, rate of the images before)")
    controlnet = METHODS["flux_controlnet"].settings(BASELINES)
    work = METHODS["flux_controlnet"].plan(16, 24, cfg, controlnet)
    assert (work.tiles, work.steps, work.passes) == (1, 4, 4)
    assert "96x64 (0.0 MP), the whole image (the Flux ControlNet does not tile) x 4 steps" in work.describe()
    tiled = METHODS["fluxir"].plan(768, 1024, restore_config(), None)
    assert (tiled.tiles, tiled.steps, tiled.unit_size) == (20, 20, (1024, 1024))
    assert tiled.describe(1.5, "timed on a warm-up").endswith(
        "20 tile(s) x 20 steps, estimated 10.0 min (400 tile-steps x 1.5 s, timed on a warm-up)"
    )


def test_the_controlnet_has_its_own_smaller_output_bound():
    controlnet = METHODS["flux_controlnet"].settings(BASELINES)  # max_output_megapixels 2: it does not tile
    assert controlnet.max_output_megapixels < restore_config().max_output_megapixels
    check_output_size(512, 512, restore_config(), "ok.png")  # 2048x2048 = 4.2 MP: FluxIR tiles it
    with pytest.raises(ValueError) as err:
        check_output_size(512, 512, restore_config(), "big.png", "flux_controlnet")
    message = str(err.value)
    assert "big.png: 512x512 with restore.scale 4 gives a 2048x2048 output (4.2 MP, the whole image" in message
    assert (
        "above baselines.flux_controlnet.max_output_megapixels = 2 (the Flux ControlNet restores the whole" in message
    )
    assert "Lower restore.scale (at most 2.7 fits)" in message
    assert "or raise baselines.flux_controlnet.max_output_megapixels" in message
    with pytest.raises(ValueError, match="above restore.max_output_megapixels = 1. Lower"):  # the smaller one binds
        check_output_size(512, 512, restore_config(max_output_megapixels=1), "big.png", "flux_controlnet")


def test_a_warm_up_times_one_unit_and_leaves_the_restorer_as_it_was(tmp_path, caplog):
    lq = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    cfg = restore_config(**{**FAST, "tile_size": 32, "tile_overlap": 16, "steps": 3})
    fresh = Restorer.from_source(str(TINY_FLUX), None, cfg).restore(lq)
    restorer = Restorer.from_source(str(TINY_FLUX), None, cfg)
    work = check_output_size(12, 20, cfg, "lq.png")
    assert work.tiles > 1 and work.unit_size == (32, 32)
    assert METHODS["fluxir"].warm_up(restorer, work) > 0
    assert restorer.config == cfg
    np.testing.assert_array_equal(restorer.restore(lq), fresh)

    spec = restorer_spec("realesrgan", restore_config(**FAST), BASELINES)
    jobs = [(_photo(tmp_path / "p.png", 24, 16), str(tmp_path / "out" / "p.png"))]
    with caplog.at_level(logging.INFO, logger="fluxir.restoration.files"):
        results, failures, _ = restore_files(spec, jobs, False)
    assert failures == [] and results[0].out_size == (96, 64)
    assert re.search(r"24x16 -> 96x64 .*6 Real-ESRGAN tile\(s\).*\(6 tiles x .* s, timed on a warm-up\)", caplog.text)


def test_each_restore_process_runs_a_public_restorer_on_its_own_device():
    """``auto`` follows the process's accelerate device (rank r on cuda:r); a device set by hand is kept."""
    cfg = restore_config(**FAST)
    auto = {**BASELINES, "realesrgan": {**BASELINES["realesrgan"], "device": "auto"}}
    assert restorer_spec("realesrgan", cfg, auto, device="cuda:3").settings.device == "cuda:3"
    assert restorer_spec("realesrgan", cfg, BASELINES, device="cuda:3").settings.device == "cpu"
