"""``python -m fluxir.preflight``: one report of everything a real run needs, every problem listed.

Run on a copy of this project (conf/tiny, the committed tiny Flux) as it is, then broken in several
ways at once: each problem must appear on its own FAIL line naming the path, and the exit status is 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import REPO, make_project_copy
from support import adapter_params


def _check(project: Path, *params: str) -> subprocess.CompletedProcess:
    """``python -m fluxir.preflight --env tiny`` as a user runs it: its report and exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "fluxir.preflight", "--env", "tiny", *(a for p in params for a in ("--params", p))]
    return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)


def _lines(result: subprocess.CompletedProcess, status: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(status)]


def _save_adapter(project: Path, flux_folder: Path) -> None:
    """An adapter built for the transformer in ``flux_folder``, saved through the project's catalog."""
    from diffusers import FluxTransformer2DModel

    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.parameters.config import load_catalog

    flux = FluxTransformer2DModel.from_pretrained(flux_folder / "transformer")
    load_catalog("tiny", project).save(
        "fluxir_adapter", FluxIRAdapter.from_flux(flux, **adapter_params(rank=4, text_seq_len=8))
    )


@pytest.mark.e2e  # the check's report and exit status as a user runs it (pyiqa, the hub fix folders at import)
def test_good_setup_passes(kedro_project):
    _save_adapter(kedro_project, kedro_project / "data" / "01_raw" / "tiny" / "flux")
    result = _check(kedro_project)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    assert not _lines(result, "FAIL")
    for expected in (
        "OK    model        fluxgen.model: transformer  FluxTransformer2DModel",
        "OK    model        fluxgen.model: vae",
        "OK    model        train.model",
        "OK    adapter      fluxir_adapter",
        "OK    iqa          musiq",
        "OK    disk",
        "OK    package      torch",
        "OK    accelerator  fluxgen.device",
        "OK    baseline     baselines.realesrgan",
        "OK    baseline     baselines.flux_controlnet",
    ):
        assert expected in out, out
    assert re.search(
        r"OK +processes +fluxgen.num_processes +generate and score: 1 CPU process \(auto\), no GPU", out
    ), out
    assert "0 FAIL" in out.splitlines()[-1]


@pytest.fixture
def bare_project(tmp_path) -> Path:
    """A project copy without the tiny demo benchmarks (`make demo` not run)."""
    return make_project_copy(tmp_path / "project", demo_benchmarks=False)


@pytest.fixture
def broken_project(bare_project) -> Path:
    """Three model folders each broken in one way, and an adapter for another Flux."""
    from diffusers import FluxTransformer2DModel

    tiny = bare_project / "data" / "01_raw" / "tiny"
    for name in ("no_vae", "bad_keys"):
        shutil.copytree(tiny / "flux", tiny / name)
    shutil.rmtree(tiny / "no_vae" / "vae")
    vae_file = tiny / "bad_keys" / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(vae_file)
    state["decoder.conv_out.renamed"] = state.pop("decoder.conv_out.weight")
    save_file(state, vae_file)
    corrupt = tiny / "flux" / "transformer" / "diffusion_pytorch_model.safetensors"
    corrupt.write_bytes(corrupt.read_bytes()[:1000])  # a cut-off download
    other = FluxTransformer2DModel(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        axes_dims_rope=(2, 2, 4),
    )
    other.save_pretrained(tiny / "other_flux" / "transformer")
    _save_adapter(bare_project, tiny / "other_flux")
    return bare_project


@pytest.mark.e2e  # the check's report and exit status as a user runs it (pyiqa, the hub fix folders at import)
def test_broken_setup_lists_every_problem(broken_project, tmp_path):
    tiny = broken_project / "data" / "01_raw" / "tiny"
    empty_weights = tmp_path / "no_weights"
    empty_weights.mkdir()
    result = _check(
        broken_project,
        f"train.model={tiny / 'bad_keys'},restore.model={tiny / 'no_vae'}",
        f"iqa.metrics=[musiq],iqa.weights_dir={empty_weights}",
        "fluxgen.num_images=1000000000000",
        f"baselines.realesrgan.weights={tmp_path / 'RealESRGAN_x4plus.pth'}",
        f"baselines.flux_controlnet.controlnet={tiny / 'flux'}",
    )
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    fails = "\n".join(_lines(result, "FAIL"))
    corrupt = tiny / "flux" / "transformer" / "diffusion_pytorch_model.safetensors"
    expected = [
        f"fluxgen.model: transformer  {corrupt} is not a readable safetensors file",
        "train.model: vae",
        "missing ['decoder.conv_out.weight'] (1), unexpected ['decoder.conv_out.renamed'] (1)",
        "restore.model: vae",
        f"component folder {tiny / 'no_vae' / 'vae'} is missing",
        "fluxir_adapter              FluxIR adapter does not fit this Flux transformer",
        f"musiq needs musiq_koniq_ckpt-e95806b9.pth in {empty_weights.resolve() / 'hub' / 'pyiqa'}",
        "benchmark    div2k_val",
        "benchmark    realsr",
        "benchmark    drealsr",
        "benchmark    reallq250",
        f"folder(s) ['{broken_project / 'data' / '01_raw' / 'benchmarks_demo' / 'RealLQ250'}'] of catalog entry "
        "reallq250_benchmark missing or without images: `python scripts/demo_data.py --env tiny` (make demo)",
        "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only iqa",
        "disk         data",
        "fluxgen.num_images=1000000000000 needs",
        f"baselines.realesrgan.weights: {tmp_path / 'RealESRGAN_x4plus.pth'} not found",
        "python -m fluxir.fetch --only baselines",
        f"'{tiny / 'flux'}' is neither a FluxControlNetModel folder",
    ]
    for text in expected:
        assert text in fails, f"{text!r} not in:\n{fails}"
    summary = result.stdout.splitlines()[-1]
    assert f"{len(_lines(result, 'FAIL'))} FAIL" in summary and len(_lines(result, "FAIL")) >= 9


