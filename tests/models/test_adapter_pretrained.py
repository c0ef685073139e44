"""FluxIRAdapter.save_pretrained / from_pretrained: a folder others can load in one call, with LICENSE, NOTICE and a
model card; folders written before (data/adapter_3589cea, by fluxir at commit 3589cea) still load."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fluxir.export.cards import FLUX_DEV, FLUX_DEV_LICENSE_LINK, read_card_header
from fluxir.io.atomic import manifest_problem
from fluxir.models.adapter import FluxIRAdapter, count_parameters
from fluxir.models.adapter_config import FluxIRConfig
from fluxir.models.controlled_flux import controlled_flux_forward, freeze_flux
from fluxir.models.flux import build_transformer
from fluxir.pipelines.export.nodes import export_adapter

from support import adapter_params

OLD_FOLDER = Path(__file__).parent / "data" / "adapter_3589cea"  # written by save_adapter at commit 3589cea


@pytest.fixture(scope="module")
def tiny_flux():
    flux = build_transformer("tiny_flux_transformer", seed=0)
    freeze_flux(flux)
    return flux


def inputs_for(flux, seed: int = 0) -> dict:
    """Packed inputs of a 4x4-token image and 6 prompt tokens, as FluxPipeline builds them."""
    cfg, g = flux.config, torch.Generator().manual_seed(seed)
    img_ids = torch.zeros(4, 4, 3)
    img_ids[..., 1] = torch.arange(4.0)[:, None]
    img_ids[..., 2] = torch.arange(4.0)[None, :]
    return {
        "hidden_states": torch.randn(1, 16, cfg.in_channels, generator=g),
        "lq_latents": torch.randn(1, 16, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, 6, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.rand(1, generator=g),
        "img_ids": img_ids.reshape(16, 3),
        "txt_ids": torch.zeros(6, 3),
        "guidance": torch.full((1,), 3.5),
    }


def trained(flux) -> FluxIRAdapter:
    """A tiny adapter whose zero-initialised parts are non-zero (so its output differs from Flux's)."""
    adapter = FluxIRAdapter.from_flux(flux, **adapter_params(text_seq_len=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    adapter.training_record = {"steps": 7, "global_batch": 2}
    return adapter


def outputs(flux, adapter) -> torch.Tensor:
    with torch.no_grad():
        return controlled_flux_forward(flux, adapter, **inputs_for(flux))


def assert_same_weights(a: FluxIRAdapter, b: FluxIRAdapter) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_round_trip_gives_equal_tensors_and_outputs(tiny_flux, tmp_path):
    adapter = trained(tiny_flux)
    adapter.save_pretrained(tmp_path / "shared", base_model=FLUX_DEV)
    loaded = FluxIRAdapter.from_pretrained(tmp_path / "shared")
    assert loaded.config == adapter.config
    assert loaded.training_record == adapter.training_record
    assert_same_weights(loaded, adapter)
    ours = outputs(tiny_flux, adapter)
    assert torch.equal(outputs(tiny_flux, loaded), ours)
    assert not torch.equal(outputs(tiny_flux, None), ours)  # the adapter does change the output


def test_saved_folder_carries_licence_notice_and_a_parsable_card(tiny_flux, tmp_path):
    adapter = trained(tiny_flux)
    folder = tmp_path / "shared"
    adapter.save_pretrained(folder, base_model=FLUX_DEV)
    header = read_card_header((folder / "README.md").read_text())
    assert header["base_model"] == FLUX_DEV
    assert header["base_model_relation"] == "adapter"
    assert header["license"] == "other"
    assert header["license_name"] == "flux-1-dev-non-commercial-license"
    assert header["license_link"] == FLUX_DEV_LICENSE_LINK
    assert header["library_name"] == "fluxir" and header["pipeline_tag"] == "image-to-image"
    notice = (folder / "NOTICE").read_text()
    assert "licensed by Black Forest Labs, Inc. under the FLUX.1 [dev] Non-Commercial License" in notice
    assert "modifies the model" in notice
    licence = (folder / "LICENSE").read_text()
    assert FLUX_DEV_LICENSE_LINK in licence and "pointer" in licence and "4(a)" in licence
    card = (folder / "README.md").read_text()
    assert f"{count_parameters(adapter) / 1e6:.2f}M parameters" in card
    assert "Not evaluated" in card
    # the manifest covers the new files: a changed card is caught on load
    assert manifest_problem(folder) is None
    (folder / "README.md").write_text(card + "edited\n")
    with pytest.raises(ValueError, match="README.md"):
        FluxIRAdapter.from_pretrained(folder)


def test_card_usage_snippet_runs(tiny_flux, tmp_path):
    adapter = trained(tiny_flux)
    adapter.save_pretrained(tmp_path / "shared", base_model=FLUX_DEV)
    card = (tmp_path / "shared" / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", card, re.S)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})
    assert (
        printed.getvalue().strip()
        == f"{count_parameters(adapter) / 1e6:.2f}M parameters, SE rank {adapter.config.rank}"
    )


def test_adapter_written_by_the_earlier_code_still_loads(tiny_flux):
    raw = json.loads((OLD_FOLDER / "config.json").read_text())
    loaded = FluxIRAdapter.from_pretrained(OLD_FOLDER)
    assert loaded.config == FluxIRConfig.from_params(raw)
    assert loaded.training_record == raw["_training"]
    weights = load_file(OLD_FOLDER / "adapter.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())
    assert outputs(tiny_flux, loaded).shape == (1, 16, tiny_flux.config.in_channels)


def test_from_pretrained_hub_id_from_the_local_cache(tiny_flux, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub (offline here: a snapshot already in the cache)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--fluxir-tiny" / "snapshots" / ("0" * 40)
    trained(tiny_flux).save_pretrained(snapshot, base_model=FLUX_DEV)
    (cache / "models--someone--fluxir-tiny" / "refs").mkdir()
    (cache / "models--someone--fluxir-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert_same_weights(FluxIRAdapter.from_pretrained("someone/fluxir-tiny"), FluxIRAdapter.from_pretrained(snapshot))
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        FluxIRAdapter.from_pretrained(str(tmp_path / "missing" / "folder"))


def test_unknown_base_model_needs_its_licence(tiny_flux, tmp_path):
    adapter = trained(tiny_flux)
    with pytest.raises(ValueError, match="set export.license"):
        adapter.save_pretrained(tmp_path / "a", base_model="someone/own-flux")
    adapter.save_pretrained(tmp_path / "b", base_model="someone/own-flux", license={"license": "apache-2.0"})
    assert read_card_header((tmp_path / "b" / "README.md").read_text())["license"] == "apache-2.0"
    assert "Black Forest Labs" not in (tmp_path / "b" / "NOTICE").read_text()


def test_export_adapter_node_puts_the_evaluation_of_these_weights_in_the_card(tiny_flux, tmp_path):
    from fluxir.evaluation.restore import adapter_fingerprint

    adapter = trained(tiny_flux)
    means = pd.DataFrame(
        [
            {"dataset": "RealSR", "method": "fluxir", "label": "PSNR", "metric": "psnr", "convention": "y",
             "crop_border": 4, "higher_is_better": True, "stand_in": False, "mean": 21.25, "n": 3},
            {"dataset": "RealSR", "method": "bicubic", "label": "PSNR", "metric": "psnr", "convention": "y",
             "crop_border": 4, "higher_is_better": True, "stand_in": False, "mean": 19.5, "n": 3},
        ]
    )  # fmt: skip
    export = {"license_model": None, "license": None, "tiny_models": True}
    report = f"| adapter | FluxIRAdapter {adapter_fingerprint(adapter)} (0.50M parameters) |"
    summary = export_adapter(adapter, means, report, tmp_path / "evaluated", FLUX_DEV, export)
    card = (tmp_path / "evaluated" / "README.md").read_text()
    assert summary["evaluated"] and "| RealSR | PSNR | y, crop 4 | 21.25 | 3 |" in card and "19.5" not in card
    assert "Trained on tiny random-weight models" in card
    unrelated = "| adapter | FluxIRAdapter 0123456789ab |"
    other = export_adapter(adapter, means, unrelated, tmp_path / "other", FLUX_DEV, {**export, "tiny_models": False})
    card = (tmp_path / "other" / "README.md").read_text()
    assert not other["evaluated"] and "Not evaluated" in card and "tiny random-weight" not in card
    assert_same_weights(FluxIRAdapter.from_pretrained(tmp_path / "evaluated"), adapter)


def test_memory_figures_come_from_the_memory_model_for_flux1_dev():
    from importlib import resources

    from fluxir.export.cards import memory_text
    from fluxir.preflight import BUDGET_GB

    dev = FluxIRConfig.from_params({**adapter_params(), "text_seq_len": 512}).to_dict()  # FLUX.1-dev's sizes
    text = memory_text(dev, 1_527_000_000)
    table = json.loads((resources.files("fluxir") / "configs" / "train_memory.json").read_text())
    row = next(r for r in table["rows"] if (r["size"], r["batch_size"], r["pixel_loss"]) == ("1024x768", 1, "whole"))
    assert f"1024x768, pixel loss whole: {row['total']:.1f} GiB" in text
    assert f"budgets {BUDGET_GB['restoration']} GB per GPU" in text and "1527.0 MB" in text
    tiny = FluxIRConfig.from_params({**dev, "num_layers": 2, "num_single_layers": 2}).to_dict()
    assert "n/a for this base model" in memory_text(tiny, 1000)
