"""The plain-run guard: training refuses a step budget that would pass over the pairs it has more than
``train.max_epochs`` times, before any model loads; conf/base, conf/tiny and conf/run_paper.yml pass it on the
pairs their own fluxgen settings leave after the IQA selection."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fluxir.parameters.config import load_params
from fluxir.training.config import TrainConfig

from conftest import REPO


def fewest_selected_pairs(params: dict) -> int:
    """The fewest pairs ``fluxgen.num_images`` can leave: each metric's cut removes ``select.percentile`` %, at
    worst each a different share of the images."""
    cut = len(params["iqa"]["metrics"]) * params["select"]["percentile"] / 100
    return math.floor(params["fluxgen"]["num_images"] * (1 - cut))


@pytest.mark.parametrize(
    ("env", "run_file"),
    [("base", None), ("tiny", None), ("base", "conf/run_paper.yml"), ("tiny", "conf/run_small.yml")],
)
def test_every_shipped_configuration_passes_on_its_own_pairs(env, run_file):
    from fluxir.parameters.config import run_file_options

    overrides = [run_file_options(REPO / run_file)["params"]] if run_file else []
    params = load_params(env, overrides, REPO)
    config = TrainConfig.from_params(params["train"])
    config.check_epoch_budget(params["fluxgen"]["num_images"])
    config.check_epoch_budget(fewest_selected_pairs(params))


def test_the_papers_steps_on_the_plain_runs_pairs_are_refused_with_both_numbers():
    params = load_params("base", ["train.max_steps=48000"], REPO)
    config = TrainConfig.from_params(params["train"])
    pairs = params["fluxgen"]["num_images"]  # 1,000 images: at most 1,000 pairs
    with pytest.raises(ValueError) as refused:
        config.check_epoch_budget(pairs)
    message = str(refused.value)
    train_pairs = pairs - config.num_validation_pairs
    assert f"{48000 * config.global_batch:,} samples" in message
    assert f"{config.max_epochs:g} x {train_pairs:,} = {config.max_epochs * train_pairs:,.0f}" in message
    for named in ("train.max_steps", "train.global_batch", "train.max_epochs", "null", "fluxgen.num_images"):
        assert named in message


def test_the_limit_is_exact_and_null_lifts_it():
    params = load_params("tiny", ["train.max_epochs=2", "train.num_validation_pairs=0"], REPO)["train"]
    config = TrainConfig.from_params({**params, "max_steps": 10, "global_batch": 1})
    config.check_epoch_budget(5)  # 10 samples = exactly 2 epochs of 5
    with pytest.raises(ValueError, match="train.max_epochs"):
        config.check_epoch_budget(4)
    TrainConfig.from_params({**params, "max_steps": 10, "global_batch": 1, "max_epochs": None}).check_epoch_budget(4)


def test_max_epochs_must_be_positive_or_null():
    params = load_params("tiny", [], REPO)["train"]
    with pytest.raises(ValueError, match="max_epochs"):
        TrainConfig.from_params({**params, "max_epochs": 0})


def test_max_epochs_does_not_change_the_run_key():
    """Raising the limit to let a run go on resumes the same checkpoints."""
    params = load_params("tiny", [], REPO)["train"]
    keys = {TrainConfig.from_params({**params, "max_epochs": e}).run_key("data") for e in (1, 50, None)}
    assert len(keys) == 1


@pytest.mark.parametrize("entry", ["training_loop", "precompute_node", "train_node"])
def test_the_guard_fires_before_any_model_loads(entry, tmp_path):
    """The model is a folder that does not exist: any load would fail with another error."""
    train = load_params("tiny", ["train.max_steps=1000", f"train.model={tmp_path / 'no_model'}"], REPO)["train"]
    manifest = pd.DataFrame({"image_id": range(6)})
    with pytest.raises(ValueError, match=r"1,000 x 1 = 1,000 samples.*train\.max_epochs") as refused:
        if entry == "training_loop":
            from fluxir.training.config import TrainFolders
            from fluxir.training.loop import train as run_training

            run_training(train, manifest, folders=TrainFolders(tmp_path / "ckpt", tmp_path / "cache"))
        elif entry == "precompute_node":
            from fluxir.pipelines.train.nodes import precompute_latents

            precompute_latents(manifest, tmp_path / "cache", train)
        else:
            from fluxir.pipelines.train.nodes import train_adapter

            summary = {"encoded": 0, "cached": 6, "cache_dir": str(tmp_path / "cache")}
            train_adapter(manifest, summary, tmp_path / "prompts", tmp_path / "ckpt", tmp_path / "cache", train)
    assert "no_model" not in str(refused.value)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "cache").exists()
