"""kedro run --pipeline=export on a tiny fluxgen run: shards that datasets loads back pixel-equal, a card whose
YAML header parses and names the licence, shards within export.max_shard_mb, WebDataset tars, the upload.

One in-process fluxgen run, then two exports of it (parquet pushed to a local "hub"; WebDataset with the
generated images), each copied aside because an export replaces its folder. Tiny random-weight models: this
proves the machinery, never the data's quality.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from fluxir.export.cards import FLUX_DEV_LICENSE_LINK, generator_license, read_card_header
from fluxir.parameters.config import load_params

from conftest import REPO, make_project_copy
from support import kedro_session_run

# its module fixtures are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_export")

MAX_SHARD_MB = 0.04
EXPORT = Path("data/09_export/fluxgen_dataset")


def run(project: Path, pipeline: str, params: dict) -> None:
    """One in-process Kedro run; the MLflow run it leaves active is ended so that the next run opens its own
    (otherwise the next run logs its parameters into this one and MLflow refuses the changed values)."""
    import mlflow

    kedro_session_run(project, env="tiny", pipeline=pipeline, params=params)
    while mlflow.active_run():
        mlflow.end_run()


def latest_table(project: Path, name: str) -> pd.DataFrame:
    (path,) = sorted((project / "data").glob(f"*/{name}.parquet/*/{name}.parquet"))[-1:]
    return pd.read_parquet(path)


def pixels(source) -> np.ndarray:
    image = source if isinstance(source, Image.Image) else Image.open(source)
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny fluxgen run, then docs/sharing.md's `kedro run --pipeline=export` (parquet, pushed to a file://
    hub) and `kedro run --pipeline=export --params="export.format=webdataset,export.include_generated=true"`,
    in-process on the tiny env."""
    root = tmp_path_factory.mktemp("export")
    project = make_project_copy(root / "project", demo_benchmarks=False)
    run(project, "fluxgen", {"fluxgen": {"num_images": 6, "steps": 2}})
    hub = root / "hub"
    push = {"push_to_hub": True, "repo_id": "someone/fluxgen-tiny", "hub_endpoint": hub.as_uri()}
    run(project, "export", {"export": {"max_shard_mb": MAX_SHARD_MB, **push}})
    shutil.copytree(project / EXPORT, root / "parquet")
    webdataset = {"format": "webdataset", "include_generated": True, "max_shard_mb": MAX_SHARD_MB}
    run(project, "export", {"export": webdataset})
    return {
        "project": project,
        "parquet": root / "parquet",
        "webdataset": project / EXPORT,
        "hub": hub / "someone" / "fluxgen-tiny",
        "pairs": latest_table(project, "pairs_manifest").set_index("image_id"),
        "selection": latest_table(project, "iqa_selection").set_index("image_id"),
        "cache": root / "datasets_cache",
    }


def test_load_dataset_gives_back_the_pair_pixels_and_scores(exported):
    from datasets import load_dataset

    folder, pairs, project = exported["parquet"], exported["pairs"], exported["project"]
    files = sorted(str(p) for p in (folder / "data").glob("train-*.parquet"))
    ds = load_dataset("parquet", data_files=files, split="train", cache_dir=str(exported["cache"]))
    assert len(ds) == len(pairs) > 1
    assert sorted(ds["image_id"]) == sorted(pairs.index)
    for row in ds:
        pair = pairs.loc[row["image_id"]]
        assert np.array_equal(pixels(row["hq"]), pixels(project / pair["hq_path"]))
        assert np.array_equal(pixels(row["lq"]), pixels(project / pair["lq_path"]))
        assert row["hq_sha256"] == pair["hq_sha256"]
        scores = exported["selection"].loc[row["image_id"]]
        assert row["iqa_piqe"] == pytest.approx(scores["piqe"])
        assert row["seed"] == scores["seed"]


