"""Restoration: geometry, schedule, determinism, seamless tiling, any-photo input, and the Kedro restore pipeline."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fluxir.io.provenance import sha256_file
from fluxir.models.flux import pack_grid, unpack_grid
from fluxir.restoration import files as F
from fluxir.restoration import sampler as S

from support import adapter_params, make_mixed_folder, restore_config, restore_settings

# ----------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def pipe():
    """The tiny random-weight Flux pipeline (float32, CPU), loaded once for this module."""
    from fluxir.models.loading import load_pipeline

    from conftest import TINY_FLUX

    pipe = load_pipeline(str(TINY_FLUX), dtype="float32", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def restorer(pipe, adapter=None, **overrides) -> S.Restorer:
    params = {
        "steps": 4,
        "dtype": "float32",
        "device": "cpu",
        "tile_size": None,
        "vae_tile_size": None,
        "color_fix": "none",
    }
    return S.Restorer.from_pipeline(pipe, adapter, restore_config(**{**params, **overrides}))


def smooth_lq(size: int, seed: int = 0) -> np.ndarray:
    """A photo-like LQ: random colours at 1/4 resolution, bicubic-upsampled to (size, size, 3)."""
    small = np.random.default_rng(seed).integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def perturbed_adapter(pipe):
    """An adapter whose zero-initialised layers (M_i, SE W_e/B_e) were given small random values: it now
    responds to the LQ latent, as a trained one does."""
    from fluxir.models.adapter import FluxIRAdapter

    with torch.random.fork_rng():
        torch.manual_seed(0)  # the SE squeeze layers W_s are randomly initialised
        adapter = FluxIRAdapter.from_flux(pipe.transformer, **adapter_params(text_seq_len=8))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in [adapter.input_proj, *[se.excite for se in adapter.se_z]]:
            module.weight.copy_(0.2 * torch.randn(module.weight.shape, generator=gen))
    return adapter


def seam_zone(spans: list[tuple[int, int]], unit: int, length: int, margin: int = 4) -> np.ndarray:
    """Boolean mask over pixels: the overlaps between neighbouring tiles (where blending happens) +- margin."""
    zone = np.zeros(length, bool)
    for (_, end_prev), (start_next, _) in itertools.pairwise(spans):
        zone[max(0, start_next * unit - margin) : end_prev * unit + margin] = True
    return zone


# ----------------------------------------------------------------------------------------------------
# Geometry and schedule


def test_pack_is_fluxpipelines_packing_and_unpack_inverts_it():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 10)
    grid = pack_grid(latents)
    assert grid.shape == (2, 3, 5, 64)
    assert torch.equal(grid.reshape(2, 15, 64), FluxPipeline._pack_latents(latents, 2, 16, 6, 10))
    assert torch.equal(unpack_grid(grid), latents)


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(24, 8, 2), (25, 8, 4), (100, 64, 16), (64, 64, 16), (7, 8, 2), (500, 64, 0)]
)
def test_tiles_cover_the_image_with_at_least_the_overlap(length, tile, overlap):
    spans = S.tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    if length <= tile:
        assert spans == [(0, length)]
        return
    assert all(end - start == tile for start, end in spans)
    assert all(prev_end - next_start >= overlap for (_, prev_end), (next_start, _) in itertools.pairwise(spans))
    assert len(spans) == math.ceil((length - overlap) / (tile - overlap))


@pytest.mark.parametrize("factor", [1, 8])
def test_tile_weights_sum_to_one_and_change_smoothly(factor):
    height, width, tile, overlap = 30, 44, 12, 4
    canvas = np.zeros((height * factor, width * factor))
    tiles = list(S.tile_weights(height, width, tile, overlap, factor))
    assert len(tiles) > 4
    for (y0, y1, x0, x1), w in tiles:
        assert w.shape == ((y1 - y0) * factor, (x1 - x0) * factor) and (w > 0).all()
        canvas[y0 * factor : y1 * factor, x0 * factor : x1 * factor] += w
        # the steepest step of a sin^2 ramp over R samples is pi / (2R); R >= overlap * factor
        assert np.abs(np.diff(w, axis=1)).max() <= math.pi / (2 * overlap * factor) + 1e-9
    np.testing.assert_allclose(canvas, 1.0, atol=1e-6)
    (_, w_first) = tiles[0]
    assert w_first[0, 0] == pytest.approx(1.0), "an image corner belongs to one tile only"


def test_flux_shift_is_fluxs_schedule_and_linear_is_linear():
    config = {
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "shift": 3.0,
    }
    linear = S.sigmas_for(20, "linear", config, 4096)
    assert torch.allclose(linear, torch.linspace(1, 0, 21))
    shifted = S.sigmas_for(20, "flux_shift", config, 4096)  # 1024x1024 output: mu = max_shift = 1.15
    t = np.linspace(1, 1 / 20, 20)
    expected = np.exp(1.15) / (np.exp(1.15) + (1 / t - 1))  # FlowMatchEulerDiscreteScheduler.time_shift
    np.testing.assert_allclose(shifted[:-1].numpy(), expected, rtol=1e-5)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted.diff() < 0).all()
    assert (shifted[1:-1] > linear[1:-1]).all(), "the shift spends more steps at high noise"
    huge = S.sigmas_for(20, "flux_shift", config, 10**6)  # 16k x 16k: clamped, not extrapolated to all ~1
    assert torch.equal(huge, shifted)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": 0}, "restore.steps must be a positive integer"),
        ({"schedule": "cosine"}, "restore.schedule must be one of"),
        ({"tile_size": 100}, "restore.tile_size must be a multiple of 16"),
        (
            {"tile_size": 128, "tile_overlap": 80},
            "restore.tile_overlap must be a multiple of 16 in [0, tile_size/2 = 64]",
        ),
        ({"vae_tile_size": 100}, "restore.vae_tile_size must be a multiple of 8"),
        ({"color_fix": "histogram"}, "restore.color_fix must be one of"),
        ({"scale": 0}, "restore.scale must be a number > 0"),
        ({"target_size": [100]}, "restore.target_size must be an int (longer side) or [width, height]"),
        ({"dtype": "int8"}, "restore.dtype must be one of"),
        ({"sampler": "dpm"}, "unknown restore parameter(s) ['sampler']"),
        ({"control_scale": -1}, "restore.control_scale must be a number >= 0"),
        ({"plain_flux_guidance": -1}, "restore.plain_flux_guidance must be a number >= 0"),
        ({"start_t": 0}, "restore.start_t must be a number in (0, 1]"),
        ({"start_t": 1.5}, "restore.start_t must be a number in (0, 1]"),
        ({"offload": "disk"}, "restore.offload must be one of"),
        ({"quantize": "int4"}, "restore.quantize must be one of"),
        ({"offload": "sequential", "quantize": "int8"}, "restore.offload=sequential cannot be combined"),
    ],
)
def test_bad_parameters_name_the_parameter(params, message):
    with pytest.raises(ValueError) as err:
        S.RestoreConfig.from_params(restore_settings(**params))
    assert message in str(err.value)


# ----------------------------------------------------------------------------------------------------
# Fidelity controls


def test_control_scale_zero_is_plain_flux_and_the_scale_changes_the_output(pipe):
    lq = smooth_lq(32, seed=1)
    adapter = perturbed_adapter(pipe)
    plain = restorer(pipe).restore(lq)
    assert np.array_equal(restorer(pipe, adapter, control_scale=0.0).restore(lq), plain)
    as_trained = restorer(pipe, adapter).restore(lq)
    assert np.array_equal(restorer(pipe, adapter, control_scale=1.0).restore(lq), as_trained)
    stronger = restorer(pipe, adapter, control_scale=2.0).restore(lq)
    assert np.abs(as_trained.astype(int) - plain).mean() > 1
    assert np.abs(stronger.astype(int) - as_trained).mean() > 1


def test_plain_flux_guidance_is_flux_guidance_without_an_adapter_only(pipe):
    """No adapter: Flux-dev gets restore.plain_flux_guidance; an adapter brings the guidance it was trained with."""
    from fluxir.models.adapter import FluxIRAdapter

    lq = smooth_lq(32, seed=2)
    low, high = restorer(pipe, plain_flux_guidance=1.0), restorer(pipe, plain_flux_guidance=8.0)
    assert (low.guidance, high.guidance) == (1.0, 8.0)
    assert np.abs(low.restore(lq).astype(int) - high.restore(lq)).mean() > 0  # the value reaches Flux
    adapter = FluxIRAdapter.from_flux(pipe.transformer, **adapter_params(text_seq_len=8, guidance=2.5))
    assert restorer(pipe, adapter, plain_flux_guidance=8.0).guidance == 2.5


def test_start_t_one_is_the_full_integration_and_lower_start_t_stays_closer_to_the_lq(pipe):
    lq = smooth_lq(32, seed=3)
    adapter = perturbed_adapter(pipe)
    steps_run = []
    full = restorer(pipe, adapter, steps=8).restore(lq, on_step=lambda done, total: steps_run.append((done, total)))
    assert steps_run == [(i, 8) for i in range(1, 9)]
    assert np.array_equal(restorer(pipe, adapter, steps=8, start_t=1.0).restore(lq), full)

    steps_run.clear()
    half = restorer(pipe, adapter, steps=8, start_t=0.5).restore(
        lq, on_step=lambda done, total: steps_run.append(total)
    )
    sigmas = S.sigmas_for(8, "flux_shift", dict(pipe.scheduler.config), 8 * 8)  # 128x128 output: 8x8 tokens
    assert steps_run[-1] == int((sigmas < 0.5).sum()) < 8, "start_t saves the steps above it"
    # start_t -> 0 returns the LQ latent decoded: the lower start_t, the closer the output to it.
    lq_round_trip = restorer(pipe, adapter, steps=8, start_t=1e-4).restore(lq).astype(int)
    assert np.abs(half - lq_round_trip).mean() < np.abs(full - lq_round_trip).mean()


# ----------------------------------------------------------------------------------------------------
# The restorer on the tiny model


def test_output_size_for_any_input_size(pipe):
    lq = np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    r = restorer(pipe, steps=1, color_fix="wavelet")
    out = r.restore(lq)
    assert out.shape == (52, 84, 3) and out.dtype == np.uint8  # x4, though 52 and 84 are not multiples of 16
    r.config.target_size = 100  # longer side 100, aspect kept
    assert r.restore(lq).shape == (62, 100, 3)
    r.config.target_size = [40, 30]  # [width, height]
    assert r.restore(lq).shape == (30, 40, 3)
    r.config.target_size, r.config.tile_size, r.config.tile_overlap = None, 64, 16  # tiled, ragged sizes
    assert r.restore(np.zeros((37, 53, 3), np.uint8)).shape == (148, 212, 3)
    with pytest.raises(ValueError, match=r"expected an RGB uint8 image of shape \(H, W, 3\)"):
        r.restore(np.zeros((8, 8), np.uint8))


def test_same_seed_same_output_other_seed_other_output(pipe):
    lq = smooth_lq(32)
    first = restorer(pipe, seed=7, color_fix="wavelet").restore(lq)
    again = restorer(pipe, seed=7, color_fix="wavelet").restore(lq)
    other = restorer(pipe, seed=8, color_fix="wavelet").restore(lq)
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 1


def test_the_lq_steers_the_flow_only_through_the_adapter(pipe):
    from fluxir.models.adapter import FluxIRAdapter

    lq_a, lq_b = smooth_lq(32, seed=1), smooth_lq(32, seed=2)
    plain = restorer(pipe)
    fresh = restorer(pipe, FluxIRAdapter.from_flux(pipe.transformer, **adapter_params(text_seq_len=8)))
    assert np.array_equal(fresh.restore(lq_a), plain.restore(lq_a)), "an untrained adapter is the identity"
    assert np.array_equal(plain.restore(lq_a), plain.restore(lq_b)), "without control the LQ cannot matter"
    steered = restorer(pipe, perturbed_adapter(pipe))
    out_a, out_b = steered.restore(lq_a), steered.restore(lq_b)
    assert np.abs(out_a.astype(int) - out_b).mean() > 1, "with control, a different LQ gives a different output"
    assert np.abs(out_a.astype(int) - plain.restore(lq_a)).mean() > 1


def test_tiled_diffusion_matches_untiled_without_seams_and_bounds_the_model_input(pipe):
    """3x the tile size; VAE untiled on both sides so only the diffusion tiling differs."""
    lq = smooth_lq(96)  # -> 384 x 384 output, tiles of 128 px (8 x 8 tokens)
    r = restorer(pipe, perturbed_adapter(pipe), tile_overlap=32)
    full = r.restore(lq).astype(float)
    seen: list[int] = []
    hook = r.transformer.x_embedder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        r.config.tile_size = 128
        tiled = r.restore(lq).astype(float)
    finally:
        hook.remove()
    assert max(seen) == 64, "the transformer only ever sees one 8x8-token tile"
    assert len(seen) == 4 * 16, "4 steps x 16 tiles"
    diff = np.abs(tiled - full)
    assert diff.mean() < 2.0, "tiled ~= untiled where the model is this translation-equivariant"
    zone = seam_zone(S.tile_spans(24, 8, 2), 16, 384)
    for axis in (0, 1):  # profile across columns, then across rows
        profile = diff.mean(axis=(axis, 2))
        assert profile[zone].mean() <= 1.25 * profile[~zone].mean(), (profile[zone].mean(), profile[~zone].mean())
        assert profile[zone].max() <= 1.25 * profile[~zone].max(), (profile[zone].max(), profile[~zone].max())


def test_batched_tiles_give_the_unbatched_result(pipe):
    lq = smooth_lq(48)  # 192 px: 2 x 2 tiles of 128 px; batches of 3 leave a ragged last batch
    one = restorer(pipe, perturbed_adapter(pipe), tile_size=128, tile_overlap=32).restore(lq)
    three = restorer(pipe, perturbed_adapter(pipe), tile_size=128, tile_overlap=32, batch_size=3).restore(lq)
    assert np.abs(one.astype(int) - three).max() <= 1


def test_tiled_vae_has_no_seams_and_bounds_its_input(pipe):
    vae = pipe.vae
    yy, xx = np.mgrid[0:384, 0:384]
    image = np.stack([128 + 60 * np.sin(xx / 40), 128 + 60 * np.cos(yy / 50), 128 + 40 * np.sin((xx + yy) / 30)], -1)
    image = np.clip(image + np.random.default_rng(0).normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    sizes: list[tuple[int, ...]] = []
    hooks = [
        vae.encoder.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:]))),
        vae.decoder.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:]) * 8)),
    ]
    with torch.inference_mode():
        latent = S.encode_tiled(vae, image, None, 0, "cpu", torch.float32)
        full = S.decode_tiled(vae, latent, None, 0, torch.float32).astype(float)
        sizes.clear()
        tiled = S.decode_tiled(
            vae, S.encode_tiled(vae, image, 128, 32, "cpu", torch.float32), 128, 32, torch.float32
        ).astype(float)
    for h in hooks:
        h.remove()
    assert max(max(s) for s in sizes) == 128, "no encoder/decoder call is larger than one 128-px tile"
    # The tiny VAE (attention + GroupNorm over the whole input) is far from translation-equivariant: the
    # tiled result differs everywhere. The claim is only that the tile borders are no worse than the rest.
    zone = seam_zone(S.tile_spans(48, 16, 4), 8, 384)
    for axis in (0, 1):
        profile = np.abs(tiled - full).mean(axis=(axis, 2))
        assert profile[zone].mean() <= 1.25 * profile[~zone].mean()
        jump = np.abs(np.diff(tiled, axis=1 - axis)).mean(axis=(axis, 2))  # neighbour differences across the axis
        ref_jump = np.abs(np.diff(full, axis=1 - axis)).mean(axis=(axis, 2))
        assert (jump - ref_jump)[zone[:-1]].max() <= max(5.0, (jump - ref_jump)[~zone[:-1]].max())


# ----------------------------------------------------------------------------------------------------
# Files of any kind


def test_read_photo_converts_every_mode(tmp_path):
    files = make_mixed_folder(tmp_path / "in")
    rgb, alpha = F.read_photo(files["sub/gray.png"])
    assert rgb.shape == (9, 11, 3) and alpha is None and (rgb[..., 0] == rgb[..., 2]).all()
    rgb, alpha = F.read_photo(files["deep16.png"])
    assert (rgb == 156).all(), "16-bit 40000 -> 8-bit 156 (not clipped to 255)"
    rgb, alpha = F.read_photo(files["rgba.png"])
    assert rgb.shape == (8, 12, 3) and alpha.shape == (8, 12) and alpha[0, -1] == 255 and alpha[0, 0] == 0
    rgb, _ = F.read_photo(files["exif.jpg"])
    assert rgb.shape == (32, 16, 3), "EXIF orientation applied: portrait"
    assert rgb[:, 8:, 0].mean() > 150 > rgb[:, :8, 0].mean(), "red ends up on the right"
    for name, reason in (
        ("corrupt.png", "corrupt or truncated"),
        ("empty.png", "empty file (0 bytes)"),
        ("notes.txt", "not an image file"),
    ):
        with pytest.raises(ValueError) as err:
            F.read_photo(files[name])
        assert str(err.value).startswith(f"{files[name]}: ") and reason in str(err.value)


def test_plan_refuses_to_touch_inputs_and_names_outputs(tmp_path):
    src = tmp_path / "in"
    make_mixed_folder(src)
    (src / "rgb.jpg").write_bytes((src / "rgb.png").read_bytes())  # same stem as rgb.png
    with pytest.raises(ValueError, match="is the input folder"):
        F.plan_folder(str(src), str(src))
    with pytest.raises(ValueError, match="would overwrite the input"):
        F.plan_folder(str(src / "rgb.png"), str(src))  # one file, written next to itself
    with pytest.raises(ValueError, match=r'restore_input has no path.*--params="restore.input_dir=photos'):
        F.plan_folder(None, str(tmp_path / "out"))
    with pytest.raises(ValueError, match="catalog entry restore_input: .* does not exist"):
        F.plan_folder(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no files"):
        F.plan_folder(str(tmp_path / "empty"), str(tmp_path / "out"))
    nested = src / "restored"  # an output folder inside the input folder is never read as input
    (nested / "old.png").parent.mkdir()
    (nested / "old.png").write_bytes((src / "rgb.png").read_bytes())
    (src / ".DS_Store").write_bytes(b"\0")
    rows = {Path(r["input"]).relative_to(src).as_posix(): r for r in F.plan_folder(str(src), str(nested))}
    assert "restored/old.png" not in rows and ".DS_Store" not in rows
    assert (
        Path(rows["rgb.jpg"]["output"]).name == "rgb.jpg.png" and Path(rows["rgb.png"]["output"]).name == "rgb.png.png"
    )
    assert rows["sub/gray.png"]["output"] == str(nested / "sub" / "gray.png")
    assert {r["action"] for r in rows.values()} == {"restore"}
    (nested / "sub" / "gray.png").parent.mkdir()
    (nested / "sub" / "gray.png").write_bytes(b"done")
    rows = {Path(r["input"]).name: r["action"] for r in F.plan_folder(str(src), str(nested))}
    assert rows["gray.png"] == "skip"
    rows = {Path(r["input"]).name: r["action"] for r in F.plan_folder(str(src), str(nested), overwrite=True)}
    assert rows["gray.png"] == "restore"


# ----------------------------------------------------------------------------------------------------
# kedro run --pipeline=restore


def _add_identity_adapter(project: Path, flux) -> None:
    """Store an untrained (identity) adapter as a version of fluxir_adapter, as the train pipeline would."""
    from kedro.io import Version

    from fluxir.datasets import FluxIRAdapterDataset
    from fluxir.models.adapter import FluxIRAdapter

    conf = "\n".join(p.read_text() for p in (project / "conf" / "base").glob("catalog*.yml"))
    if "\nfluxir_adapter:" not in "\n" + conf:  # declared with the train pipeline; stand in until it exists
        (project / "conf" / "base" / "catalog_test_adapter.yml").write_text(
            "fluxir_adapter:\n  type: fluxir.datasets.FluxIRAdapterDataset\n"
            "  filepath: data/06_models/fluxir_adapter\n  versioned: true\n"
        )
    FluxIRAdapterDataset(filepath=str(project / "data/06_models/fluxir_adapter"), version=Version(None, None)).save(
        FluxIRAdapter.from_flux(flux, **adapter_params(text_seq_len=8))
    )


def _latest(project: Path, relative: str) -> Path:
    return max((project / relative).glob("*/*"))


def test_kedro_restore_mixed_folder_then_rerun_then_overwrite(kedro_project, pipe):
    from fluxir.parameters.config import load_catalog, load_params
    from fluxir.pipelines.restore.nodes import plan_restore, restore_images

    from conftest import kedro_run

    project = kedro_project
    files = make_mixed_folder(project / "photos")
    hashes = {name: sha256_file(p) for name, p in files.items()}
    _add_identity_adapter(project, pipe.transformer)
    params = "--params=restore.input_dir=photos,restore.output_dir=restored,restore.progress=false"
    kedro_run(project, "run", "--env=tiny", "--pipelines=restore", params)

    out = project / "restored"
    expected = {
        "rgb.png": (40, 56, 3),
        "sub/gray.png": (36, 44, 3),
        "rgba.png": (32, 48, 4),
        "deep16.png": (48, 40, 3),
        "exif.png": (128, 64, 3),
    }
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(expected), "one PNG per readable input, sub-folders kept, no temporary files left"
    arrays = {name: np.asarray(Image.open(out / name)) for name in expected}
    assert {name: a.shape for name, a in arrays.items()} == expected
    assert arrays["rgba.png"][0, 0, 3] < 40 and arrays["rgba.png"][0, -1, 3] > 215, "alpha carried over"
    assert abs(arrays["deep16.png"].mean() - 156) < 12, "16-bit scaled, not clipped (wavelet colour fix)"
    exif = arrays["exif.png"]
    assert exif[:, 32:, 0].mean() > exif[:, :32, 0].mean() + 20, "rotated as displayed: red on the right"

    failures = pd.read_parquet(_latest(project, "data/08_reporting/restore_failures.parquet"))
    reasons = {Path(i).name: r for i, r in zip(failures["input"], failures["reason"])}
    assert set(reasons) == {"corrupt.png", "empty.png", "notes.txt"}
    assert "truncated" in reasons["corrupt.png"] and "0 bytes" in reasons["empty.png"]
    assert "not an image" in reasons["notes.txt"]
    summary = json.loads(_latest(project, "data/08_reporting/restore_summary.json").read_text())
    assert (summary["restored"], summary["skipped_existing"], summary["failed"]) == (5, 0, 3)
    assert summary["seconds_per_megapixel"] > 0 and summary["config"]["steps"] == 4
    assert {name: sha256_file(p) for name, p in files.items()} == hashes, "inputs untouched"

    # Rerun and overwrite through the same two nodes in-process (each kedro start-up costs ~20-50 s here).
    from fluxir.models.adapter import FluxIRAdapter

    adapter = FluxIRAdapter.from_flux(pipe.transformer, **adapter_params(text_seq_len=8))
    before = {name: (out / name).stat() for name in expected}
    cwd = os.getcwd()
    os.chdir(project)
    try:
        runs = {}
        for overwrite in ("false", "true"):
            override = (
                "restore.input_dir=photos,restore.output_dir=restored,restore.progress=false,"
                f"restore.overwrite={overwrite}"
            )
            params = load_params("tiny", [override], project)
            catalog = load_catalog("tiny", project, [override])  # the folders as a run's catalog has them
            folders = catalog.load("restore_input"), catalog.load("restore_output")
            restore = params["restore"]
            failures, summary = restore_images(
                plan_restore(*folders, restore["overwrite"]),
                adapter,
                project / "prompt_embeddings",
                *folders,
                restore,
                params["baselines"],
            )
            runs[overwrite] = (summary["restored"], summary["skipped_existing"], len(failures))
            if overwrite == "false":
                assert all((out / n).stat().st_ino == s.st_ino for n, s in before.items()), "existing outputs kept"
    finally:
        os.chdir(cwd)
    assert runs == {"false": (0, 5, 3), "true": (5, 0, 3)}, "rerun: all skipped (bad files retried); overwrite: redone"
    for name, stat in before.items():
        assert (out / name).stat().st_ino != stat.st_ino, f"{name} rewritten (atomic replace)"
        assert np.array_equal(np.asarray(Image.open(out / name)), arrays[name]), "deterministic: same pixels"


def test_kedro_restore_all_bad_folder_fails_with_the_reasons(kedro_project, pipe):
    from conftest import kedro_run

    project = kedro_project
    bad = project / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "readme.txt").write_text("hello")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _add_identity_adapter(project, pipe.transformer)
    proc = kedro_run(
        project,
        "run",
        "--env=tiny",
        "--pipelines=restore",
        "--params=restore.input_dir=bad,restore.output_dir=restored,restore.progress=false",
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"none of the 3 file(s) in {bad} could be restored" in log
    for name in ("empty.jpg", "readme.txt", "broken.png"):
        assert name in log
    assert not (project / "restored").exists() or not any((project / "restored").rglob("*.png"))


def test_restore_without_an_adapter_uses_public_weights(kedro_project):
    """No adapter was ever trained: restore.method=realesrgan (through Kedro) and flux_controlnet restore with
    the public restorers' (tiny) weights; fluxir says what to do."""
    from fluxir.datasets import FluxIRAdapterDataset
    from fluxir.parameters.config import load_params
    from fluxir.pipelines.restore.nodes import plan_restore, restore_images
    from fluxir.restoration.methods import restorer_spec

    from conftest import kedro_run

    project = kedro_project
    make_mixed_folder(project / "photos")
    kedro_run(
        project,
        "run",
        "--env=tiny",
        "--pipelines=restore",
        "--params=restore.method=realesrgan,restore.input_dir=photos,restore.output_dir=restored,restore.progress=false",
    )
    out = project / "restored"
    rgb = np.asarray(Image.open(out / "rgb.png"))
    assert rgb.shape == (40, 56, 3) and np.asarray(Image.open(out / "rgba.png")).shape == (32, 48, 4)
    summary = json.loads(_latest(project, "data/08_reporting/restore_summary.json").read_text())
    assert summary["method"] == "realesrgan" and summary["restored"] == 5 and summary["color_fix"] == "none"
    assert "RealESRGAN_x4plus.pth" in summary["method_settings"]
    params = load_params("tiny", [], project)
    cfg = restore_config(scale=4, target_size=None, color_fix="wavelet")
    realesrgan = restorer_spec("realesrgan", cfg, params["baselines"]).load()  # without the colour fix
    from fluxir.io.images import read_photo

    np.testing.assert_array_equal(rgb, realesrgan.restore(read_photo(project / "photos/rgb.png")[0]))

    from kedro.io.core import Version

    missing = FluxIRAdapterDataset(
        filepath=str(project / "data/06_models/fluxir_adapter"), version=Version(None, None)
    ).load()
    cwd = os.getcwd()
    os.chdir(project)
    try:
        for method in ("flux_controlnet", "fluxir"):
            restore = {**params["restore"], "method": method, "progress": False}
            folders = Path("photos"), Path(f"out_{method}")
            plan = plan_restore(*folders, False)
            if method == "fluxir":
                with pytest.raises(
                    ValueError,
                    match=r"restore.method: fluxir needs a trained FluxIR adapter.*"
                    r"restore.method=flux_controlnet or realesrgan",
                ):
                    restore_images(plan, missing, project / "prompt_embeddings", *folders, restore, params["baselines"])
                continue
            failures, summary = restore_images(
                plan, missing, project / "prompt_embeddings", *folders, restore, params["baselines"]
            )
            assert summary["method"] == "flux_controlnet" and summary["restored"] == 5 and len(failures) == 3
            assert np.asarray(Image.open(project / "out_flux_controlnet/rgb.png")).shape == (40, 56, 3)
        with pytest.raises(
            ValueError,
            match=r"restore.method must be one of \('fluxir', 'flux_controlnet', "
            r"'realesrgan'\), got 'seesr'",
        ):
            restore_images(
                plan,
                missing,
                project / "prompt_embeddings",
                *folders,
                {**restore, "method": "seesr"},
                params["baselines"],
            )
    finally:
        os.chdir(cwd)
