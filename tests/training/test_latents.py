"""Latents pre-computed once before training: sharded over processes, resumable after kill -9, and a
training run over a complete cache opens no image (sizes from pairs_manifest, latents from the cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fluxir.io.provenance import sha256_file
from fluxir.parameters.config import load_params
from fluxir.training.data import PairTable
from fluxir.training.latents import precompute_latents
from fluxir.training.loop import train

from conftest import REPO
from support import kill_when, make_pairs, tiny_folders, tiny_params


def with_sizes(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest as ``pairs_manifest`` writes it: HQ and LQ (width, height) recorded with each pair."""
    out = manifest.copy()
    for kind, (w, h) in (("hq", ("width", "height")), ("lq", ("lq_width", "lq_height"))):
        sizes = [Image.open(p).size for p in manifest[f"{kind}_path"]]
        out[w], out[h] = [s[0] for s in sizes], [s[1] for s in sizes]
    return out


def noise_pairs(root: Path, n: int) -> pd.DataFrame:
    """``n`` distinct 64x48 HQ / 16x12 LQ random pairs and their manifest (with sizes)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        hq, lq = root / f"hq_{i:04d}.png", root / f"lq_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(hq)
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(lq)
        rows.append(
            {
                "image_id": i,
                "hq_path": str(hq),
                "lq_path": str(lq),
                "hq_sha256": sha256_file(hq),
                "lq_sha256": sha256_file(lq),
                "width": 64,
                "height": 48,
                "lq_width": 16,
                "lq_height": 12,
            }
        )
    return pd.DataFrame(rows)


def _cache_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def test_with_a_complete_cache_training_opens_no_image(tmp_path, opened_images):
    manifest = with_sizes(make_pairs(tmp_path / "pairs", n=6))
    params = tiny_params(tmp_path, "train.max_steps=3", "train.num_validation_pairs=1")
    assert PairTable.from_manifest(manifest, 4).rows.width.tolist() == manifest.width.tolist()
    opened_images.clear()
    PairTable.from_manifest(manifest, 4)
    assert opened_images == [], "the pair table read sizes from files although the manifest has them"
    folders = tiny_folders(tmp_path)
    half = precompute_latents(params, manifest, 0, 2, progress=False, cache_dir=folders.latent_cache)
    assert half["encoded"] == 3 and half["cached"] == 0
    opened_images.clear()
    train(params, manifest, folders=folders, progress=False, prompt_cache=tmp_path / "prompts")
    assert opened_images, "the check can fail: with half the cache, training reads the other pairs' images"
    rest = precompute_latents(params, manifest, 1, 2, progress=False, cache_dir=folders.latent_cache)
    assert rest["encoded"] + rest["cached"] == 3 and rest["cached"] >= 1, "training cached what it encoded"
    opened_images.clear()
    train({**params, "resume": False}, manifest, folders=folders, progress=False, prompt_cache=tmp_path / "prompts")
    assert opened_images == []


def test_shards_add_up_to_one_process(tmp_path):
    manifest = noise_pairs(tmp_path / "pairs", 7)
    one = tiny_params(tmp_path / "one")
    two = tiny_params(tmp_path / "two")
    assert (
        precompute_latents(one, manifest, progress=False, cache_dir=tiny_folders(tmp_path / "one").latent_cache)[
            "encoded"
        ]
        == 7
    )
    counts = [
        precompute_latents(two, manifest, r, 2, progress=False, cache_dir=tiny_folders(tmp_path / "two").latent_cache)[
            "encoded"
        ]
        for r in (0, 1)
    ]
    assert counts == [4, 3]
    assert _cache_files(tmp_path / "two" / "cache") == _cache_files(tmp_path / "one" / "cache")
    again = precompute_latents(two, manifest, progress=False, cache_dir=tiny_folders(tmp_path / "two").latent_cache)
    assert (again["encoded"], again["cached"]) == (0, 7)


def _cli(manifest: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fluxir.training",
        "latents",
        "--env",
        "tiny",
        "--manifest",
        str(manifest),
        "--params",
        f"train.latent_cache_dir={cache}",
    ]


@pytest.mark.e2e  # a killed process resumes
def test_killed_precompute_resumes(tmp_path, monkeypatch):
    manifest = noise_pairs(tmp_path / "pairs", 240)
    path = tmp_path / "pairs.parquet"
    manifest.to_parquet(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLUXIR_PROGRESS": "off", "PYTHONPATH": str(REPO / "src")}
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_cli(path, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: len(list(killed.rglob("*.safetensors"))) >= 5)
    done = len(_cache_files(killed))
    assert 5 <= done < 240, "the run should have been killed part-way"
    rerun = subprocess.run(_cli(path, killed), cwd=REPO, env=env, check=True, capture_output=True, text=True)
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["encoded"], summary["cached"]) == (240 - done, done)
    # in this process: what `latents --manifest path --params train.latent_cache_dir=clean` does
    monkeypatch.chdir(REPO)  # the tiny settings' model folder is the project's
    params = load_params("tiny", [f"train.latent_cache_dir={clean}"], REPO)["train"]
    precompute_latents(params, manifest, cache_dir=clean, progress=False)
    assert _cache_files(killed) == _cache_files(clean)  # every entry complete, the same bytes as one clean run
