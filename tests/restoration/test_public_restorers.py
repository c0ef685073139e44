"""The public restorers (Real-ESRGAN x4plus, a Flux ControlNet upscaler) on tiny random weights.

The tiny weights are written in the published layouts by ``python scripts/tiny_models.py`` (a ``.pth`` with
``params_ema``; a diffusers ``FluxControlNetModel`` folder) and loaded through the same code a user's real
weights go through. They prove loading, tiling, geometry and determinism, never quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fluxir.parameters.config import load_params
from fluxir.restoration.methods import METHODS, RestorerSpec
from fluxir.restoration.restore_config import OutputGeometry

from conftest import REPO

# its module fixtures are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_public_restorers")

TINY = REPO / "data" / "01_raw" / "tiny"


def baselines(**changes) -> dict:
    """conf/tiny's ``baselines`` parameters with ``changes`` ({"realesrgan": {...}} merged per method)."""
    params = load_params("tiny", [], REPO)["baselines"]
    return {m: {**params[m], **changes.get(m, {})} for m in params}


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def make(method: str, scale: float = 4, color_fix: str = "none", target_size=None, **changes):
    cfg = METHODS[method].settings(baselines(**{method: changes}))
    geometry = OutputGeometry(scale=scale, target_size=target_size, color_fix=color_fix)
    return RestorerSpec(METHODS[method], geometry, cfg).load()


# ----------------------------------------------------------------------------------------------------
# Real-ESRGAN


def test_tiny_weights_are_what_the_builder_writes(tmp_path):
    from safetensors.torch import load_file

    from tiny_models import main

    main(["--kind", "realesrgan", "--out", str(tmp_path / "r.pth")])
    main(["--kind", "flux_controlnet", "--out", str(tmp_path / "c")])
    committed = torch.load(TINY / "realesrgan/RealESRGAN_x4plus.pth", weights_only=True)
    rebuilt = torch.load(tmp_path / "r.pth", weights_only=True)
    assert list(committed) == ["params_ema"] and committed["params_ema"].keys() == rebuilt["params_ema"].keys()
    assert all(torch.equal(committed["params_ema"][k], rebuilt["params_ema"][k]) for k in rebuilt["params_ema"])
    a = load_file(TINY / "flux_controlnet/diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "c/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("controlnet_blocks") and a[k].abs().sum() > 0 for k in a)  # not zero-initialised


def test_realesrgan_is_x4_and_tiles_with_context_like_real_esrgan():
    lq = photo(24, 20)
    whole = make("realesrgan", tile_size=None).restore(lq)
    assert whole.shape == (96, 80, 3) and whole.std() > 5  # not a constant image
    # With context covering the receptive field, tiles give the untiled result; without it, tile edges differ.
    wide = make("realesrgan", tile_size=8, tile_pad=24).restore(lq)
    assert np.abs(wide.astype(int) - whole).max() <= 1
    bare = make("realesrgan", tile_size=8, tile_pad=0).restore(lq)
    assert np.abs(bare.astype(int) - whole).max() > 5
    assert not np.array_equal(make("realesrgan").restore(photo(24, 20, seed=1)), make("realesrgan").restore(lq))


