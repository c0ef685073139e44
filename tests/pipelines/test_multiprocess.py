"""`<stage>.num_processes=2`: the node launches the stage's accelerate job (2 gloo processes on CPU) and the
results equal a one-process run; the child dies with the parent; one MLflow run per `kedro run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fluxir.parameters.config import load_params
from fluxir.runtime.launch import GRACE_SECONDS

from conftest import REPO, kedro_process, kedro_run, make_project_copy
from support import kill_when, make_mixed_folder, make_pairs, save_identity_adapter

# Every test here starts `kedro run` or a launcher as a process: the process boundary is the subject. The one-process
# references they compare with run in this process (kedro_run): their subject is the result, not the process.
pytestmark = pytest.mark.e2e

FLUXGEN = "fluxgen.num_images=4,fluxgen.steps=1,iqa.batch_size=2"  # two score chunks: one per rank
RESTORED = ("fluxir", "realesrgan", "flux_controlnet")  # evaluate's restorers (bicubic is not sharded)


def _latest(project: Path, relative: str) -> Path:
    return max((project / relative).glob("*/*"))


def _files(root: Path, pattern: str = "*.png") -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern))}


def _runs(project: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = client.search_experiments()
    return client, experiments, client.search_runs([e.experiment_id for e in experiments])


def _children_of(project: Path) -> list[int]:
    """Pids of processes whose command line names ``project`` (the child job passes it as --project)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"--project {project}" in cmdline:
                pids.append(int(entry.name))
    return pids


def _ranks_reported(log: str) -> set[int]:
    """Ranks whose JSON line (``{"rank": r, ...}``, the child job's last line per process) reached the log."""
    import re

    return {int(rank) for rank in re.findall(r'"rank": (\d+)', log)}


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


# ----------------------------------------------------------------------------------------------------
# FluxGen: generate and score on 2 processes == 1 process


@pytest.fixture(scope="module")
def fluxgen_one_and_two(tmp_path_factory):
    root = tmp_path_factory.mktemp("fluxgen_np")
    one, two = make_project_copy(root / "one"), make_project_copy(root / "two")
    kedro_run(one, "run", "--env=tiny", "--pipeline=fluxgen", f"--params={FLUXGEN},fluxgen.num_processes=1")
    run = kedro_process(two, "run", "--env=tiny", "--pipeline=fluxgen", f"--params={FLUXGEN},fluxgen.num_processes=2")
    return one, two, run


@pytest.mark.xdist_group("multiprocess_fluxgen")  # fluxgen_one_and_two is made once
def test_fluxgen_on_two_processes_gives_the_same_images_scores_selection_and_pairs(fluxgen_one_and_two):
    one, two, _ = fluxgen_one_and_two
    images = "data/02_intermediate/fluxgen_images"
    assert _files(one / images) == _files(two / images) and len(_files(one / images)) == 4
    for table in (
        "data/02_intermediate/generated_images.parquet",
        "data/04_feature/iqa_selection.parquet",
        "data/05_model_input/pairs_manifest.parquet",
    ):
        pd.testing.assert_frame_equal(pd.read_parquet(_latest(one, table)), pd.read_parquet(_latest(two, table)))
    scores = [pd.read_parquet(_latest(p, "data/04_feature/iqa_scores.parquet")) for p in (one, two)]
    pd.testing.assert_frame_equal(*scores, rtol=1e-6)
    assert _files(one / "data/05_model_input/pairs") == _files(two / "data/05_model_input/pairs")
    # two ranks really scored: each wrote its own score part
    parts = sorted(p.name for p in (two / "data/04_feature/iqa_parts").rglob("part-*.parquet"))
    assert [p[:10] for p in parts] == ["part-00000", "part-00001"]