def test_card_header_parses_and_names_the_licence(exported):
    card = (exported["parquet"] / "README.md").read_text()
    header = read_card_header(card)
    assert header["license"] == "other"
    assert header["license_name"] == "flux-1-dev-non-commercial-license"
    assert header["license_link"] == FLUX_DEV_LICENSE_LINK
    assert header["task_categories"] == ["image-to-image"]
    assert header["size_categories"] == ["n<1K"]
    (config,) = header["configs"]
    assert config["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    n_kept, n_scored = int(exported["selection"]["keep"].sum()), len(exported["selection"])
    assert f"Kept {n_kept} of {n_scored} scored images" in card
    content_filter = load_params("tiny", [], REPO)["fluxgen"].get("content_filter")
    if content_filter is None:  # no filter stage in this fluxgen: the card must not claim one
        assert "no content filter stage" in card and "2(e)(i)(B)" in card
    else:
        assert f"above `fluxgen.content_filter.threshold` {content_filter['threshold']}" in card
    assert "random-weight" in card and "2(d)" in card and "4(a)" in card
    # the histogram image next to the card is the one select_by_iqa saved
    (saved,) = sorted((exported["project"] / "data/08_reporting/iqa_histograms.png").glob("*/iqa_histograms.png"))
    assert "](iqa_histograms.png)" in card
    assert np.array_equal(pixels(exported["parquet"] / "iqa_histograms.png"), pixels(saved))


def shard_rows(shard: Path) -> int:
    if shard.suffix == ".tar":
        with tarfile.open(shard) as tar:
            return sum(name.endswith(".json") for name in tar.getnames())
    import pyarrow.parquet as pq

    return pq.ParquetFile(shard).metadata.num_rows


def test_shards_respect_the_size_parameter(exported):
    for fmt, suffix in (("parquet", "parquet"), ("webdataset", "tar")):
        shards = sorted((exported[fmt] / "data").glob(f"train-*.{suffix}"))
        rows = [shard_rows(s) for s in shards]
        sizes = [s.stat().st_size for s in shards]
        assert sum(rows) == len(exported["pairs"]) and len(shards) > 1, (fmt, rows)
        # no shard above the limit, unless one row alone is (a tar pads to 10 KiB records)
        assert all(size <= MAX_SHARD_MB * 1e6 or n == 1 for size, n in zip(sizes, rows, strict=True)), (fmt, sizes)
        assert [s.name for s in shards] == [f"train-{i:05d}-of-{len(shards):05d}.{suffix}" for i in range(len(shards))]
    assert max(shard_rows(s) for s in (exported["parquet"] / "data").glob("*.parquet")) > 1  # rows are grouped


def test_webdataset_tars_hold_the_same_pixels(exported):
    pairs, project = exported["pairs"], exported["project"]
    header = read_card_header((exported["webdataset"] / "README.md").read_text())
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*.tar"
    seen = []
    for shard in sorted((exported["webdataset"] / "data").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".json")):
            key = name.removesuffix(".json")
            meta = json.loads(members[name])
            pair = pairs.loc[meta["image_id"]]
            assert key == f"{meta['image_id']:08d}"
            for column, path in (("hq", pair["hq_path"]), ("lq", pair["lq_path"]), ("generated", pair["source_path"])):
                got = pixels(io.BytesIO(members[f"{key}.{column}.png"]))
                assert np.array_equal(got, pixels(project / path)), (key, column)
            seen.append(meta["image_id"])
    assert sorted(seen) == sorted(pairs.index)


def test_push_to_hub_uploads_the_export_folder(exported):
    pushed, folder = exported["hub"], exported["parquet"]
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pushed) for p in pushed.rglob("*") if p.is_file())
    assert all((pushed / f).read_bytes() == (folder / f).read_bytes() for f in files)
    (record,) = sorted((exported["project"] / "data/08_reporting/export_push.json").glob("*/export_push.json"))[:1]
    assert json.loads(record.read_text())["repo_id"] == "someone/fluxgen-tiny"


def test_generator_licences_by_model_id():
    assert generator_license("black-forest-labs/FLUX.1-schnell", None, None).card_fields() == {
        "license": "apache-2.0",
        "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-schnell/blob/main/README.md",
    }
    with pytest.raises(ValueError, match="set export.license"):
        generator_license("data/01_raw/tiny/flux", None, None)
    own = generator_license("my/model", None, {"license": "mit"})
    assert own.card_fields() == {"license": "mit"} and not own.non_commercial
    assert yaml.safe_load(yaml.safe_dump(own.card_fields())) == {"license": "mit"}


def test_bad_export_parameters_are_all_reported_before_a_run():
    from fluxir.parameters.validation import groups_read, problems_for

    assert "export" in groups_read(["params:export", "params:fluxgen"])
    bad = ["export.format=zip", "export.max_shard_mb=0", "export.push_to_hub=true", "export.colour=red"]
    problems = problems_for(load_params("tiny", bad, REPO), ["export"])
    assert len(problems) == 4, problems
    for needle in ("export.format", "export.max_shard_mb", "export.repo_id", "['colour']"):
        assert any(needle in p for p in problems), (needle, problems)
    assert problems_for(load_params("base", [], REPO), ["export"]) == []


def test_push_to_the_hub_calls_upload_folder_with_the_export(tmp_path, monkeypatch):
    """The Hub branch of the upload, with HfApi's two network calls replaced by a copy into a folder."""
    from huggingface_hub import HfApi

    from fluxir.export.build import upload_export

    folder = tmp_path / "export"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: other\n---\n")
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, repo_type, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, repo_type))
        shutil.copytree(folder_path, tmp_path / "uploaded" / repo_id)
        return f"https://hub.example/datasets/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = upload_export(folder, "someone/pairs", "dataset", None, True)
    assert calls == [
        ("create_repo", "someone/pairs", {"repo_type": "dataset", "private": True, "exist_ok": True}),
        ("upload_folder", "someone/pairs", "dataset"),
    ]
    assert result["files"] == ["README.md", "data/train-00000-of-00001.parquet"]
    assert (tmp_path / "uploaded" / "someone/pairs" / "data" / "train-00000-of-00001.parquet").read_bytes() == b"PAR1"
    with pytest.raises(ValueError, match="export.repo_id"):
        upload_export(folder, None, "dataset", None, True)
