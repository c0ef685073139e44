"""FluxGen at scale: recorded hashes, sharded resumable scoring, parallel resumable degradation.

Images are small crops of scikit-image photos (all different); the scorers are pyiqa's weight-free ones.
Everything here proves machinery (sharding, resuming, determinism), not image quality.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data

from fluxir.fluxgen.generate import (
    INDEX_NAME,
    GenerationConfig,
    generation_manifest,
    recorded_hashes,
)
from fluxir.fluxgen.pairs import (
    PairStores,
    ids_for_rank,
    make_pairs,
    pairs_manifest,
    resolve_workers,
)
from fluxir.fluxgen.score import IqaConfig, chunks_to_score, merge_scores, metrics_key, run_scoring, scoring_precision
from fluxir.io.images import read_image
from fluxir.io.provenance import sha256_file
from fluxir.io.store import ImageStore
from fluxir.parameters.config import load_params

from conftest import REPO, free_port
from support import base_params, kill_when

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "FLUXIR_PROGRESS": "off", "PYTHONPATH": str(REPO / "src")}


def _images(n: int) -> list[np.ndarray]:
    """``n`` different (48, 64, 3) uint8 crops of a photo."""
    photo = skimage.data.astronaut()  # (512, 512, 3)
    return [
        np.ascontiguousarray(photo[(7 * i) % 460 : (7 * i) % 460 + 48, (13 * i) % 440 : (13 * i) % 440 + 64])
        for i in range(n)
    ]


def _make_store(root: Path, n: int) -> tuple[GenerationConfig, ImageStore]:
    cfg = GenerationConfig.from_params(base_params("fluxgen", model="none", num_images=n, height=48, width=64))
    store = ImageStore(root).sub(cfg.key())
    for i, image in enumerate(_images(n)):
        store.write_recorded(i, image)
    return cfg, store


# ------------------------------------------------------------------ recorded hashes and manifests


def test_manifest_reads_no_image_when_hashes_are_recorded(tmp_path, monkeypatch, opened_images):
    monkeypatch.chdir(tmp_path)
    cfg, store = _make_store(tmp_path / "images", 1203)  # two shard folders
    opened_images.clear()
    cold = generation_manifest(cfg, store)  # from the sidecars written with the images
    assert opened_images == []
    assert all((store.root / shard / INDEX_NAME).is_file() for shard in ("0000", "0001"))
    warm = generation_manifest(cfg, store)  # from the per-shard indexes
    assert opened_images == []
    pd.testing.assert_frame_equal(cold, warm)
    for i in (0, 999, 1000, 1202):
        assert warm.loc[i, "sha256"] == sha256_file(store.path_for(i))
        assert warm.loc[i, "path"] == f"images/{cfg.key()}/{i // 1000:04d}/{i:08d}.png"
    assert list(warm["image_id"]) == list(range(1203)) and warm["seed"].dtype == np.int64


def test_changed_or_unrecorded_image_is_hashed_again(tmp_path, opened_images):
    cfg, store = _make_store(tmp_path, 5)
    generation_manifest(cfg, store)
    replaced = store.write(3, _images(9)[8])  # written without recording its hash
    os.utime(store.path_for(1), ns=(1, 1))  # same bytes, other mtime: hashed again, same hash
    opened_images.clear()
    rows = {i: sha for i, _, sha, _ in recorded_hashes(store, range(5))}
    assert sorted(opened_images) == sorted([str(store.path_for(1)), str(replaced)])
    assert rows[3] == sha256_file(replaced) and rows[1] == sha256_file(store.path_for(1))
    opened_images.clear()
    list(recorded_hashes(store, range(5)))
    assert opened_images == []


def test_missing_image_is_named(tmp_path):
    cfg, store = _make_store(tmp_path, 3)
    store.path_for(1).unlink()
    with pytest.raises(FileNotFoundError, match="image 1 is missing: no file .*00000001.png; run the generation again"):
        generation_manifest(cfg, store)


# ------------------------------------------------------------------ scoring


def _score_params(metric: str) -> str:
    return f"iqa.metrics=[{metric}],iqa.batch_size=3,iqa.part_size=6,iqa.loader_workers=1,iqa.device=cpu"


def _score_cli(manifest: Path, parts: Path, metric: str, *extra: str) -> list[str]:
    params = _score_params(metric)
    return [
        "-m",
        "fluxir.fluxgen",
        "score",
        "--env",
        "tiny",
        "--params",
        params,
        "--manifest",
        str(manifest),
        "--parts",
        str(parts),
        "--project",
        str(REPO),
        *extra,
    ]


def _score_here(manifest: Path, parts: Path, metric: str) -> int:
    """What ``_score_cli`` runs, in this process (a one-process reference or a rerun: their subject is the scores);
    returns how many images it scored."""
    iqa = load_params("tiny", [_score_params(metric)], REPO)["iqa"]
    return run_scoring(IqaConfig.from_params(iqa), pd.read_parquet(manifest), parts, progress=False)[1]


def _merged(manifest: Path, parts: Path, metric: str) -> pd.DataFrame:
    (key_dir,) = [p for p in parts.iterdir() if p.is_dir()]
    return merge_scores(pd.read_parquet(manifest), key_dir, [metric])


@pytest.fixture
def scored_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, store = _make_store(tmp_path / "images", 41)
    manifest = generation_manifest(cfg, store)
    path = tmp_path / "generated.parquet"
    manifest.to_parquet(path)
    return path


@pytest.mark.e2e  # several processes or a killed one
def test_two_scoring_processes_equal_one(scored_manifest, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    subprocess.run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            *_score_cli(scored_manifest, tmp_path / "two", "entropy"),
        ],
        cwd=tmp_path,
        env=ENV,
        check=True,
        capture_output=True,
        timeout=300,
    )
    _score_here(scored_manifest, tmp_path / "one", "entropy")
    two_parts = sorted(p.name for p in (tmp_path / "two").rglob("part-*.parquet"))
    assert {name.split("-")[1] for name in two_parts} == {"00000", "00001"}, "both processes wrote parts"
    one, two = (
        _merged(scored_manifest, tmp_path / "one", "entropy"),
        _merged(scored_manifest, tmp_path / "two", "entropy"),
    )
    pd.testing.assert_frame_equal(one, two)  # exact: every chunk is the same batch in both runs
    assert one["entropy"].nunique() > 30
    # a rerun finds nothing left to score
    assert _score_here(scored_manifest, tmp_path / "two", "entropy") == 0
    assert sorted(p.name for p in (tmp_path / "two").rglob("part-*.parquet")) == two_parts


@pytest.mark.e2e  # several processes or a killed one
def test_scoring_resumes_after_kill(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, store = _make_store(tmp_path / "images", 600)
    manifest = tmp_path / "generated.parquet"
    generation_manifest(cfg, store).to_parquet(manifest)
    parts = tmp_path / "parts"
    proc = subprocess.Popen(
        [sys.executable, *_score_cli(manifest, parts, "piqe")],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children = kill_when(proc, lambda: len(list(parts.rglob("part-*.parquet"))) >= 2)
    assert children, "the scorer had its loader worker running; kill_when checked it died with it"
    written = list(parts.rglob("part-*.parquet"))
    scored = sum(len(pd.read_parquet(p)) for p in written)  # every listed part is complete
    assert 12 <= scored < 600, "the run should have been killed part-way"
    assert _score_here(manifest, parts, "piqe") == 600 - scored  # the rerun scores only what the kill left
    _score_here(manifest, tmp_path / "clean", "piqe")
    pd.testing.assert_frame_equal(_merged(manifest, parts, "piqe"), _merged(manifest, tmp_path / "clean", "piqe"))


def test_chunks_are_fixed_by_the_manifest():
    manifest = pd.DataFrame({"path": [f"p{i}" for i in range(7)], "sha256": ["a", "b", "a", "c", "d", "e", "f"]})
    chunks = chunks_to_score(manifest, set(), 2)
    assert [list(c["sha256"]) for c in chunks] == [["a", "b"], ["c", "d"], ["e", "f"]]  # duplicates scored once
    # a chunk with any unscored image is scored whole: the same batch as in an uninterrupted run
    assert [list(c["sha256"]) for c in chunks_to_score(manifest, {"a", "b", "c", "f"}, 2)] == [["c", "d"], ["e", "f"]]


def _iqa(metrics, precision: str) -> IqaConfig:
    return IqaConfig.from_params(
        {
            "metrics": metrics,
            "weights_dir": None,
            "trust_weight_files": False,
            "batch_size": 4,
            "device": "cpu",
            "loader_workers": 0,
            "part_size": 1024,
            "precision": precision,
        }
    )


def test_scoring_precision_is_applied_and_keys_the_scores(scored_manifest, tmp_path):
    """iqa.precision: bf16 really runs the metric in bf16 (scores move a little), tf32 switches TensorFloat-32
    matmuls on only while scoring, and each precision scores into its own key folder."""
    import torch

    spec = [{"name": "musiq", "pretrained": False}]
    keys = {p: metrics_key(spec, p) for p in ("fp32", "tf32", "bf16")}
    assert len(set(keys.values())) == 3
    before = torch.backends.cuda.matmul.fp32_precision
    with scoring_precision("tf32", "cpu"):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    with scoring_precision("fp32", "cpu"):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == before
    manifest = pd.read_parquet(scored_manifest).head(4)
    scores = {}
    for precision in ("fp32", "bf16"):
        parts, _ = run_scoring(_iqa(spec, precision), manifest, tmp_path / precision, progress=False)
        assert parts == tmp_path / precision / keys[precision]
        scores[precision] = merge_scores(manifest, parts, ["musiq"])["musiq"].to_numpy()
    assert not np.array_equal(scores["fp32"], scores["bf16"])
    np.testing.assert_allclose(scores["bf16"], scores["fp32"], rtol=0.05)
    with pytest.raises(ValueError, match="iqa.precision must be 'fp32' .* got 'fp16'"):
        run_scoring(_iqa(spec, "fp16"), manifest, tmp_path / "x", progress=False)


def test_unscored_image_is_named(scored_manifest, tmp_path):
    with pytest.raises(RuntimeError, match="41 images have no IQA score .*00000000.png.*run the scoring again"):
        merge_scores(pd.read_parquet(scored_manifest), tmp_path / "nothing", ["entropy"])


# ------------------------------------------------------------------ degradation


def _selection(tmp_path: Path, n: int) -> pd.DataFrame:
    cfg, store = _make_store(tmp_path / "images", n)
    table = generation_manifest(cfg, store)
    table["keep"] = table["image_id"] % 5 != 2  # some images were not selected
    return table


def _tiny_degradation():
    from fluxir.fluxgen.degrade_config import DegradationConfig

    return DegradationConfig.from_params(
        base_params("degrade")["config"] | {"crop_sizes": [[64, 48], [48, 48], [32, 48]]}
    )


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.mark.e2e  # two worker processes must make byte-identical pairs
def test_two_workers_make_byte_identical_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kept = _selection(tmp_path, 12)
    kept = kept[kept["keep"]]
    jobs = list(zip(kept["image_id"].astype(int), kept["path"]))
    one, two = PairStores(ImageStore(tmp_path / "one"), "k"), PairStores(ImageStore(tmp_path / "two"), "k")
    assert make_pairs(jobs, one, _tiny_degradation(), 3, workers=1, progress=False) == sorted(i for i, _ in jobs)
    assert make_pairs(jobs, two, _tiny_degradation(), 3, workers=2, progress=False) == sorted(i for i, _ in jobs)
    files = _files(tmp_path / "one")
    assert len(files) == 3 * len(jobs) and files == _files(tmp_path / "two")
    assert make_pairs(jobs, two, _tiny_degradation(), 3, workers=2, progress=False) == []  # all done
    manifest = pairs_manifest(kept, two, 3)
    for row in manifest.itertuples():
        assert row.hq_sha256 == sha256_file(row.hq_path) and row.lq_sha256 == sha256_file(row.lq_path)
        assert read_image(row.lq_path).shape[0] * 4 == read_image(row.hq_path).shape[0]
        # the sizes training needs are recorded at degradation time
        assert read_image(row.hq_path).shape[:2] == (row.height, row.width)
        assert read_image(row.lq_path).shape[:2] == (row.lq_height, row.lq_width)
    assert len(set(zip(manifest["width"], manifest["height"]))) > 1  # several aspect buckets


def test_machines_share_the_ids():
    assert ids_for_rank(range(10), 1, 3) == [1, 4, 7]
    assert sorted(ids_for_rank(range(10), 0, 2) + ids_for_rank(range(10), 1, 2)) == list(range(10))
    with pytest.raises(ValueError, match=r"degrade.rank must be an integer in \[0, 1\] \(world_size 2\), got 2"):
        ids_for_rank(range(3), 2, 2)
    with pytest.raises(ValueError, match="degrade.workers must be 'auto' or a positive integer, got 0"):
        resolve_workers(0)
    assert resolve_workers("auto") >= 1


def _pairs_cli(selection: Path, store: Path, *params: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fluxir.fluxgen",
        "pairs",
        "--env",
        "tiny",
        "--selection",
        str(selection),
        "--store",
        str(store),
        "--project",
        str(REPO),
        "--params",
        ",".join(["degrade.seed=5", *params]),
    ]


@pytest.mark.e2e  # several processes or a killed one
def test_degradation_resumes_after_kill_and_ranks_add_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    selection = _selection(tmp_path, 160)
    path = tmp_path / "selection.parquet"
    selection.to_parquet(path)
    store = tmp_path / "pairs"
    proc = subprocess.Popen(
        _pairs_cli(path, store, "degrade.workers=2"),
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_when(proc, lambda: len(list(store.rglob("*.json"))) >= 10, group=True)  # + forkserver, workers
    records = list(store.rglob("[0-9]*.json"))
    assert 10 <= len(records) < 128, "the run should have been killed part-way"
    for record in records:  # a record is only written once both images are complete
        lq = record.with_suffix(".png")
        hq = lq.parents[2] / "hq" / lq.parent.name / lq.name
        assert read_image(lq).shape[0] * 4 == read_image(hq).shape[0]
    subprocess.run(_pairs_cli(path, store, "degrade.workers=2"), cwd=tmp_path, env=ENV, check=True, capture_output=True)
    # two machines (ranks) of one worker each make the same files as the resumed run
    for rank in (0, 1):
        subprocess.run(
            _pairs_cli(path, tmp_path / "ranks", "degrade.workers=1", f"degrade.rank={rank}", "degrade.world_size=2"),
            cwd=tmp_path,
            env=ENV,
            check=True,
            capture_output=True,
        )
    assert _files(store) == _files(tmp_path / "ranks")
    assert len(list(store.rglob("[0-9]*.json"))) == int(selection["keep"].sum())