@pytest.mark.xdist_group("multiprocess_fluxgen")  # fluxgen_one_and_two is made once
def test_fluxgen_on_two_processes_is_one_mlflow_run_of_kind_model_development(fluxgen_one_and_two):
    _, two, run = fluxgen_one_and_two
    assert "generate on 2 processes" in run.stdout + run.stderr
    client, _, runs = _runs(two)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    experiment = client.get_experiment(runs[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert runs[0].data.params["fluxgen.num_processes"] == "2"


# ----------------------------------------------------------------------------------------------------
# Train: DDP over 2 gloo processes from the node == one process with 2 accumulation steps


def test_train_on_two_processes_gives_the_same_adapter_and_logs_into_the_kedro_run(kedro_project, tmp_path):
    from kedro.io.core import generate_timestamp

    from fluxir.models.adapter import load_adapter
    from fluxir.training.loop import train

    from support import tiny_folders, tiny_params

    project = kedro_project
    pairs = make_pairs(project / "data" / "pairs", n=6)
    manifest = project / "data/05_model_input/pairs_manifest.parquet" / generate_timestamp()
    manifest.mkdir(parents=True)
    pairs.to_parquet(manifest / "pairs_manifest.parquet")
    steps = "train.max_steps=4,train.global_batch=2,train.validate_every=4,train.log_every=2,train.checkpoint_every=2"
    run = kedro_process(project, "run", "--env=tiny", "--pipeline=train", f"--params={steps},train.num_processes=2")
    assert "latents on 2 processes:" in run.stdout + run.stderr  # precompute_latents ran as a child job too
    latents = json.loads(_latest(project, "data/08_reporting/latent_cache_summary.json").read_text())
    assert (latents["pairs"], latents["encoded"], latents["cached"]) == (6, 6, 0)

    adapter = load_adapter(_latest(project, "data/06_models/fluxir_adapter"))
    single = train(tiny_params(tmp_path, *steps.split(",")), pairs, folders=tiny_folders(tmp_path), progress=False)
    diff = max(
        (a - b).abs().max().item() for a, b in zip(adapter.state_dict().values(), single.adapter.state_dict().values())
    )
    assert diff < 1e-4  # the DDP tests' tolerance: gloo's all-reduce sums in another order
    history = pd.read_parquet(_latest(project, "data/07_model_output/train_history.parquet"))
    assert list(history["step"]) == [1, 2, 3, 4]

    client, _, runs = _runs(project)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4]  # logged by rank 0 of the child
    assert runs[0].data.params["train_run.num_processes"] == "2"
    assert [a.path for a in client.list_artifacts(run_id, "models/fluxir_adapter")]  # the node's adapter, as ever


# ----------------------------------------------------------------------------------------------------
# Evaluate and restore: images sharded over 2 processes, same outputs and numbers


def test_evaluate_on_two_processes_gives_the_same_outputs_and_report_numbers(kedro_project):
    project = kedro_project
    save_identity_adapter(project)
    params = "evaluate.restore.steps=2,evaluate.grid_images=1"
    kedro_run(project, "run", "--env=tiny", "--pipeline=evaluate", f"--params={params},evaluate.num_processes=1")
    outputs = project / "data/07_model_output/evaluate_demo"
    one = {method: _files(outputs / method) for method in RESTORED}
    one_table = pd.read_parquet(_latest(project, "data/08_reporting/evaluation_per_image.parquet"))
    for method in RESTORED:  # the second run must restore everything again
        (outputs / method).rename(outputs / f"{method}_one")
    run = kedro_process(
        project, "run", "--env=tiny", "--pipeline=evaluate", f"--params={params},evaluate.num_processes=2"
    )
    assert {method: _files(outputs / method) for method in RESTORED} == one
    images = len(one["fluxir"])
    assert images >= 4 and all(len(files) == images for files in one.values())
    two_table = pd.read_parquet(_latest(project, "data/08_reporting/evaluation_per_image.parquet"))
    pd.testing.assert_frame_equal(one_table, two_table, rtol=1e-6)
    log = run.stdout + run.stderr
    assert log.count("evaluate on 2 processes:") == 2, "FluxIR, then the public restorers, each on 2 processes"
    assert _ranks_reported(log) == {0, 1}
    report = _latest(project, "data/08_reporting/evaluation_report.md").read_text()
    assert report.count(f"{images} now, 0 reused") == 3  # the children's images count as restored by this run


def test_restore_on_two_processes_gives_the_same_files_failures_and_summary(kedro_project):
    project = kedro_project
    make_mixed_folder(project / "photos")
    save_identity_adapter(project)
    common = "restore.input_dir=photos,restore.progress=false,restore.steps=2"
    kedro_run(project, "run", "--env=tiny", "--pipeline=restore", f"--params={common},restore.output_dir=one")
    one_failures = pd.read_parquet(_latest(project, "data/08_reporting/restore_failures.parquet"))
    one_summary = json.loads(_latest(project, "data/08_reporting/restore_summary.json").read_text())
    run = kedro_process(
        project,
        "run",
        "--env=tiny",
        "--pipeline=restore",
        f"--params={common},restore.output_dir=two,restore.num_processes=2",
    )
    two_failures = pd.read_parquet(_latest(project, "data/08_reporting/restore_failures.parquet"))
    two_summary = json.loads(_latest(project, "data/08_reporting/restore_summary.json").read_text())
    assert _files(project / "one") == _files(project / "two") and len(_files(project / "one")) == 5
    pd.testing.assert_frame_equal(one_failures, two_failures)
    assert len(two_failures) == 3  # the corrupt, the empty and the text file, from both shares
    log = run.stdout + run.stderr
    assert "restore on 2 processes:" in log and _ranks_reported(log) == {0, 1}

    def counts(summary: dict) -> dict:
        images = [{k: v for k, v in image.items() if k not in ("output", "seconds")} for image in summary["images"]]
        kept = ("restored", "skipped_existing", "failed", "megapixels_out", "method", "config")
        return {**{key: summary[key] for key in kept}, "images": images}

    assert counts(two_summary) == counts(one_summary) and two_summary["restored"] == 5


# ----------------------------------------------------------------------------------------------------
# The child job ends with its `kedro run` (kill -9, SIGTERM) and with its node (Ctrl-C)

# 16 steps: long enough that the signal lands mid-run (at 4 steps all 64 could finish first)
INTERRUPTED = "fluxgen.num_images=64,fluxgen.steps=16,fluxgen.num_processes=2"


# Never finished before the signal, however late it lands (the kill -9 test reruns INTERRUPTED to the end).
UNFINISHABLE = INTERRUPTED.replace("fluxgen.num_images=64", "fluxgen.num_images=100000")


def _interrupt_generation(project: Path, sig: int, params: str = INTERRUPTED) -> int:
    """Start the 2-process generate node, send ``sig`` to `kedro run` once images appear, assert that no child
    job process is left; returns the images made."""
    store = project / "data/02_intermediate/fluxgen_images"
    kedro = Path(sys.executable).with_name("kedro")
    proc = subprocess.Popen(
        [
            str(kedro),
            "run",
            "--env=tiny",
            "--pipeline=fluxgen",
            "--nodes=fluxgen.generate_images",
            f"--params={params}",
        ],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        # the child job is generating; the guard's clean-up may take its SIGTERM grace before a SIGKILL
        kill_when(proc, lambda: any(store.rglob("*.png")), sig=sig)
        deadline = time.time() + 300  # a safety net: the loop ends as soon as no child is left
        while _children_of(project) and time.time() < deadline:
            time.sleep(0.2)
        assert _children_of(project) == [], "the child job outlived its kedro run"
    finally:
        for pid in _children_of(project):  # never leave one behind, even when the test fails
            os.kill(pid, 9)
    return len(list(store.rglob("*.png")))


def test_kill_9_of_the_parent_leaves_no_child_and_a_rerun_resumes(kedro_project, tmp_path):
    from fluxir.fluxgen.generate import GenerationConfig, generate_into_store
    from fluxir.io.store import ImageStore

    project = kedro_project
    made = _interrupt_generation(project, signal.SIGKILL)
    assert 0 < made < 64

    kedro_process(
        project, "run", "--env=tiny", "--pipeline=fluxgen", "--nodes=fluxgen.generate_images", f"--params={INTERRUPTED}"
    )
    cfg = GenerationConfig.from_params(load_params("tiny", [INTERRUPTED], project)["fluxgen"])
    generate_into_store(cfg, ImageStore(tmp_path / "fresh").sub(cfg.key()), progress=False)
    store = project / "data/02_intermediate/fluxgen_images"
    assert _files(store) == _files(tmp_path / "fresh") and len(_files(store)) == 64


def test_sigterm_of_the_parent_leaves_no_child(kedro_project):
    assert 0 < _interrupt_generation(kedro_project, signal.SIGTERM, UNFINISHABLE) < 100000


RANK_WRITING_ITS_PID = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"


def test_ctrl_c_in_the_node_ends_the_child_job_and_reaches_kedro(tmp_path):
    """Ctrl-C lands in the node while it streams the child job's output: the job and all it started are ended
    (the guard's clean-up) and KeyboardInterrupt goes on to Kedro. Kedro's own teardown after that is not
    timed here (on a loaded machine it has taken over 50 s; the job is gone by then)."""
    import threading

    from fluxir.runtime.launch import run_guarded

    pid_file = tmp_path / "rank.pid"

    def ctrl_c_once_running() -> None:
        deadline = time.time() + 300  # a safety net: the loop ends once the rank wrote its pid
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=ctrl_c_once_running, daemon=True)
    sender.start()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    started = time.time()
    # Python's own Ctrl-C handler, as in `kedro run` (a web server an earlier test started here may have replaced it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_guarded([sys.executable, "-c", RANK_WRITING_ITS_PID, str(pid_file)], tmp_path, env)
    finally:
        signal.signal(signal.SIGINT, previous)
    sender.join()
    rank = int(pid_file.read_text())
    try:
        assert not _running(rank), "the child job outlived the interrupted node"
        assert time.time() - started < 60 + 2 * GRACE_SECONDS  # ended by the clean-up, not by the job's sleep
    finally:
        if _running(rank):
            os.kill(rank, signal.SIGKILL)


LAUNCHER_LEAVING_A_RANK = """
import os, subprocess, sys, time
rank = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(600)"
proc = subprocess.Popen([sys.executable, "-c", rank], start_new_session=True, stdout=subprocess.PIPE)
proc.stdout.readline()  # its SIGTERM handler is set
open(sys.argv[1], "w").write(str(proc.pid))
sys.exit(3)
"""


def test_the_guard_ends_a_rank_in_its_own_session_that_ignores_sigterm(tmp_path):
    """As torchrun starts ranks: outside the guard's process group. The launcher ends and leaves its rank behind;
    the guard (a subreaper) SIGKILLs it after the grace and passes the launcher's exit status on."""
    from fluxir.runtime.launch import GRACE_SECONDS

    pid_file = tmp_path / "rank.pid"
    guard = [sys.executable, "-m", "fluxir.runtime", "--parent", str(os.getpid()), "--"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [*guard, sys.executable, "-c", LAUNCHER_LEAVING_A_RANK, str(pid_file)],
        env=env,
        timeout=GRACE_SECONDS + 60,
        start_new_session=True,  # the guard leads its own process group, as run_guarded starts it
    )
    rank = int(pid_file.read_text())
    try:
        deadline = time.time() + 120  # a safety net: the SIGKILLed rank is reaped by init once the guard is gone
        while _running(rank) and time.time() < deadline:
            time.sleep(0.05)
        assert not _running(rank), "the rank outlived its guard"
        assert done.returncode == 3
    finally:
        if _running(rank):
            os.kill(rank, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------
# scripts/slurm on "2 nodes x 1 process": SLURM's variables set by hand, srun replaced by a local fan-out

LOCAL_SRUN = """#!/bin/bash
# srun --nodes N --ntasks-per-node 1 [--opt=value] cmd...: N local copies of cmd, task i with SLURM_NODEID=i
n=1
while [[ "$1" == --* ]]; do
  case "$1" in
    --nodes) n=$2; shift 2 ;;
    --*=*) shift ;;
    *) shift 2 ;;
  esac
done
pids=()
for ((i = 0; i < n; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i SLURM_NTASKS=$n "$@" & pids+=($!); done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
"""


def _sbatch(project: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    from conftest import free_port

    srun = project / "local_srun.sh"
    srun.write_text(LOCAL_SRUN)
    srun.chmod(0o755)
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "src"),
        "SLURM_NNODES": "2",
        "SLURM_SUBMIT_DIR": str(project),
        "MAIN_PROCESS_IP": "127.0.0.1",
        "MAIN_PROCESS_PORT": str(free_port()),
        "GPUS_PER_NODE": "1",
        "FLUXIR_ENV": "tiny",
        "FLUXIR_PARAMS": FLUXGEN,
        "FLUXIR_PYTHON": sys.executable,
        "SRUN": str(srun),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(project / "scripts/slurm" / script)],
        check=False,
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{script}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def slurm_project(fluxgen_one_and_two, tmp_path_factory):
    """A project made by generate.sbatch, score.sbatch and a 2-task degrade.sbatch array on "2 nodes", then the
    bookkeeping `kedro run`; returns (project, the array tasks' shares)."""
    import shutil

    project = make_project_copy(tmp_path_factory.mktemp("slurm") / "project")
    shutil.copytree(REPO / "scripts/slurm", project / "scripts/slurm")
    _sbatch(project, "generate.sbatch")
    _sbatch(project, "score.sbatch")
    shares = [
        json.loads(
            _sbatch(
                project,
                "degrade.sbatch",
                SLURM_ARRAY_TASK_ID=str(k),
                SLURM_ARRAY_TASK_MIN="0",
                SLURM_ARRAY_TASK_COUNT="2",
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        for k in (0, 1)
    ]
    kedro_run(project, "run", "--env=tiny", "--pipeline=fluxgen", f"--params={FLUXGEN},fluxgen.num_processes=1")
    return project, shares


@pytest.mark.xdist_group("multiprocess_fluxgen")  # fluxgen_one_and_two is made once
def test_slurm_scripts_on_two_nodes_make_the_same_dataset(fluxgen_one_and_two, slurm_project):
    one, _, _ = fluxgen_one_and_two
    project, shares = slurm_project
    assert [(s["rank"], s["world_size"]) for s in shares] == [(0, 2), (1, 2)]
    kept = len(pd.read_parquet(_latest(one, "data/05_model_input/pairs_manifest.parquet")))
    assert sum(s["made"] for s in shares) == kept, "the array tasks made every pair between them"

    parts = sorted(p.name[:10] for p in (project / "data/04_feature/iqa_parts").rglob("part-*.parquet"))
    assert parts == ["part-00000", "part-00001"], "both nodes scored"
    for folder in ("data/02_intermediate/fluxgen_images", "data/05_model_input/pairs"):
        assert _files(project / folder) == _files(one / folder)
    for table in ("data/04_feature/iqa_selection.parquet", "data/05_model_input/pairs_manifest.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(_latest(one, table)), pd.read_parquet(_latest(project, table)))


SLURM_TRAIN = (  # 2 pairs from 4 images: both train, none held out
    "train.max_steps=2,train.global_batch=2,train.num_validation_pairs=0,train.validate_every=2,train.log_every=1,"
    "train.checkpoint_every=2"
)
SLURM_EVALUATE = (  # 5 demo images (3 + 2 per node), short sampling
    "evaluate.restore.steps=2,evaluate.grid_images=1,evaluate.benchmarks.div2k_val.num_images=2,"
    "evaluate.benchmarks.realsr.num_images=1,evaluate.benchmarks.drealsr.num_images=1,"
    "evaluate.benchmarks.reallq250.num_images=1"
)


@pytest.mark.xdist_group("multiprocess_fluxgen")  # fluxgen_one_and_two is made once
def test_slurm_train_and_evaluate_on_two_nodes_match_one_process(slurm_project, tmp_path, monkeypatch):
    import torch

    from fluxir.models.adapter import load_adapter
    from fluxir.training.loop import train

    from support import tiny_folders, tiny_params

    project, _ = slurm_project
    params = f"{FLUXGEN},{SLURM_TRAIN},{SLURM_EVALUATE}"
    _sbatch(project, "train.sbatch", FLUXIR_PARAMS=params)
    adapter = load_adapter(_latest(project, "data/06_models/fluxir_adapter"))
    pairs = pd.read_parquet(_latest(project, "data/05_model_input/pairs_manifest.parquet"))
    monkeypatch.chdir(project)  # the manifest's paths are the project's
    one_process = tiny_params(tmp_path, *SLURM_TRAIN.split(","))
    single = train(one_process, pairs, folders=tiny_folders(tmp_path), progress=False)
    diff = torch.cat(
        [(a - b).abs().flatten() for a, b in zip(adapter.state_dict().values(), single.adapter.state_dict().values())]
    )
    # the DDP tests' tolerance (1e-4: gloo's all-reduce sums in another order) on all but a few weights: with
    # only 2 pairs, AdamW turns that rounding into up to one step (the learning rate) where a gradient is ~0
    assert (diff > 1e-4).float().mean() < 1e-3 and diff.max() < one_process["learning_rate"]

    run = _sbatch(project, "evaluate.sbatch", FLUXIR_PARAMS=params)
    assert _ranks_reported(run.stdout + run.stderr) == {0, 1}, "both nodes restored"
    outputs = project / "data/07_model_output/evaluate_demo"
    two = {method: _files(outputs / method) for method in RESTORED}
    two_table = pd.read_parquet(_latest(project, "data/08_reporting/evaluation_per_image.parquet"))
    outputs.rename(outputs.with_name("evaluate_demo_slurm"))  # restored again by one process below
    kedro_run(project, "run", "--env=tiny", "--pipeline=evaluate", f"--params={params},evaluate.num_processes=1")
    assert {method: _files(outputs / method) for method in RESTORED} == two
    assert all(len(files) == 5 for files in two.values())
    one_table = pd.read_parquet(_latest(project, "data/08_reporting/evaluation_per_image.parquet"))
    pd.testing.assert_frame_equal(one_table, two_table, rtol=1e-6)
