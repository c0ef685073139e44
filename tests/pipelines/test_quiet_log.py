"""A quiet log: ``kedro run --env tiny`` prints no third-party notice a user cannot act on, no catalog chatter, no
carriage-return progress bars and no path wrapped over lines; the last line says where the report is.

One real ``kedro run --env tiny`` in a project copy, output captured through a pipe as CI, Slurm and
``kedro run > log.txt`` capture it (no terminal, no COLUMNS: conftest.kedro_run sets COLUMNS=200, which would
hide Rich's 80-column wrapping, so the command is started here).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

# its module-scoped runs are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_quiet_log")

FORBIDDEN = {
    "mlflow's notice at kedro-mlflow's import": "Add type hints to the `predict` method",
    "Kedro's validator on TYPE_CHECKING-only hints": "Could not extract type hints",
    "Kedro's validator on int | str": "Union type hint",
    "diffusers' ControlNet deprecation": "FluxPosEmbed",
    "the stale baselines line": "only FluxIR and bicubic are scored",
    "Kedro's catalog INFO lines (load)": "Loading data from",
    "Kedro's catalog INFO lines (save)": "Saving data to",
    "Kedro's default Rich config": "rich_logging.yml",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    from conftest import make_project_copy

    project = make_project_copy(tmp_path_factory.mktemp("quiet_log") / "project")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FLUXIR_PROGRESS")}
    kedro = Path(sys.executable).with_name("kedro")
    proc = subprocess.run(
        [str(kedro), "run", "--env", "tiny"],
        cwd=project,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"kedro run --env tiny failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return {"project": project, "out": proc.stdout, "err": proc.stderr}


@pytest.mark.e2e  # its subject is what the `kedro` command prints
def test_no_notice_a_user_cannot_act_on(tiny_run):
    text = tiny_run["out"] + tiny_run["err"]
    found = {what: needle for what, needle in FORBIDDEN.items() if needle in text}
    assert not found, f"{found}\n--- log ---\n{text[-6000:]}"


@pytest.mark.e2e  # its subject is what the `kedro` command prints
def test_no_carriage_return_progress_bars(tiny_run):
    assert "\r" not in tiny_run["out"] + tiny_run["err"]


@pytest.mark.e2e  # its subject is what the `kedro` command prints
def test_every_log_line_is_one_record(tiny_run):
    """A wrapped record continues on lines without the record's prefix (time, level, logger)."""
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\S+: ")
    lines = [line for line in tiny_run["out"].splitlines() if line.strip()]
    assert lines
    strays = [line for line in lines if not record.match(line)]
    assert not strays, strays[:10]


@pytest.mark.e2e  # its subject is what the `kedro` command prints
def test_the_report_path_is_on_one_line_and_exists(tiny_run):
    lines = [line for line in tiny_run["out"].splitlines() if "Evaluation report: " in line]
    assert len(lines) == 1, lines
    uri = lines[0].split("Evaluation report: ", 1)[1].split(" (versioned", 1)[0]
    path = Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
    path = path if path.is_absolute() else tiny_run["project"] / path
    assert path.is_file() and path.name == "evaluation_report.html", uri


@pytest.mark.e2e  # its subject is what the `kedro` command records: the command line as typed
def test_the_run_records_the_command_that_reruns_it(tiny_run):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_run['project'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fluxir")
    (run,) = client.search_runs([experiment.experiment_id])
    assert shlex.split(run.data.tags["fluxir.command"]) == ["kedro", "run", "--env=tiny"]
    assert run.data.tags["kedro_command"] == run.data.tags["fluxir.command"]
    assert run.info.status == "FINISHED"
