"""The paper's IQA metrics under their real names, loaded from files of the published layouts, offline.

``scripts/make_iqa_fixture_weights.py`` writes random-weight files with the released names, containers
and keys (OpenAI CLIP TorchScript archives, pyiqa checkpoints, torchvision AlexNet). With every
non-loopback connection blocked (``no_network``), ``kedro run --pipeline=fluxgen`` scores with
``clipiqa+_rn50_512`` / ``maniqa-pipal`` / ``musiq`` and ``--pipeline=evaluate`` with pretrained
``lpips``: they must read those files and try no download. Scores of random weights mean nothing;
these tests prove file layouts and loaders only. ``clipiqa+_vitL14_512`` (a ~0.9 GB ViT-L/14 archive)
is opt-in: ``pytest -m slow tests/iqa/test_iqa_offline.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, kedro_process

# its module-scoped runs are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_iqa_offline")

SCRIPT = REPO / "scripts" / "make_iqa_fixture_weights.py"
# The paper's selection metrics; MANIQA scores 1 crop instead of 20 (a pyiqa option) to keep CI short.
SELECTION_METRICS = ["clipiqa+_rn50_512", {"name": "maniqa-pipal", "test_sample": 1}, "musiq"]


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_iqa_fixture_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weight_home(tmp_path_factory) -> Path:
    """A weight home with the CI fixture files (everything but ViT-L/14), written once per module."""
    home = tmp_path_factory.mktemp("iqa_home")
    _fixture_module().make_fixture_weights(home)
    return home


def _set_params(project: Path, file: str, update: dict) -> None:
    """Merge ``update`` into conf/tiny/<file> of a project copy (one level deep per top-level key)."""
    path = project / "conf" / "tiny" / file
    params = yaml.safe_load(path.read_text())
    for key, value in update.items():
        params[key] = {**params.get(key, {}), **value}
    path.write_text(yaml.safe_dump(params))


def _python(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (pyiqa not imported yet), inheriting the network guard from the environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TORCH_HOME", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO / "src")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=600, check=False
    )


def test_fixture_files_have_the_published_names_and_containers(weight_home):
    from fluxir.iqa import weights as w

    hub = weight_home / "hub"
    expected = {
        hub / "clip" / "RN50.pt",
        hub / "checkpoints" / "alexnet-owt-7be5be79.pth",
        *(
            hub / "pyiqa" / f
            for f in (
                w.MUSIQ_FILES["koniq10k"],
                w.MANIQA_FILES["pipal"],
                w.LPIPS_FILES["0.1_alex"],
                w.CLIPIQA_FILES["clipiqa+"],
                w.CLIPIQA_FILES["clipiqa+_rn50_512"],
            )
        ),
    }
    assert {p for p in weight_home.rglob("*") if p.is_file()} == expected
    archive = torch.jit.load(str(hub / "clip" / "RN50.pt"), map_location="cpu")  # TorchScript, like OpenAI's
    keys = archive.state_dict()
    assert keys["visual.attnpool.positional_embedding"].shape == (50, 2048) and int(keys["context_length"]) == 77
    assert keys["visual.layer1.0.conv1.weight"].dtype == torch.float16
    assert set(torch.load(hub / "pyiqa" / w.MANIQA_FILES["pipal"], weights_only=False)) == {"params"}
    assert all(k.startswith("lin") and k[3].isdigit() for k in torch.load(hub / "pyiqa" / w.LPIPS_FILES["0.1_alex"]))
    assert all((v >= 0).all() for v in torch.load(hub / "pyiqa" / w.LPIPS_FILES["0.1_alex"]).values())
    assert torch.load(hub / "pyiqa" / w.CLIPIQA_FILES["clipiqa+"]).shape == (2, 16, 512)  # good/bad prompts


@pytest.mark.e2e  # pyiqa fixes its weight folder at import: each weight folder needs a fresh process
def test_fluxgen_scores_with_the_real_metric_names_offline(weight_home, kedro_project, no_network):
    _set_params(
        kedro_project,
        "parameters_fluxgen.yml",
        {
            "iqa": {
                "metrics": SELECTION_METRICS,
                "weights_dir": str(weight_home),
                "trust_weight_files": True,
                "batch_size": 2,
            }
        },
    )
    kedro_process(
        kedro_project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        "--nodes=fluxgen.generate_images,fluxgen.score_images",
        "--params=fluxgen.num_images=2,fluxgen.steps=1",
    )
    scores = pd.read_parquet(next((kedro_project / "data").rglob("iqa_scores.parquet")))
    for name in ("clipiqa+_rn50_512", "maniqa-pipal", "musiq"):
        assert scores[name].notna().all() and scores[name].nunique() == 2, scores
    versions = json.loads(scores["iqa_versions"].iloc[0])["metrics"]
    assert versions["musiq"]["weights"] == ["musiq_koniq_ckpt-e95806b9.pth"] and versions["musiq"]["pretrained"]
    assert versions["clipiqa+_rn50_512"]["weights"] == ["RN50.pt", "CLIPIQA%2B_RN50_512-89f5d940.pth"]


@pytest.mark.e2e  # pyiqa fixes its weight folder at import: each weight folder needs a fresh process
def test_evaluate_scores_pretrained_lpips_offline(weight_home, kedro_project, no_network):
    _set_params(
        kedro_project, "parameters_fluxgen.yml", {"iqa": {"weights_dir": str(weight_home), "trust_weight_files": True}}
    )
    # the real full-reference set; no-reference: the real MUSIQ, weight-free stand-ins for the others (kept short)
    metrics = {
        "full_reference": {"PSNR": "psnr", "SSIM": "ssim", "LPIPS": "lpips"},
        "no_reference": {"CLIPIQA": "entropy", "MANIQA": "piqe", "MUSIQ": "musiq"},
    }
    path = kedro_project / "conf" / "tiny" / "parameters_evaluate.yml"
    params = yaml.safe_load(path.read_text())
    params["evaluate"]["metrics"] = metrics
    params["evaluate"]["methods"] = ["bicubic"]  # the subject is the scoring: one method restores in no time
    path.write_text(yaml.safe_dump(params))
    kedro_process(kedro_project, "run", "--env=tiny", "--pipeline=evaluate")
    per_image = pd.read_parquet(next((kedro_project / "data").rglob("evaluation_per_image.parquet")))
    lpips = per_image[per_image["label"] == "LPIPS"]
    assert len(lpips) and lpips["value"].notna().all() and (lpips["value"] >= 0).all()
    assert not lpips["stand_in"].any(), "pretrained lpips is the real metric, not a stand-in"


def _broken_home(weight_home: Path, tmp_path: Path) -> Path:
    """A copy of the fixture home (large files linked) in which tests break single files."""
    home = tmp_path / "broken"
    shutil.copytree(weight_home, home, copy_function=os.link)
    return home


def _replace(path: Path, obj: object) -> None:
    path.unlink()  # a hard link: never write through to the shared fixture
    torch.save(obj, path)


@pytest.mark.e2e  # pyiqa fixes its weight folder at import: each weight folder needs a fresh process
def test_a_file_with_a_wrong_key_is_named_with_the_key(weight_home, tmp_path, no_network):
    """Break one key per file: each metric fails with the file and the key, not a silent partial load."""
    home = _broken_home(weight_home, tmp_path)
    pyiqa_dir = home / "hub" / "pyiqa"
    musiq = torch.load(pyiqa_dir / "musiq_koniq_ckpt-e95806b9.pth", weights_only=False)
    musiq["head.renamed.weight"] = musiq.pop("head.weight")
    _replace(pyiqa_dir / "musiq_koniq_ckpt-e95806b9.pth", musiq)
    lpips = torch.load(pyiqa_dir / "LPIPS_v0.1_alex-df73285e.pth", weights_only=False)
    lpips["lin9.model.1.weight"] = lpips.pop("lin4.model.1.weight")  # pyiqa itself loads this non-strictly
    _replace(pyiqa_dir / "LPIPS_v0.1_alex-df73285e.pth", lpips)
    (pyiqa_dir / "MANIQA_PIPAL-ae6d356b.pth").unlink()
    (pyiqa_dir / "MANIQA_PIPAL-ae6d356b.pth").write_bytes(b"PK\x03\x04 truncated download")
    result = _python(f"""
        import numpy as np
        from fluxir import iqa
        iqa.configure_weights({str(home)!r}, trust_files=True)
        image = [np.full((64, 64, 3), 128, np.uint8)]
        fr = lambda x, s, **kw: iqa.score_full_reference(x, x, s, convention="y", crop_border=4, **kw)
        for specs, score in ((["musiq"], iqa.score_no_reference), (["maniqa-pipal"], iqa.score_no_reference),
                             (["lpips"], fr)):
            try:
                score(image, specs, batch_size=2, progress=False)
                print("LOADED", specs)
            except ValueError as err:
                print("ERR", err)
        """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "LOADED" not in out, out
    assert f"ERR {pyiqa_dir / 'musiq_koniq_ckpt-e95806b9.pth'} does not fit MUSIQ" in out
    assert "missing keys 1: ['head.weight']" in out and "unexpected keys 1: ['head.renamed.weight']" in out
    assert f"ERR {pyiqa_dir / 'LPIPS_v0.1_alex-df73285e.pth'} does not fit LPIPS" in out
    assert "['lin4.model.1.weight']" in out and "['lin9.model.1.weight']" in out
    assert f"ERR {pyiqa_dir / 'MANIQA_PIPAL-ae6d356b.pth'} is not a readable PyTorch checkpoint" in out


@pytest.mark.e2e  # pyiqa fixes its weight folder at import: each weight folder needs a fresh process
def test_a_clip_archive_with_a_wrong_key_or_hash_is_named(weight_home, tmp_path, no_network):
    home = _broken_home(weight_home, tmp_path)
    clip_file = home / "hub" / "clip" / "RN50.pt"
    state = {k: v for k, v in torch.jit.load(str(clip_file), map_location="cpu").state_dict().items()}
    state["visual.attnpool.renamed_embedding"] = state.pop("visual.attnpool.positional_embedding")
    clip_file.unlink()  # a hard link: never write through to the shared fixture
    _fixture_module().archive_from_state_dict(state, clip_file)
    result = _python(f"""
        from fluxir import iqa
        iqa.configure_weights({str(home)!r})
        try:
            iqa.create_metrics(["clipiqa+_rn50_512"])
        except FileNotFoundError as err:
            print("UNTRUSTED", err)
        iqa.configure_weights({str(home)!r}, trust_files=True)
        try:
            iqa.create_metrics(["clipiqa+_rn50_512"])
        except ValueError as err:
            print("ERR", err)
        """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"{clip_file} is not OpenAI's file (SHA-256" in result.stdout
        and "iqa.trust_weight_files: true" in result.stdout
    )
    assert "ERR IQA metric 'clipiqa+_rn50_512' could not load its weights from" in result.stdout
    assert str(clip_file) in result.stdout and "visual.attnpool.positional_embedding" in result.stdout


@pytest.mark.slow
@pytest.mark.e2e  # pyiqa fixes its weight folder at import: each weight folder needs a fresh process
def test_clipiqa_vitl14_scores_offline(tmp_path, no_network):
    """Opt-in (writes ~0.9 GB): pytest -m slow tests/iqa/test_iqa_offline.py"""
    module = _fixture_module()
    home = tmp_path / "home"
    module.write_clip_and_prompts(home, "ViT-L/14")
    result = _python(f"""
        import numpy as np
        from fluxir import iqa
        iqa.configure_weights({str(home)!r}, trust_files=True)
        image = np.full((224, 224, 3), 100, np.uint8)
        scores = iqa.score_no_reference([image], ["clipiqa+_vitL14_512"], progress=False, batch_size=2)
        print("SCORE", float(scores["clipiqa+_vitL14_512"][0]))
        """)
    assert result.returncode == 0, result.stderr[-3000:]
    score = float(result.stdout.split("SCORE")[-1])
    assert 0.0 <= score <= 1.0


@pytest.mark.e2e  # pyiqa fixes its weight folder at import: each weight folder needs a fresh process
def test_preflight_check_builds_the_metrics_and_names_a_broken_file(weight_home, kedro_project, tmp_path, no_network):
    """python -m fluxir.preflight builds each IQA metric from its files: a wrong key fails before any run."""
    home = _broken_home(weight_home, tmp_path)
    musiq_file = home / "hub" / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth"
    musiq = torch.load(musiq_file, weights_only=False)
    musiq["head.renamed.weight"] = musiq.pop("head.weight")
    _replace(musiq_file, musiq)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    params = f"iqa.metrics=[musiq],iqa.weights_dir={home},iqa.trust_weight_files=true"
    result = subprocess.run(
        [sys.executable, "-m", "fluxir.preflight", "--env", "tiny", "--params", params],
        cwd=kedro_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "iqa          musiq" in fails[0], result.stdout
    assert f"{musiq_file} does not fit MUSIQ" in fails[0] and "['head.renamed.weight']" in fails[0]
    assert "OK    iqa          lpips" in result.stdout  # evaluate's stand-in still builds
