"""Checkpoints and adapters prove themselves: a damaged newest checkpoint is skipped, a damaged adapter is named."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io.core import DatasetError

from fluxir.datasets import FluxIRAdapterDataset
from fluxir.io.atomic import MANIFEST_NAME, write_manifest
from fluxir.models.adapter import load_adapter
from fluxir.training.checkpoints import list_checkpoints
from fluxir.training.loop import train

from support import make_pairs, tiny_folders, tiny_params

# its module fixtures are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_checkpoint_integrity")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> pd.DataFrame:
    return make_pairs(tmp_path_factory.mktemp("pairs"), n=4)


def _truncate_files(folder: Path, but: str = "") -> None:
    """What a node that lost power after the rename leaves: every file (but ``but``) cut to half its length."""
    for file in folder.rglob("*"):
        if file.is_file() and file.name != but:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_a_truncated_newest_checkpoint_is_skipped_and_training_resumes_from_the_previous(tmp_path, pairs, caplog):
    common = ("train.checkpoint_every=2", "train.keep_checkpoints=10", "train.num_validation_pairs=0")
    whole = train(
        tiny_params(tmp_path / "whole", "train.max_steps=6", *common),
        pairs,
        folders=tiny_folders(tmp_path / "whole"),
        progress=False,
    )

    first = train(
        tiny_params(tmp_path / "cut", "train.max_steps=4", *common),
        pairs,
        folders=tiny_folders(tmp_path / "cut"),
        progress=False,
    )
    assert [s for s, _ in list_checkpoints(first.run_dir)] == [2, 4]
    assert all((p / MANIFEST_NAME).is_file() for _, p in list_checkpoints(first.run_dir))
    newest = list_checkpoints(first.run_dir)[-1][1]
    _truncate_files(newest, but=MANIFEST_NAME)

    with caplog.at_level(logging.WARNING, logger="fluxir.training.checkpoints"):
        resumed = train(
            tiny_params(tmp_path / "cut", "train.max_steps=6", *common),
            pairs,
            folders=tiny_folders(tmp_path / "cut"),
            progress=False,
        )
    assert resumed.resumed_from == 2
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"skipping damaged checkpoint {newest}" in warning
    assert "bytes, the manifest says" in warning
    assert _max_diff(resumed.adapter, whole.adapter) < 1e-6  # as if never interrupted
    assert list(first.run_dir.glob(".damaged-step_00000004-*")), "the damaged checkpoint is kept aside, not deleted"


def test_no_complete_checkpoint_names_the_folder_and_how_to_start_over(tmp_path, pairs):
    params = ("train.max_steps=2", "train.checkpoint_every=1", "train.num_validation_pairs=0")
    first = train(tiny_params(tmp_path, *params), pairs, folders=tiny_folders(tmp_path), progress=False)
    for _, path in list_checkpoints(first.run_dir):
        _truncate_files(path)
    with pytest.raises(RuntimeError) as err:
        train(
            tiny_params(tmp_path, "train.max_steps=3", *params[1:]),
            pairs,
            folders=tiny_folders(tmp_path),
            progress=False,
        )
    message = str(err.value)
    assert f"no complete checkpoint in {first.run_dir}" in message
    assert "train.resume=false" in message
    again = train(
        tiny_params(tmp_path, "train.max_steps=3", "train.resume=false", *params[1:]),
        pairs,
        folders=tiny_folders(tmp_path),
        progress=False,
    )
    assert again.resumed_from == 0


def test_a_damaged_adapter_is_named_when_loaded(tmp_path, pairs):
    result = train(
        tiny_params(tmp_path, "train.max_steps=1", "train.num_validation_pairs=0"),
        pairs,
        folders=tiny_folders(tmp_path),
        progress=False,
    )
    dataset = FluxIRAdapterDataset(filepath=str(tmp_path / "adapter"))
    dataset.save(result.adapter)
    assert _max_diff(dataset.load(), result.adapter) == 0
    weights = tmp_path / "adapter" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DatasetError, match=rf"adapter .* is damaged: {weights}: 100 bytes, the manifest says"):
        dataset.load()  # what the restore and evaluate pipelines see
    write_manifest(tmp_path / "adapter")  # the cut file recorded as if saved so: the loader still names it
    with pytest.raises(ValueError, match=rf"{weights} is not a readable safetensors file"):
        load_adapter(tmp_path / "adapter")
    (tmp_path / "adapter" / MANIFEST_NAME).unlink()  # a folder without its manifest is not a finished save
    with pytest.raises(ValueError, match=rf"is damaged: .*{MANIFEST_NAME} is missing"):
        load_adapter(tmp_path / "adapter")
