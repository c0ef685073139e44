"""FluxGen generation: seeds per id, resumability, kill-safety, sharding over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fluxir.fluxgen.generate import (
    GenerationConfig,
    generate_into_store,
    ids_for_process,
    image_seed,
    prompt_for,
    recorded_hashes,
    run_generation,
)
from fluxir.io.images import read_image
from fluxir.io.provenance import sha256_file
from fluxir.io.store import ImageStore
from fluxir.models.loading import resolve_source
from fluxir.parameters.config import load_params

from conftest import REPO, free_port
from support import base_params, kill_when


def tiny_cfg(tiny_flux_dir: Path, **overrides) -> GenerationConfig:
    params = dict(model=str(tiny_flux_dir), num_images=3, height=48, width=64, steps=2, dtype="float32", device="cpu")
    return GenerationConfig.from_params(base_params("fluxgen", **{**params, **overrides}))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_images": 0}, "num_images must be a positive integer"),
        ({"num_images": -5}, "num_images must be a positive integer"),
        ({"height": 50}, "height must be a positive multiple of 16"),
        ({"width": 1000}, "nearest valid: 992"),
        ({"dtype": "int8"}, "dtype must be"),
        ({"write_threads": -1}, "write_threads must be an integer >= 0"),
        ({"num_imgs": 3}, "unknown fluxgen parameter(s) ['num_imgs']"),
    ],
)
def test_bad_parameters_name_the_value(params, message):
    with pytest.raises(ValueError) as err:
        GenerationConfig.from_params(base_params("fluxgen", **params))
    assert message in str(err.value)


def test_bad_model_sources(tmp_path):
    with pytest.raises(ValueError, match="neither an existing local folder nor a hub id"):
        resolve_source(str(tmp_path / "missing" / "flux"))
    with pytest.raises(ValueError, match="has no model_index.json"):
        resolve_source(str(tmp_path))
    assert resolve_source("black-forest-labs/FLUX.1-dev") == "black-forest-labs/FLUX.1-dev"


def test_unknown_hub_id_offline_names_it(tmp_path):
    from fluxir.models.loading import load_pipeline

    with pytest.raises(ValueError, match="could not load model 'nobody-here/no-such-model'"):
        load_pipeline("nobody-here/no-such-model", "float32")


def test_ids_and_seeds():
    assert ids_for_process(7, 0, 2) == [0, 2, 4, 6] and ids_for_process(7, 1, 2) == [1, 3, 5]
    assert image_seed(100, 5) == 105
    assert prompt_for(4, []) == "" and prompt_for(4, ["a", "b", "c"]) == "b"


def test_store_key_changes_with_pixels_not_with_count(tiny_flux_dir):
    base = tiny_cfg(tiny_flux_dir)
    assert base.key() == tiny_cfg(tiny_flux_dir, num_images=50, batch_size=4).key()
    assert base.key() != tiny_cfg(tiny_flux_dir, guidance=3.5).key()
    assert base.key() != tiny_cfg(tiny_flux_dir, prompts=["a cat"]).key()


def test_resume_skips_finished_ids_and_keeps_their_files(tiny_flux_dir, tmp_path):
    store = ImageStore(tmp_path)
    cfg = tiny_cfg(tiny_flux_dir, num_images=3)
    assert generate_into_store(cfg, store, progress=False) == [0, 1, 2]
    store.path_for(1).unlink()
    before = {i: store.path_for(i).stat().st_mtime_ns for i in (0, 2)}
    cfg4 = tiny_cfg(tiny_flux_dir, num_images=4)
    assert generate_into_store(cfg4, store, progress=False) == [1, 3]
    assert {i: store.path_for(i).stat().st_mtime_ns for i in (0, 2)} == before
    assert generate_into_store(cfg4, store, progress=False) == []


def test_image_depends_on_its_seed_only(tiny_flux_dir, tmp_path):
    one, two = ImageStore(tmp_path / "b1"), ImageStore(tmp_path / "b2")
    generate_into_store(tiny_cfg(tiny_flux_dir, num_images=4, batch_size=1), one, progress=False)
    generate_into_store(tiny_cfg(tiny_flux_dir, num_images=4, batch_size=3), two, progress=False)
    images = [one.read(i).astype(int) for i in range(4)]
    for i in range(4):
        assert np.abs(images[i] - two.read(i).astype(int)).max() <= 1  # batching may move a pixel by one level
    assert np.abs(images[0] - images[1]).mean() > 5  # different seeds give different images


def test_prompt_list_changes_images(tiny_flux_dir, tmp_path):
    plain, prompted = ImageStore(tmp_path / "p0"), ImageStore(tmp_path / "p1")
    generate_into_store(tiny_cfg(tiny_flux_dir, num_images=1), plain, progress=False)
    generate_into_store(tiny_cfg(tiny_flux_dir, num_images=1, prompts=["the moon"]), prompted, progress=False)
    assert np.abs(plain.read(0).astype(int) - prompted.read(0).astype(int)).mean() > 1


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fluxir.fluxgen", "generate", "--env", "tiny", *args]


def _summaries(stdout: str) -> dict[int, int]:
    """{rank: images it generated} from the JSON line each process of the command prints last."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {line["rank"]: line["generated"] for line in lines}