def _with_text_components(folder: Path) -> Path:
    """The tiny Flux folder plus tiny CLIP / T5 text encoders and a CLIP tokenizer, as in FLUX.1-dev's layout."""
    import json

    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
    )

    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=6,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).save_pretrained(folder / "text_encoder")
    T5EncoderModel(T5Config(vocab_size=6, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)).save_pretrained(
        folder / "text_encoder_2"
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder / "tokenizer")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(
        text_encoder=["transformers", "CLIPTextModel"],
        text_encoder_2=["transformers", "T5EncoderModel"],
        tokenizer=["transformers", "CLIPTokenizer"],
    )
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_text_encoders_and_tokenizer_class(tmp_path):
    """transformers components: tied T5 embeddings are not a missing key; a tokenizer of another class is named."""
    import json

    from fluxir.preflight.models import check_model_folder

    folder = _with_text_components(Path(shutil.copytree(REPO / "data" / "01_raw" / "tiny" / "flux", tmp_path / "flux")))
    good = {f.item: f for f in check_model_folder("m", str(folder), {})}
    assert {i: f.status for i, f in good.items()} == {
        f"m: {c}": "OK" for c in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "transformer", "vae")
    }
    assert good["m: text_encoder_2"].detail.startswith("T5EncoderModel")
    index = json.loads((folder / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    (folder / "model_index.json").write_text(json.dumps(index))
    bad = {f.item: f for f in check_model_folder("m", str(folder), {})}["m: tokenizer"]
    assert bad.status == "FAIL"
    assert f"{folder / 'tokenizer' / 'tokenizer_config.json'} holds a CLIPTokenizer" in bad.detail
    assert "model_index.json declares T5TokenizerFast" in bad.detail


@pytest.mark.e2e  # the check's report and exit status as a user runs it (pyiqa, the hub fix folders at import)
def test_hub_ids_are_checked_in_the_cache_and_small_benchmark_images_are_named(bare_project, tmp_path, monkeypatch):
    kedro_project = bare_project
    """A hub id is looked up as a run loads it (the cached snapshot), so the adapter is compared with that
    transformer; a model in no place gets the download advice; benchmark images below the crops are named."""
    from diffusers import FluxTransformer2DModel
    from PIL import Image

    from support import write_hub_snapshot

    tiny = kedro_project / "data" / "01_raw" / "tiny"
    write_hub_snapshot(tiny / "flux", tmp_path / "hub", "black-forest-labs/FLUX.1-dev")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    other = FluxTransformer2DModel(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        axes_dims_rope=(2, 2, 4),
    )
    other.save_pretrained(tiny / "other_flux" / "transformer")
    _save_adapter(kedro_project, tiny / "other_flux")
    demo = kedro_project / "data" / "01_raw" / "benchmarks_demo"
    for folder, _size in (("RealSR/HR", 40), ("RealSR/LR", 10), ("DIV2K_valid_HR", 80)):
        (demo / folder).mkdir(parents=True)
    for name in ("a", "b"):  # tiny env: realsr hq_size 64 / lq_size 16, div2k_val hq_size 64
        Image.new("RGB", (40, 40)).save(demo / "RealSR" / "HR" / f"{name}_HR.png")
        Image.new("RGB", (10, 10)).save(demo / "RealSR" / "LR" / f"{name}_LR4.png")
    Image.new("RGB", (80, 80)).save(demo / "DIV2K_valid_HR" / "0801.png")
    Image.new("RGB", (32, 32)).save(demo / "DIV2K_valid_HR" / "0802.png")

    result = _check(
        kedro_project,
        "restore.model=black-forest-labs/FLUX.1-dev,train.model=someone/missing-flux",
    )
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    fails, warns = "\n".join(_lines(result, "FAIL")), "\n".join(_lines(result, "WARN"))
    assert "OK    model        restore.model: transformer  FluxTransformer2DModel" in result.stdout
    assert "fluxir_adapter              FluxIR adapter does not fit this Flux transformer" in fails, result.stdout
    missing = next(line for line in _lines(result, "FAIL") if "train.model" in line)
    for advice in (
        "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only flux",
        "HF_TOKEN",
        "huggingface-cli login",
        'HF_HUB_OFFLINE=0 hf download someone/missing-flux --include "model_index.json" "scheduler/*"',
        "add --local-dir DIR for a folder and set flux_model: DIR in conf/local/globals.yml",
    ):
        assert advice in missing.replace("`", ""), missing
    realsr = next(line for line in _lines(result, "FAIL") if "benchmark    realsr" in line)
    assert "evaluate.benchmarks.realsr.hq_size 64 / evaluate.benchmarks.realsr.lq_size 16" in realsr
    assert "2 of 2 in" in realsr and "a_HR.png" in realsr
    div2k = next(line for line in _lines(result, "WARN") if "benchmark    div2k_val" in line)
    assert "1 of 2 in" in div2k and "['0802.png']" in div2k, warns