def test_realesrgan_other_output_sizes_resize_its_x4_output():
    lq = photo(16, 16)
    x4 = make("realesrgan").restore(lq)
    x2 = make("realesrgan", scale=2).restore(lq)
    assert x2.shape == (32, 32, 3)
    expected = np.asarray(Image.fromarray(x4).resize((32, 32), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(x2, expected)
    assert make("realesrgan", target_size=[40, 24]).restore(lq).shape == (24, 40, 3)


def test_realesrgan_bad_weights_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"baselines.realesrgan.weights: .*nope.pth not found.*fluxir.fetch"):
        make("realesrgan", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match=r"does not fit RRDBNet\(num_feat=16.*set baselines.realesrgan"):
        make("realesrgan", num_feat=16)
    torch.save({"state": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"no 'params_ema' or 'params' state dict \(found \['state'\]\)"):
        make("realesrgan", weights=str(tmp_path / "other.pth"))
    (tmp_path / "cut.pth").write_bytes((TINY / "realesrgan/RealESRGAN_x4plus.pth").read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        make("realesrgan", weights=str(tmp_path / "cut.pth"))
    with pytest.raises(ValueError, match=r"baselines.realesrgan.tile_pad must be an integer >= 0, got -1"):
        make("realesrgan", tile_pad=-1)
    with pytest.raises(ValueError, match=r"unknown baselines.realesrgan parameter\(s\) \[.tile.\]"):
        METHODS["realesrgan"].settings(baselines(realesrgan={"tile": 4}))


# ----------------------------------------------------------------------------------------------------
# Flux ControlNet


@pytest.fixture(scope="module")
def controlnet_restorer():
    return make("flux_controlnet")


def test_controlnet_restores_any_size_deterministically_and_follows_the_lq(controlnet_restorer):
    restorer = controlnet_restorer
    lq = photo(17, 23)  # output 68 x 92: padded to 80 x 96 for the pipeline, cropped back
    steps = []
    out = restorer.restore(lq, on_step=lambda done, total: steps.append((done, total)))
    assert out.shape == (68, 92, 3) and steps == [(i, 4) for i in range(1, 5)]
    np.testing.assert_array_equal(restorer.restore(lq), out)  # seeded
    other = restorer.restore(photo(17, 23, seed=3))
    assert np.abs(other.astype(int) - out).mean() > 1  # the control image steers the result
    restorer.cfg.conditioning_scale = 0.0  # no control: the LQ no longer matters
    try:
        a, b = restorer.restore(lq), restorer.restore(photo(17, 23, seed=3))
    finally:
        restorer.cfg.conditioning_scale = 0.6
    np.testing.assert_array_equal(a, b)


def test_controlnet_colour_fix_pulls_colours_to_the_lq(controlnet_restorer):
    from fluxir.restoration.sampler import upsample

    lq = photo(16, 16)
    raw = controlnet_restorer.restore(lq)
    controlnet_restorer.config = OutputGeometry(scale=4, target_size=None, color_fix="adain")
    try:
        fixed = controlnet_restorer.restore(lq)
    finally:
        controlnet_restorer.config = OutputGeometry(scale=4, target_size=None, color_fix="none")
    reference = upsample(lq, 64, 64).reshape(-1, 3).mean(0)
    assert np.abs(fixed.reshape(-1, 3).mean(0) - reference).max() < np.abs(raw.reshape(-1, 3).mean(0) - reference).max()


def test_controlnet_that_does_not_fit_the_flux_is_named(tmp_path):
    from diffusers import FluxControlNetModel

    from fluxir.models.flux import load_config

    config = {**load_config("tiny_flux_controlnet"), "joint_attention_dim": 48}
    FluxControlNetModel(**config).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match=r"does not fit the Flux transformer.*joint_attention_dim 48 vs 32"):
        make("flux_controlnet", controlnet=str(tmp_path / "wide"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty has no config.json"):
        make("flux_controlnet", controlnet=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"could not load the ControlNet 'someone/missing'.*fluxir.fetch"):
        make("flux_controlnet", controlnet="someone/missing")


def test_fingerprints_follow_the_weights(tmp_path):
    import shutil

    cfg = METHODS["realesrgan"].settings(baselines())
    first = METHODS["realesrgan"].fingerprint(cfg)
    shutil.copy(cfg.weights, tmp_path / "same.pth")
    same = METHODS["realesrgan"].settings(baselines(realesrgan={"weights": str(tmp_path / "same.pth")}))
    assert METHODS["realesrgan"].fingerprint(same) == first  # content, not location
    from tiny_models import write_tiny_controlnet

    tiny = METHODS["flux_controlnet"].settings(baselines())
    other = write_tiny_controlnet(tmp_path / "seed1", seed=1)
    changed = METHODS["flux_controlnet"].settings(baselines(flux_controlnet={"controlnet": str(other)}))
    assert METHODS["flux_controlnet"].fingerprint(changed) != METHODS["flux_controlnet"].fingerprint(tiny)
