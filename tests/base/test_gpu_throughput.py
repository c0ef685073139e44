"""benchmarks/gpu_throughput.py (for a lent GPU) in --tiny CPU mode: always valid JSON, stopped by its budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_throughput.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.e2e  # the script's own wall-clock budget and signals, imports included
def test_a_tiny_budget_is_respected_and_still_gives_json(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--budget-s", "4", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Stopped by its own clock (imports included), not by finishing: a whole tiny run measures restoration too.
    assert result["stopped"] and ("deadline" in result["stopped"] or "SIGALRM" in result["stopped"])
    assert "restoration" not in result["stages"]
    assert json.loads(out.read_text()) == result


@pytest.mark.e2e  # the script's own wall-clock budget and signals, imports included
def test_sigterm_mid_run_keeps_what_was_measured(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--tiny", "--budget-s", "300", "--json", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_file() and "compile_off" in out.read_text():  # generation measured, training under way
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stopped"] == "signal SIGTERM"
    assert result["stages"]["generation"]["compile_off"]["step_s"] > 0
    assert "step_s" not in result["stages"].get("restoration", {}).get("int8", {})
    assert json.loads(out.read_text()) == result


def _errors(node, path=""):
    """Every ``error`` entry anywhere in the result, with where it is."""
    if isinstance(node, dict):
        found = [f"{path}: {node['error']}"] if "error" in node else []
        return found + [e for key, value in node.items() for e in _errors(value, f"{path}.{key}")]
    return []


@pytest.mark.e2e  # the script's own wall-clock budget and signals, imports included
def test_a_whole_tiny_run_measures_every_stage_without_an_error():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--budget-s", "60", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["stopped"] is None, proc.stderr[-2000:]
    assert _errors(result) == []
    stages = result["stages"]
    assert set(stages) == {"generation", "training", "restoration"}
    assert stages["generation"]["compile_off"]["step_s"] > 0
    assert stages["generation"]["compile_off"]["image_s"] > stages["generation"]["compile_off"]["step_s"]
    assert stages["training"]["step_s"] > 0
    for mode in ("none", "int8"):
        assert stages["restoration"][mode]["step_s"] > 0
    assert stages["restoration"]["int8_over_none"] > 0
