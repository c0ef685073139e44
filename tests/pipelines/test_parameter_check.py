"""Every parameter a run reads is checked before its first node: all problems in one message, nothing written."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from fluxir.config import load_params
from fluxir.validation import ParameterError, check_params, groups_read, problems_for

from conftest import REPO, kedro_run


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_fluxgen_run_with_three_bad_parameters_stops_before_anything_is_written(kedro_project):
    before = _files(kedro_project / "data")
    proc = kedro_run(
        kedro_project,
        "run",
        "--env=tiny",
        "--pipeline=fluxgen",
        "--params=select.percentile=150,iqa.metrics=[no_such_metric],degrade.workers=0",
        check=False,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0
    assert "3 parameter problem(s) found before kedro run --pipeline=fluxgen started" in out
    assert "unknown IQA metric 'no_such_metric'" in out
    assert "select.percentile must be in (0, 100) exclusive, got 150" in out
    assert "degrade.workers must be 'auto' or a positive integer, got 0" in out
    assert _files(kedro_project / "data") == before  # no image, no dataset version
    db = kedro_project / "mlflow.db"
    if db.exists():  # kedro-mlflow opens its store when the session starts; no run may be left in it
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0


def test_all_problems_of_one_group_are_listed():
    params = load_params(
        "tiny",
        ["restore.tile_size=10", "restore.steps=0", "restore.color_fix=sepia", "restore.input_dir=nowhere"],
        REPO,
    )
    problems = problems_for(params, ["restore"])
    text = "\n".join(problems)
    assert "restore.tile_size must be a multiple of 16 >= 32 (or null: no tiling), got 10" in text
    assert "restore.steps must be a positive integer, got 0" in text
    assert "restore.color_fix must be one of" in text
    assert "restore.input_dir 'nowhere' does not exist" in text
    assert len(problems) == 4


def test_groups_follow_the_parameters_the_pipeline_reads():
    assert groups_read(["params:fluxgen", "generated_images", "params:select.percentile", "params:iqa.metrics"]) == [
        "fluxgen",
        "iqa",
        "select",
    ]
    assert groups_read(["params:evaluate.scale", "params:iqa.device", "params:degrade.seed"]) == ["degrade", "evaluate"]


def test_the_base_and_tiny_parameters_pass():
    for env in ("base", "tiny"):
        params = load_params(env, ["restore.input_dir=conf"], REPO)
        groups = [g for g in ("fluxgen", "select", "degrade", "train", "restore", "evaluate")]
        assert problems_for(params, groups) == [], env
    assert problems_for(load_params("tiny", [], REPO), ["iqa"]) == []


def test_entry_point_lists_every_problem_before_work(tmp_path):
    params = load_params("tiny", ["degrade.workers=0", "degrade.config.crop_position=left", "degrade.seed=x"], REPO)
    with pytest.raises(ParameterError) as caught:
        check_params(params, ["degrade"], "python -m fluxir.fluxgen.pairs")
    message = str(caught.value)
    assert "3 parameter problem(s)" in message
    for text in ("degrade.workers", "crop_position must be 'center' or 'random'", "degrade.seed must be an integer"):
        assert text in message
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fluxir.fluxgen.pairs",
            "--env=tiny",
            "--params=degrade.workers=0",
            "--selection",
            str(tmp_path / "absent.parquet"),
            "--store",
            str(tmp_path / "store"),
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "degrade.workers must be 'auto' or a positive integer, got 0" in proc.stderr
    assert "absent.parquet" not in proc.stderr  # stopped before reading any input
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("opted_out", [True, False])
def test_plain_kedro_commands_send_no_telemetry(kedro_project, no_network, monkeypatch, opted_out):
    """The project's .telemetry file opts out, so kedro without make (no KEDRO_DISABLE_TELEMETRY) stays offline."""
    for name in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    if not opted_out:
        (kedro_project / ".telemetry").unlink()
    kedro_run(kedro_project, "registry", "list")
    attempts = no_network.read_text()
    no_network.write_text("")  # the fixture fails on any attempt left in its log
    assert bool(attempts) != opted_out, attempts
