"""Restored PNGs carry the AI disclosure and the restorer (FluxIR with a tiny Flux and a fresh adapter; Real-ESRGAN with
the tiny env's weights), written by the same ``restore_one`` the restore pipeline, the evaluation and the app run. Tiny
models prove the machinery only."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from fluxir.io.provenance import RESTORED_DISCLOSURE, RESTORED_SOFTWARE, hash_tensors, model_revision, read_provenance
from fluxir.parameters.config import load_params
from fluxir.restoration.files import restore_files
from fluxir.restoration.methods import METHODS, PUBLIC_METHODS, restorer_spec

from conftest import REPO, TINY_FLUX
from support import adapter_params, restore_config

SETTINGS = {"steps": 1, "dtype": "float32", "device": "cpu", "tile_size": None, "vae_tile_size": None}


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_fluxir_output_names_flux_and_the_adapter(tmp_path, photo):
    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.loading import load_pipeline

    pipe = load_pipeline(str(TINY_FLUX), dtype="float32", device="cpu")
    adapter = FluxIRAdapter.from_flux(pipe.transformer, **adapter_params(text_seq_len=8))
    out = tmp_path / "out" / "in.png"
    spec = restorer_spec(
        "fluxir", restore_config(**SETTINGS), model=str(TINY_FLUX), adapter=adapter, prompt_cache=tmp_path / "prompts"
    )
    results, failures, _ = restore_files(spec, [(str(photo), str(out))], progress=False)
    assert failures == [] and len(results) == 1
    text = read_provenance(out)
    assert text["Software"] == RESTORED_SOFTWARE
    assert text["Disclosure"] == RESTORED_DISCLOSURE
    assert text["Restorer"] == "fluxir"
    assert text["Model"] == str(TINY_FLUX)
    assert text["Model-Revision"] == model_revision(TINY_FLUX) != "unknown"
    assert text["Adapter-Fingerprint"] == hash_tensors(adapter.state_dict()).hexdigest()[:16]
    assert text["Fluxir-Version"]


@pytest.mark.parametrize("method", PUBLIC_METHODS)
def test_public_restorer_output_names_the_method_and_its_weights(tmp_path, photo, method):
    """Every public entry of the registry restores a file through ``restore_one`` and names its weights."""
    params = load_params("tiny", [], REPO)
    cwd = os.getcwd()
    os.chdir(REPO)  # the tiny env's weight paths are relative to the project
    try:
        cfg = restore_config(**SETTINGS, scale=4)
        spec = restorer_spec(method, cfg, params["baselines"])
        out = tmp_path / "out" / "in.png"
        results, failures, _ = restore_files(spec, [(str(photo), str(out))], False)
        weights = METHODS[method].fingerprint(METHODS[method].settings(params["baselines"]))
    finally:
        os.chdir(cwd)
    assert failures == [] and len(results) == 1 and results[0].out_size == (64, 64)
    text = read_provenance(out)
    assert text["Software"] == RESTORED_SOFTWARE and text["Disclosure"] == RESTORED_DISCLOSURE
    assert text["Restorer"] == method
    assert text["Restorer-Weights"] == weights