@pytest.mark.e2e  # a killed process, several processes
def test_killed_run_keeps_complete_images_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    params = "fluxgen.num_images=400,fluxgen.steps=2,fluxgen.write_threads=2"  # writes in the background pool
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        _cli("--params", params, "--store", str(killed)),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(proc, lambda: len(list(killed.rglob("*.png"))) >= 3)
    written = sorted(killed.rglob("*.png"))
    assert 3 <= len(written) < 400, "the run should have been killed part-way"
    for path in written:  # every file that exists under its final name is a complete image
        assert read_image(path).shape == (48, 64, 3)
    rerun = subprocess.run(
        _cli("--params", params, "--store", str(killed)), cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    assert _summaries(rerun.stdout) == {0: 400 - len(written)}
    assert len(list(killed.rglob("*.png"))) == 400
    # the first ids (made before and after the kill) are an uninterrupted run's, byte for byte (the store key
    # does not depend on num_images), and every recorded hash is its file's
    first = params.replace("num_images=400", f"num_images={len(written) + 5}")
    # in this process: what `generate --params first --store clean` does, without another start-up
    cfg = GenerationConfig.from_params(load_params("tiny", [first], REPO)["fluxgen"])
    run_generation(cfg, ImageStore(clean), progress=False)
    made = {p.relative_to(clean): p.read_bytes() for p in clean.rglob("*.png")}
    assert len(made) == len(written) + 5 and made == {p: (killed / p).read_bytes() for p in made}
    (store,) = [ImageStore(p) for p in killed.iterdir() if p.is_dir()]
    assert [sha for *_, sha, _ in recorded_hashes(store, range(400))] == [
        sha256_file(store.path_for(i)) for i in range(400)
    ]


def test_returns_only_when_every_image_is_written(tiny_flux_dir, tmp_path):
    store = ImageStore(tmp_path)
    assert generate_into_store(tiny_cfg(tiny_flux_dir, num_images=5, write_threads=2), store, progress=False) == list(
        range(5)
    )
    for i in range(5):  # images and their sidecars are complete when the call returns
        path = store.path_for(i)
        assert read_image(path).shape == (48, 64, 3)
        assert json.loads(path.with_name(f".{path.name}.sha256").read_text())[0] == sha256_file(path)


@pytest.mark.parametrize("threads", [0, 2])
def test_a_failed_write_raises_in_the_caller(tiny_flux_dir, tmp_path, threads):
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises((NotADirectoryError, FileExistsError)):
        generate_into_store(
            tiny_cfg(tiny_flux_dir, num_images=2, write_threads=threads), ImageStore(blocker), progress=False
        )


@pytest.mark.e2e  # a killed process, several processes
def test_two_processes_share_the_ids(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    params = "fluxgen.num_images=7,fluxgen.steps=2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
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
            "-m",
            "fluxir.fluxgen",
            "generate",
            "--env",
            "tiny",
            "--params",
            params,
            "--store",
            str(tmp_path / "two"),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # the one-process reference in this process: its subject is the images
    cfg = GenerationConfig.from_params(load_params("tiny", [params], REPO)["fluxgen"])
    _, made = run_generation(cfg, ImageStore(tmp_path / "one"), progress=False)
    # ids r, r+2, ...: rank 0 makes 4 of the 7, rank 1 the other 3 (the files below: the same 7 images)
    assert _summaries(two.stdout) == {0: 4, 1: 3} and sorted(made) == list(range(7))
    two_files = {p.relative_to(tmp_path / "two"): p.read_bytes() for p in (tmp_path / "two").rglob("*.png")}
    one_files = {p.relative_to(tmp_path / "one"): p.read_bytes() for p in (tmp_path / "one").rglob("*.png")}
    assert two_files == one_files and len(one_files) == 7
