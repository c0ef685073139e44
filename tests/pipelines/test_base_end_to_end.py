"""The base configuration end to end, as a new user runs it: the documented commands, offline.

The module fixture lays out what a user has after downloading: the full-format tiny Flux
(``python scripts/tiny_models.py --kind flux``) as a hub-cache snapshot of ``black-forest-labs/FLUX.1-dev``
(``HF_HUB_CACHE``: blobs, refs/main, snapshots/<commit>; transformer and T5 weights in shards with their
index json, as in the real repo), the IQA files of the published names in ``TORCH_HOME``
(``scripts/make_iqa_fixture_weights.py``), Real-ESRGAN x4plus's checkpoint layout (random weights), a few
small benchmark images and photos, the tiny Flux ControlNet as a hub-cache snapshot of the
baseline's id, and the tiny content filter classifier (``data/01_raw/tiny/nsfw_classifier``, Falconsai's format)
as a hub-cache snapshot of ``Falconsai/nsfw_image_detection``. The commands of
README.md and docs/ then run as documented (tests/doc_commands.py lists which test runs which), with
``-c conf/run_small.yml`` appended (sizes only), 2 CPU processes where the docs say 4, 8 or N, and the
documented 350,000 images as 4. Everything else is the base configuration (the default env: the project
copy's conf/local is empty), FLUX.1-dev by hub id, bf16, the paper's selection metrics under their pyiqa
names (a ``+`` in MLflow keys included).

Three departures from ``conf/base``, written into the project copy: ``iqa.trust_weight_files: true`` (the
fixture CLIP archives cannot have OpenAI's SHA-256), MANIQA with ``test_sample: 1`` (one random 224 px
crop per image instead of 20: its ViT-B/8 is most of the CPU time, as in tests/fluxgen/test_iqa_offline.py)
and, in the default suite, ``clipiqa+_rn50_512`` in place of ``clipiqa+_vitL14_512`` (a ~0.9 GB ViT-L/14
archive to write and run on a CPU). The ViT-L/14 variant is the same module with ``-m slow``:
``pytest -m slow tests/pipelines/test_base_end_to_end.py``.
Scores of random-weight fixtures mean nothing; this proves the configuration, the files and the commands.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from doc_commands import documented

from conftest import NETGUARD, REPO, free_port, kedro_run, make_project_copy

# The base configuration end to end: every documented command as its own process, as a user types it. The tests
# share one project (module fixtures: pairs, then an adapter): one worker runs them all.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_base_end_to_end")]

FLUX = "black-forest-labs/FLUX.1-dev"
RUN_FILE = "conf/run_small.yml"
NUM_IMAGES = 4  # conf/run_small.yml: fluxgen.num_images
MANIQA = {"name": "maniqa-pipal", "test_sample": 1}  # 1 random 224 px crop per image instead of pyiqa's 20
CLIP_VARIANTS = ["clipiqa+_rn50_512", pytest.param("clipiqa+_vitL14_512", marks=pytest.mark.slow)]


class BaseProject:
    """A project copy plus the environment its commands run in; ``run`` types a documented command."""

    def __init__(self, root: Path, clip: str) -> None:
        self.root, self.clip = root, clip
        self.path = make_project_copy(root / "project")
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(root / "hf_cache"),
            "TORCH_HOME": str(root / "torch_home"),
            "PYTHONPATH": os.pathsep.join([str(NETGUARD), str(REPO / "src")]),
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)  # the project's mlflow.yml: mlflow.db in the project
        self.ran: list[list[str]] = []

    def run(
        self, command: str, *subs: tuple[str, str], run_file: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess:
        """``command`` as documented, with ``subs`` (old, new) applied and ``-c conf/run_small.yml`` appended."""
        text = documented(command)
        for old, new in (("$P", f"fluxgen.num_images={NUM_IMAGES}"), ("350000", str(NUM_IMAGES)), *subs):
            text = text.replace(old, new)
        argv = shlex.split(text)
        if run_file and RUN_FILE not in argv:
            argv += ["-c", RUN_FILE]
        if argv[0] == "accelerate":  # a free rendezvous port: other test runs may hold the default one
            argv[2:2] = ["--main_process_port", str(free_port())]
        self.ran.append(argv)
        program = {"python": sys.executable}.get(argv[0], str(Path(sys.executable).with_name(argv[0])))
        proc = subprocess.run(
            [program, *argv[1:]], cwd=self.path, env=self.env, capture_output=True, text=True, timeout=900, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{text} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return proc

    def latest(self, relative: str) -> Path:
        versions = sorted((self.path / relative).glob("*/*"))
        assert versions, f"nothing saved under {relative}"
        return versions[-1]

    def mlflow_runs(self, experiment: str) -> list:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{self.path / 'mlflow.db'}")
        found = client.get_experiment_by_name(experiment)
        assert found is not None, f"no MLflow experiment {experiment}"
        return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=CLIP_VARIANTS)
def base_project(request, tmp_path_factory) -> BaseProject:
    root = tmp_path_factory.mktemp("base_e2e")
    project = BaseProject(root, request.param)
    env = {**project.env, "PYTHONPATH": str(REPO / "src")}
    # FLUX.1-dev as a download leaves it: the full-format tiny folder, then the hub cache layout (sharded)
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "tiny_models.py"), "--kind", "flux", "--out", str(root / "flux")],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    from support import write_hub_snapshot

    write_hub_snapshot(root / "flux", root / "hf_cache", FLUX)
    # the Flux ControlNet baseline (evaluate.methods lists flux_controlnet) as a download of its hub id
    from tiny_models import write_tiny_controlnet

    baselines = yaml.safe_load((project.path / "conf" / "base" / "parameters_baselines.yml").read_text())
    write_tiny_controlnet(root / "controlnet")
    write_hub_snapshot(root / "controlnet", root / "hf_cache", baselines["baselines"]["flux_controlnet"]["controlnet"])
    fluxgen = yaml.safe_load((project.path / "conf" / "base" / "parameters_fluxgen.yml").read_text())["fluxgen"]
    write_hub_snapshot(
        REPO / "data" / "01_raw" / "tiny" / "nsfw_classifier", root / "hf_cache", fluxgen["content_filter"]["model"]
    )
    script = [sys.executable, str(REPO / "scripts" / "make_iqa_fixture_weights.py"), "--out", str(root / "torch_home")]
    subprocess.run(
        script + (["--with-vit-l14"] if "vitL14" in project.clip else []),
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    # the two departures from conf/base (module docstring)
    params_file = project.path / "conf" / "base" / "parameters_fluxgen.yml"
    params = yaml.safe_load(params_file.read_text())
    params["iqa"]["trust_weight_files"] = True
    params["iqa"]["metrics"] = [
        project.clip if m.startswith("clipiqa+") else MANIQA if m == "maniqa-pipal" else m
        for m in params["iqa"]["metrics"]
    ]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    evaluate_file = project.path / "conf" / "base" / "parameters_evaluate.yml"
    evaluate = yaml.safe_load(evaluate_file.read_text())
    evaluate["evaluate"]["metrics"]["no_reference"].update(CLIPIQA=project.clip, MANIQA=MANIQA)
    evaluate_file.write_text(yaml.safe_dump(evaluate, sort_keys=False))
    # Real-ESRGAN x4plus where conf/base expects it (evaluate.methods lists realesrgan): the published
    # architecture and container ({"params_ema": state_dict}), random weights
    import torch

    from fluxir.compat import import_basicsr

    import_basicsr()
    from basicsr.archs.rrdbnet_arch import RRDBNet

    esrgan = yaml.safe_load((project.path / "conf" / "base" / "parameters_baselines.yml").read_text())["baselines"][
        "realesrgan"
    ]
    net = RRDBNet(
        num_in_ch=3,
        num_out_ch=3,
        scale=esrgan["net_scale"],
        num_feat=esrgan["num_feat"],
        num_block=esrgan["num_block"],
        num_grow_ch=esrgan["num_grow_ch"],
    )
    (project.path / esrgan["weights"]).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": net.state_dict()}, project.path / esrgan["weights"])
    # benchmarks where conf/base expects them (two of four: the others are skipped, as for a user), photos
    raw = project.path / "data" / "01_raw" / "benchmarks"
    (raw / "DIV2K_valid_HR").mkdir(parents=True)
    _photo((96, 80), 0).save(raw / "DIV2K_valid_HR" / "0801.png")
    for folder in ("RealSR/HR", "RealSR/LR"):
        (raw / folder).mkdir(parents=True)
    hq = _photo((64, 64), 10)  # one pair: each output costs MANIQA's ViT-B/8 about 3 s of a CPU core
    hq.save(raw / "RealSR" / "HR" / "Canon_000_HR.png")
    hq.resize((16, 16), Image.BICUBIC).save(raw / "RealSR" / "LR" / "Canon_000_LR4.png")
    for folder in ("my_photos", "photos"):
        (project.path / folder).mkdir()
        _photo((24, 20), 20).save(project.path / folder / "street.png")
    return project


def test_full_scale_fluxgen_commands(base_project):
    """docs/full_scale.md section 4 with N = 2: generate on 2 processes, the manifest, score on 2 processes, select,
    then degradation on M = 2 "machines" sharing data/, and the whole fluxgen run that finds every stage done."""
    p = base_project
    two = ("--num_processes N", "--num_processes 2")
    p.run(
        "accelerate launch --multi_gpu --num_processes N -m fluxir.fluxgen generate --params fluxgen.num_images=350000",
        two,
    )
    p.run("kedro run --pipeline=fluxgen --to-nodes=fluxgen.generate_images --params=fluxgen.num_images=350000")
    p.run("accelerate launch --multi_gpu --num_processes N -m fluxir.fluxgen score", two)
    parts = sorted((p.path / "data" / "04_feature" / "iqa_parts").rglob("part-*.parquet"))
    assert {int(part.name.split("-")[1]) for part in parts} == {0, 1}, "both processes wrote scores"
    p.run("kedro run --pipeline=fluxgen --to-nodes=fluxgen.select_by_iqa --params=fluxgen.num_images=350000")
    shutil.rmtree(p.path / "data" / "05_model_input" / "pairs", ignore_errors=True)  # base_pairs may have run first
    for k in (0, 1):
        p.run(
            "python -m fluxir.fluxgen pairs --params degrade.rank=k,degrade.world_size=M",
            ("rank=k", f"rank={k}"),
            ("world_size=M", "world_size=2"),
        )
    p.run("kedro run --pipeline=fluxgen --params=fluxgen.num_images=350000")

    images = sorted((p.path / "data" / "02_intermediate" / "fluxgen_images").rglob("*.png"))
    assert len(images) == NUM_IMAGES and all(Image.open(f).size == (64, 48) for f in images)
    scores = pd.read_parquet(p.latest("data/04_feature/iqa_scores.parquet"))
    for name in (p.clip, "maniqa-pipal", "musiq"):
        assert scores[name].notna().all(), name
    versions = json.loads(scores["iqa_versions"].iloc[0])["metrics"]
    assert versions["maniqa-pipal"]["pretrained"] and versions["maniqa-pipal"]["weights"] == [
        "MANIQA_PIPAL-ae6d356b.pth"
    ]
    assert versions["musiq"]["weights"] == ["musiq_koniq_ckpt-e95806b9.pth"]
    selection = pd.read_parquet(p.latest("data/04_feature/iqa_selection.parquet"))
    pairs = pd.read_parquet(p.latest("data/05_model_input/pairs_manifest.parquet"))
    assert 0 < len(pairs) == int(selection["keep"].sum())
    assert sorted(pairs["image_id"]) == sorted(selection.loc[selection["keep"], "image_id"])
    metrics = p.mlflow_runs("fluxir-fluxgen")[-1].data.metrics
    key = "select.threshold." + p.clip.replace("+", "plus")
    assert metrics[key] == pytest.approx(float(selection[f"{p.clip}_threshold"].iloc[0]))
    assert metrics["select.n_scored"] == NUM_IMAGES
    # Rerunning with everything done: the env's defaults, no --params (the README's plain fluxgen step).
    p.run("kedro run --pipeline=fluxgen")
    assert len(sorted((p.path / "data" / "02_intermediate" / "fluxgen_images").rglob("*.png"))) == NUM_IMAGES


@pytest.fixture(scope="module")
def base_pairs(base_project) -> BaseProject:
    """The project with FluxGen's pairs: the README's plain fluxgen step, unless a test made them already (the
    full-scale test ends with that command on a finished run)."""
    if not (base_project.path / "data/05_model_input/pairs_manifest.parquet").is_dir():
        base_project.run("kedro run --pipeline=fluxgen")
    return base_project


@pytest.fixture(scope="module")
def base_adapter(base_pairs) -> BaseProject:
    """The project with a trained adapter as well: the README's plain train step, unless a test trained one (the
    final `kedro run` of test_evaluate_restore_and_check_commands finds a finished train run done)."""
    if not (base_pairs.path / "data/06_models/fluxir_adapter").is_dir():
        base_pairs.run("kedro run --pipeline=train")
    return base_pairs


def test_training_commands(base_pairs):
    """README / docs/training.md: DDP on 2 processes, then `kedro run --pipeline=train` (global batch 2 from
    the run file: 1 per process x 2 processes, then 1 x 1 x 2 accumulation)."""
    p = base_pairs
    p.run(
        "accelerate launch --multi_gpu --num_processes 4 -m fluxir.training",
        ("--num_processes 4", "--num_processes 2"),
    )
    runs = p.mlflow_runs("fluxir")
    assert runs[-1].data.params["train_run.num_processes"] == "2" and runs[-1].data.params["train.model"] == FLUX
    p.run(
        'kedro run --pipeline=train --params="train.max_steps=500,train.pixel_loss_crop=512"',
        ("train.max_steps=500", "train.max_steps=2"),
        ("train.pixel_loss_crop=512", "train.pixel_loss_crop=32"),
    )
    history = pd.read_parquet(p.latest("data/07_model_output/train_history.parquet"))
    assert list(history.step) == [1, 2]
    p.run("kedro run --pipeline=train")  # the same settings but the crop: another run key, trained to step 2


def test_evaluate_restore_and_check_commands(base_adapter):
    p = base_adapter
    p.run("kedro run --pipeline=evaluate")
    per_image = pd.read_parquet(p.latest("data/08_reporting/evaluation_per_image.parquet"))
    assert set(per_image["dataset"]) == {"DIV2K-Val", "RealSR"}  # DrealSR and RealLQ250 are not there: skipped
    fluxir = per_image[per_image["method"] == "fluxir"]
    assert set(fluxir["label"]) == {"PSNR", "SSIM", "LPIPS", "CLIPIQA", "MANIQA", "MUSIQ"}
    # the paper's metrics are themselves; CLIP-IQA+ on RN50 (the default suite) is reported as a stand-in
    assert (fluxir["stand_in"] == (fluxir["label"].eq("CLIPIQA") & ("rn50" in p.clip))).all()
    assert fluxir["value"].notna().all()
    report = p.latest("data/08_reporting/evaluation_report.md").read_text()
    assert f"CLIPIQA={p.clip};" in report and "MANIQA=maniqa-pipal (test_sample=1)" in report  # options listed
    eval_metrics = p.mlflow_runs("fluxir-evaluate")[-1].data.metrics
    assert "eval.RealSR.fluxir.PSNR.y_crop4" in eval_metrics

    p.run('kedro run --pipeline=restore --params="restore.input_dir=my_photos,restore.output_dir=restored"')
    assert Image.open(p.path / "restored" / "street.png").size == (96, 80)
    p.run(
        'kedro run --pipeline=restore --params="restore.input_dir=photos,restore.tile_size=512,restore.vae_tile_size=512"',  # noqa: E501
        ("restore.tile_size=512", "restore.tile_size=64"),
        ("restore.vae_tile_size=512", "restore.vae_tile_size=64"),
    )
    p.run('kedro run -c conf/run_small.yml --pipeline=restore --params="restore.input_dir=my_photos"')
    summary = json.loads(p.latest("data/08_reporting/restore_summary.json").read_text())
    assert summary["restored"] + summary["skipped_existing"] >= 1 and summary["failed"] == 0

    check = p.run("python -m fluxir.preflight", check=False)
    fails = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
    assert check.returncode == 1 and len(fails) == 2, check.stdout + check.stderr[-3000:]
    assert all(f.split()[1:3] in (["benchmark", "drealsr"], ["benchmark", "reallq250"]) for f in fails), fails
    lines = {tuple(line.split()[:3]): line for line in check.stdout.splitlines()}
    assert lines[("OK", "adapter", "fluxir_adapter")].endswith(f"fits {FLUX}"), check.stdout  # the cached snapshot
    assert ("OK", "iqa", p.clip) in lines, check.stdout
    transformer = next(line for line in check.stdout.splitlines() if "fluxgen.model: transformer" in line)
    assert transformer.startswith("OK") and "in 3 file(s)" in transformer, transformer  # the three shards

    p.run("accelerate launch --multi_gpu --num_processes 2 -m fluxir.fluxgen score -c conf/run_small.yml")
    p.run("kedro run -c conf/run_small.yml")  # everything done: fluxgen, train, evaluate find it so


def test_tiny_commands(tmp_path, no_network):
    """The tiny environment's documented fluxgen commands; lists and repeated --params reach the run. Kedro's own
    command line parses them in this process (``kedro_run``): the subject is the parsing, not a process."""
    project = BaseProject(tmp_path, "")

    def run(command: str, *subs: tuple[str, str]) -> None:
        text = documented(command)
        for old, new in subs:
            text = text.replace(old, new)
        argv = shlex.split(text)
        assert argv[0] == "kedro", text
        kedro_run(project.path, *argv[1:])

    run('kedro run --env=tiny --pipeline=fluxgen --params="fluxgen.num_images=50"', ("num_images=50", "num_images=6"))
    run("kedro run --env=tiny --pipeline=fluxgen")
    run(
        'kedro run --env=tiny --pipeline=fluxgen --params "degrade.config.crop_sizes=[[64,48],[48,48]]" '
        '--params "iqa.metrics=[entropy, piqe]"'
    )
    params = project.mlflow_runs("fluxir-fluxgen")[-1].data.params
    assert (
        params["degrade.config.crop_sizes"] == "[[64, 48], [48, 48]]" and params["iqa.metrics"] == "['entropy', 'piqe']"
    )
    pairs = pd.read_parquet(project.latest("data/05_model_input/pairs_manifest.parquet"))
    sizes = {Image.open(path if Path(path).is_absolute() else project.path / path).size for path in pairs["hq_path"]}
    assert len(pairs) and sizes <= {(64, 48), (48, 48)}, sizes
