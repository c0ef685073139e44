"""Two runs on one project: the MLflow store is created once, a second run of a stage waits for the first
(naming its holder) and then finds the work done; never a duplicated or corrupt result."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from fluxir.io.store import exclusive_lock

# Two runs at once, or a holder killed: the processes are the subject.
pytestmark = pytest.mark.e2e

WAITER = textwrap.dedent("""
    import logging, sys, time
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from fluxir.io.store import exclusive_lock
    with exclusive_lock(sys.argv[1], "the test output"):
        print("got it", flush=True)
""")


def test_a_second_writer_waits_for_the_holder_and_names_it(tmp_path):
    lock = tmp_path / "out" / ".lock"
    with exclusive_lock(lock, "the test output"):
        waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(lock)], stdout=subprocess.PIPE, text=True)
        said = waiter.stdout.readline()  # the event: the waiter found the lock held and names the holder
        assert f"the test output is being written by pid {os.getpid()}" in said
        assert waiter.poll() is None, "the second writer must wait while the first holds the lock"
    out, _ = waiter.communicate(timeout=600)  # a safety net: it returns once the waiter got the lock
    assert out.strip().endswith("got it") and "got it" not in said


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom fluxir.io.store import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(600)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with exclusive_lock(lock, "x"):  # at once: the kernel dropped the dead holder's lock
        assert "pid" in lock.read_text()


def test_two_fluxgen_runs_at_once_on_a_new_project(kedro_project):
    params = "--params=fluxgen.num_images=6,fluxgen.steps=1,select.percentile=20"
    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    runs = [
        subprocess.Popen(
            [str(kedro), "run", "--env=tiny", "--pipeline=fluxgen", params],
            cwd=kedro_project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        logs = [run.communicate(timeout=900)[0] for run in runs]
    finally:
        for run in runs:
            run.kill()
    for run, log in zip(runs, logs):
        assert run.returncode == 0, log[-5000:]
    data = kedro_project / "data"
    images = sorted(p.name for p in (data / "02_intermediate/fluxgen_images").rglob("*.png"))
    assert images == [f"{i:08d}.png" for i in range(6)]  # each image once, in one store
    assert not [p for p in data.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    for stage in ("04_feature/iqa_parts", "04_feature/nsfw_parts"):  # IQA scores and the content filter's
        parts = pd.concat([pd.read_parquet(p) for p in (data / stage).rglob("part-*.parquet")])
        assert len(parts) == parts["sha256"].nunique() == 6, stage  # scored once, no part overwritten by the other
    records = [p.name for p in (data / "05_model_input/pairs").rglob("*.json") if not p.name.startswith(".")]
    assert records and len(records) == len(set(records))  # one pair setting, each pair once
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs_logged = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.status for r in runs_logged) == ["FINISHED", "FINISHED"]
