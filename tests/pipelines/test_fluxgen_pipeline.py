"""The fluxgen pipeline through the real Kedro runner, catalog versioning and MLflow (SQLite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import kedro_run, make_project_copy

# its module-scoped runs are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_fluxgen_pipeline")


def _versions(project: Path, relative: str) -> list[Path]:
    return sorted((project / relative).glob("*/*"))


@pytest.fixture(scope="module")
def fluxgen_run(tmp_path_factory):
    """One tiny fluxgen run, then a second with another percentile (shared by the tests below)."""
    project = make_project_copy(tmp_path_factory.mktemp("fluxgen") / "project")
    kedro_run(project, "run", "--env=tiny", "--pipeline=fluxgen", "--params=fluxgen.num_images=10,fluxgen.steps=2")
    kedro_run(
        project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        "--params=fluxgen.num_images=10,fluxgen.steps=2,select.percentile=20",
    )
    return project


def test_manifests_are_versioned_and_consistent(fluxgen_run):
    project = fluxgen_run
    generated = _versions(project, "data/02_intermediate/generated_images.parquet")
    pairs = _versions(project, "data/05_model_input/pairs_manifest.parquet")
    assert len(generated) == 2 and len(pairs) == 2, "each run writes a new version, none overwritten"
    manifest = pd.read_parquet(generated[-1])
    assert list(manifest["image_id"]) == list(range(10))
    assert (manifest["seed"] == manifest["image_id"]).all()  # base_seed 0: seed = id
    assert not manifest["path"].str.startswith("/").any(), "paths are relative to the project"
    assert manifest["sha256"].nunique() == 10
    scores = pd.read_parquet(_versions(project, "data/04_feature/iqa_scores.parquet")[-1])
    for column in ("image_id", "seed", "path", "sha256", "entropy", "piqe", "musiq", "iqa_versions"):
        assert column in scores.columns


def test_selection_cuts_at_the_percentile(fluxgen_run):
    project = fluxgen_run
    first, second = (pd.read_parquet(p) for p in _versions(project, "data/04_feature/iqa_selection.parquet"))
    for table, pct in ((first, 5), (second, 20)):
        assert table["entropy_threshold"].iloc[0] == pytest.approx(np.quantile(table["entropy"], pct / 100))
        # piqe: lower is better, so the cut is the (100 - pct)th percentile and we keep values below it
        assert table["piqe_threshold"].iloc[0] == pytest.approx(np.quantile(table["piqe"], 1 - pct / 100))
        expected = (
            (table["entropy"] >= table["entropy_threshold"])
            & (table["piqe"] <= table["piqe_threshold"])
            & (table["musiq"] >= table["musiq_threshold"])
        )
        assert (table["keep"] == expected).all()
    assert second["keep"].sum() < first["keep"].sum() < 10


def test_pairs_are_quarter_size_and_only_kept_images(fluxgen_run):
    project = fluxgen_run
    selection = pd.read_parquet(_versions(project, "data/04_feature/iqa_selection.parquet")[-1])
    pairs = pd.read_parquet(_versions(project, "data/05_model_input/pairs_manifest.parquet")[-1])
    assert sorted(pairs["image_id"]) == sorted(selection.loc[selection["keep"], "image_id"])
    allowed = {(64, 48), (48, 48), (32, 48)}
    for row in pairs.itertuples():
        hq, lq = Image.open(project / row.hq_path), Image.open(project / row.lq_path)
        assert hq.size in allowed
        assert lq.size == (hq.size[0] // 4, hq.size[1] // 4)


def test_histograms_and_mlflow_run(fluxgen_run):
    import mlflow

    project = fluxgen_run
    assert len(_versions(project, "data/08_reporting/iqa_histograms.png")) == 2
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    from fluxir.runtime.hooks import experiment_name

    experiment = client.get_experiment_by_name(experiment_name("fluxgen"))
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
    assert len(runs) == 2
    latest = runs[0]
    assert latest.data.params["select.percentile"] == "20"
    assert latest.data.params["fluxgen.num_images"] == "10"
    assert latest.data.metrics["select.n_scored"] == 10
    assert latest.data.metrics["select.n_kept"] < 10
    artifacts = [a.path for a in client.list_artifacts(latest.info.run_id, "reporting")]
    assert artifacts == ["reporting/iqa_histograms.png"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("fluxgen.num_images=0", "fluxgen.num_images must be a positive integer"),
        ("fluxgen.model=data/01_raw/nowhere", "neither an existing local folder nor a hub id"),
    ],
)
def test_bad_input_fails_with_a_clear_message(kedro_project, params, message):
    proc = kedro_run(
        kedro_project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        f"--params=fluxgen.num_images=4,fluxgen.steps=1,{params}",
        check=False,
    )
    assert proc.returncode != 0
    assert message in " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.parametrize("percentile", [0, 100, "5"])
def test_bad_percentile_fails_before_any_cut(percentile):
    """In-process (the kedro run cases above show that node errors reach the user): selection needs 0 < p < 100."""
    from fluxir.pipelines.fluxgen.nodes import select_by_iqa

    scores = pd.DataFrame({"entropy": [1.0, 2.0], "piqe": [30.0, 40.0]})
    with pytest.raises(ValueError, match=r"select.percentile must be in \(0, 100\) exclusive, got"):
        select_by_iqa(scores, ["entropy", "piqe"], percentile)


def test_corrupt_image_is_named(kedro_project):
    kedro_run(
        kedro_project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        "--nodes=fluxgen.generate_images",
        "--params=fluxgen.num_images=3,fluxgen.steps=1",
    )
    victim = sorted((kedro_project / "data/02_intermediate/fluxgen_images").rglob("00000001.png"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    proc = kedro_run(
        kedro_project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        "--params=fluxgen.num_images=3,fluxgen.steps=1",
        check=False,
    )
    assert proc.returncode != 0
    assert "00000001.png: not a readable image" in " ".join((proc.stdout + proc.stderr).split())


def test_reruns_reuse_scores_and_pairs_and_the_clis_read_the_catalog(fluxgen_run, monkeypatch):
    """The ``python -m fluxir.fluxgen score`` / ``pairs`` commands (their ``main``, in this process) find the
    catalog's latest manifests and have nothing left to do."""
    import contextlib
    import io
    import json

    from fluxir.fluxgen.__main__ import main as fluxgen

    project = fluxgen_run
    parts = sorted((project / "data/04_feature/iqa_parts").rglob("part-*.parquet"))
    assert len(parts) == 1, "the second run (another percentile) scored nothing again"
    monkeypatch.setenv("FLUXIR_PROGRESS", "off")

    def last_json(main, *argv: str) -> dict:
        out = io.StringIO()
        with contextlib.chdir(project), contextlib.redirect_stdout(out):
            main(list(argv))
        return json.loads(out.getvalue().strip().splitlines()[-1])

    assert last_json(fluxgen, "score", "--env", "tiny")["scored"] == 0  # latest generated_images, all scored
    made = last_json(fluxgen, "pairs", "--env", "tiny", "--params", "degrade.rank=1,degrade.world_size=2")["made"]
    assert made == 0  # latest iqa_selection, all pairs done
