"""The content filter stage and provenance of FluxGen, through one tiny in-process Kedro run (and one with the filter
off): a known red image put among the generated ones is flagged by the tiny classifier (whose weights flag saturated
red, build_nsfw_classifier in scripts/tiny_models.py), dropped before the pairs and counted in MLflow; every generated
and paired PNG carries the AI disclosure and its provenance. Tiny models prove the machinery, never detection
quality."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from fluxir.fluxgen.content_filter import REVIEW_DUTY
from fluxir.fluxgen.generate import GenerationConfig, image_seed
from fluxir.io.atomic import write_png_atomic
from fluxir.io.provenance import GENERATED_SOFTWARE, PAIR_DISCLOSURE, model_revision, read_provenance
from fluxir.io.store import ImageStore
from fluxir.parameters.config import load_params

from conftest import make_project_copy
from support import kedro_session_run

# its module fixtures are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_content_filter")

RED_ID = 3  # the id whose generated image is replaced by a red-tinted photo before the run
PARAMS = {"fluxgen": {"num_images": 8, "steps": 2}}  # nested, as Kedro's --params parsing hands them over


def red_photo(width: int, height: int) -> np.ndarray:
    """A natural photo tinted red: texture to pass the tiny env's IQA cuts, red enough for the tiny classifier."""
    rgb = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BICUBIC)).astype(float)
    tinted = np.stack([110 + 0.57 * rgb[..., 0], 0.45 * rgb[..., 1], 0.45 * rgb[..., 2]], axis=-1)
    return tinted.round().clip(0, 255).astype(np.uint8)


def _latest(project: Path, relative: str) -> pd.DataFrame:
    return pd.read_parquet(sorted((project / relative).glob("*/*"))[-1])


def _latest_run(project: Path) -> mlflow.entities.Run:
    from fluxir.runtime.hooks import experiment_name

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name("fluxgen"))
    return client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory) -> Path:
    """A tiny fluxgen run (filter on, conf/tiny's classifier) with a red image injected at ``RED_ID``."""
    project = make_project_copy(tmp_path_factory.mktemp("content_filter") / "project", demo_benchmarks=False)
    cfg = GenerationConfig.from_params(load_params("tiny", [PARAMS], project)["fluxgen"])
    store = ImageStore(project / "data/02_intermediate/fluxgen_images").sub(cfg.key())
    write_png_atomic(store.path_for(RED_ID), red_photo(cfg.width, cfg.height))  # generation keeps existing ids
    kedro_session_run(project, env="tiny", pipeline="fluxgen", params=PARAMS)
    _end_leftover_run()
    return project


def _end_leftover_run() -> None:
    """An in-process KedroSession leaves its MLflow run active in this process (kedro-mlflow ends only the run of
    the thread it runs in): without this the next session would log into the previous run."""
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_content_filter_node_sits_between_generation_and_selection():
    from fluxir.pipelines.fluxgen.pipeline import create_pipeline

    nodes = {node.name: node for node in create_pipeline().nodes}
    assert "content_filter" in nodes
    assert nodes["content_filter"].inputs[0] == "generated_images"
    assert "nsfw_scores" in nodes["select_by_iqa"].inputs


