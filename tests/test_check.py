"""``python -m fluxir.check``: one report of everything a real run needs, every problem listed.

Run on a copy of this project (conf/tiny, the committed tiny Flux) as it is, then broken in several
ways at once: each problem must appear on its own FAIL line naming the path, and the exit status is 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from safetensors.torch import load_file, save_file


def _check(project: Path, *params: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "fluxir.check", "--env", "tiny", *(a for p in params for a in ("--params", p))]
    return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)


def _lines(result: subprocess.CompletedProcess, status: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(status)]


def _save_adapter(project: Path, flux_folder: Path) -> None:
    """An adapter built for the transformer in ``flux_folder``, saved through the project's catalog."""
    from diffusers import FluxTransformer2DModel

    from fluxir.check import _catalog
    from fluxir.models.adapter import FluxIRAdapter

    flux = FluxTransformer2DModel.from_pretrained(flux_folder / "transformer")
    _catalog(project, "tiny").save("fluxir_adapter", FluxIRAdapter.from_flux(flux, rank=4, text_seq_len=8))


def test_good_setup_passes(kedro_project):
    _save_adapter(kedro_project, kedro_project / "data" / "01_raw" / "tiny" / "flux")
    result = _check(kedro_project)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    assert not _lines(result, "FAIL")
    for expected in ("OK    model        fluxgen.model: transformer  FluxTransformer2DModel",
                     "OK    model        fluxgen.model: vae", "OK    model        train.model",
                     "OK    adapter      fluxir_adapter", "OK    iqa          musiq", "OK    disk",
                     "OK    package      torch", "OK    accelerator  fluxgen.device"):
        assert expected in out, out
    assert "0 FAIL" in out.splitlines()[-1]


@pytest.fixture
def broken_project(kedro_project) -> Path:
    """Three model folders each broken in one way, and an adapter for another Flux."""
    from diffusers import FluxTransformer2DModel

    tiny = kedro_project / "data" / "01_raw" / "tiny"
    for name in ("no_vae", "bad_keys"):
        shutil.copytree(tiny / "flux", tiny / name)
    shutil.rmtree(tiny / "no_vae" / "vae")
    vae_file = tiny / "bad_keys" / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(vae_file)
    state["decoder.conv_out.renamed"] = state.pop("decoder.conv_out.weight")
    save_file(state, vae_file)
    corrupt = tiny / "flux" / "transformer" / "diffusion_pytorch_model.safetensors"
    corrupt.write_bytes(corrupt.read_bytes()[:1000])  # a cut-off download
    other = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                                   joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    other.save_pretrained(tiny / "other_flux" / "transformer")
    _save_adapter(kedro_project, tiny / "other_flux")
    return kedro_project


def test_broken_setup_lists_every_problem(broken_project, tmp_path):
    tiny = broken_project / "data" / "01_raw" / "tiny"
    empty_weights = tmp_path / "no_weights"
    empty_weights.mkdir()
    result = _check(broken_project, f"train.model={tiny / 'bad_keys'},restore.model={tiny / 'no_vae'}",
                    f"iqa.metrics=[musiq],iqa.weights_dir={empty_weights}",
                    "evaluate.demo_benchmarks=false,fluxgen.num_images=1000000000000")
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
        "benchmark    div2k_val", "benchmark    realsr", "benchmark    drealsr", "benchmark    reallq250",
        f"folder(s) ['{broken_project / 'data' / '01_raw' / 'benchmarks_demo' / 'RealLQ250'}'] missing or without images",
        "disk         data",
        "fluxgen.num_images=1000000000000 needs",
    ]
    for text in expected:
        assert text in fails, f"{text!r} not in:\n{fails}"
    summary = result.stdout.splitlines()[-1]
    assert f"{len(_lines(result, 'FAIL'))} FAIL" in summary and len(_lines(result, "FAIL")) >= 9