def test_the_red_image_is_flagged_dropped_and_counted(filtered_run):
    project = filtered_run
    scores = _latest(project, "data/04_feature/nsfw_scores.parquet")
    generated = _latest(project, "data/02_intermediate/generated_images.parquet")
    assert len(generated) == 8
    assert sorted(scores["sha256"]) == sorted(generated["sha256"]), "every generated image is scored, by sha256"
    flagged = scores.loc[scores["nsfw_flagged"], "image_id"].tolist()
    assert flagged == [RED_ID]
    assert scores.set_index("image_id").at[RED_ID, "nsfw_score"] > 0.85 > scores["nsfw_score"].drop(RED_ID).max()

    selection = _latest(project, "data/04_feature/iqa_selection.parquet").set_index("image_id")
    assert not selection.at[RED_ID, "keep"]
    # dropped by the filter alone: the tinted photo passes every IQA cut
    assert selection.at[RED_ID, "drop_reason"].startswith("content filter: nsfw score")
    assert "iqa" not in selection.at[RED_ID, "drop_reason"]
    pairs = _latest(project, "data/05_model_input/pairs_manifest.parquet")
    assert RED_ID not in set(pairs["image_id"])
    assert sorted(pairs["image_id"]) == sorted(selection.index[selection["keep"]])

    run = _latest_run(project)
    assert run.data.metrics["select.flagged_nsfw"] == 1
    assert run.data.metrics["select.content_filter_enabled"] == 1
    assert run.data.metrics["select.n_kept"] == int(selection["keep"].sum())
    assert run.data.tags["content_filter"].startswith("data/01_raw/tiny/nsfw_classifier")


def test_every_generated_and_paired_png_carries_its_provenance(filtered_run):
    project = filtered_run
    generated = _latest(project, "data/02_intermediate/generated_images.parquet")
    model = load_params("tiny", [PARAMS], project)["fluxgen"]["model"]
    for row in generated.itertuples():
        text = read_provenance(project / row.path)
        if row.image_id == RED_ID:
            assert text == {}, "the injected image was written by the test, not by the generator"
            continue
        assert text["Software"] == GENERATED_SOFTWARE
        assert "AI model" in text["Disclosure"]
        assert text["Model"] == model
        assert text["Model-Revision"] == model_revision(project / model)
        assert text["Seed"] == str(image_seed(0, row.image_id)) == str(row.seed)
        assert text["Config-Hash"] == row.config_key
        assert text["Fluxir-Version"]
    pairs = _latest(project, "data/05_model_input/pairs_manifest.parquet")
    assert len(pairs)
    for row in pairs.itertuples():
        source = read_provenance(project / row.source_path)
        for side, path in (("hq", row.hq_path), ("lq", row.lq_path)):
            text = read_provenance(project / path)
            assert text["Software"] == GENERATED_SOFTWARE
            assert text["Disclosure"] == PAIR_DISCLOSURE
            assert text["Pair-Side"] == side
            assert {k: text[k] for k in ("Model", "Model-Revision", "Seed", "Config-Hash")} == {
                k: source[k] for k in ("Model", "Model-Revision", "Seed", "Config-Hash")
            }
            assert text["Pairs-Key"] == row.pairs_key


def test_disabled_filter_scores_nothing_and_records_the_review_duty(filtered_run, caplog):
    project = filtered_run
    parts_before = sorted((project / "data/04_feature/nsfw_parts").rglob("part-*.parquet"))
    with caplog.at_level("WARNING", logger="fluxir.fluxgen.content_filter"):
        kedro_session_run(
            project,
            env="tiny",
            pipeline="fluxgen",
            params={"fluxgen": {**PARAMS["fluxgen"], "content_filter": {"enabled": False}}},
        )
    _end_leftover_run()
    assert sorted((project / "data/04_feature/nsfw_parts").rglob("part-*.parquet")) == parts_before
    scores = _latest(project, "data/04_feature/nsfw_scores.parquet")
    assert scores["nsfw_score"].isna().all() and not scores["nsfw_flagged"].any()
    assert (scores["content_filter"] == "disabled").all()
    run = _latest_run(project)
    assert run.data.tags["content_filter"] == "disabled"
    assert "2(e)(i)(B)" in run.data.tags["content_filter.review_duty"]
    assert run.data.metrics["select.flagged_nsfw"] == 0
    assert run.data.metrics["select.content_filter_enabled"] == 0
    assert any(REVIEW_DUTY in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    selection = _latest(project, "data/04_feature/iqa_selection.parquet").set_index("image_id")
    assert selection.at[RED_ID, "keep"], "unfiltered, the red image passes selection"
    pairs = _latest(project, "data/05_model_input/pairs_manifest.parquet")
    assert RED_ID in set(pairs["image_id"])
