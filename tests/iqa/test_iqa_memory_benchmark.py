"""benchmarks/iqa_memory.py on a weight-free metric and small images: the JSON it documents, and its RSS limit.

The real measurement (the paper's metrics at 1024x768, docs/full_scale.md) takes many minutes and GBs; this
runs the same script end to end in seconds so a changed import or API cannot break it unseen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

# The benchmark measures each setting in a fresh process of its own (peak RSS): processes are its method.
pytestmark = pytest.mark.e2e

SCRIPT = REPO / "benchmarks" / "iqa_memory.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
ROW_FIELDS = {"peak_rss_mib", "import_rss_mib", "weights_mib", "weights_mib_per_metric", "activations_mib"}


def _run(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--metrics", "entropy", "--size", "48x64", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_benchmark_prints_every_documented_field_per_metric_and_batch():
    result = _run("--batch-sizes", "1,2")
    assert result["size"] == "48x64" and result["threads"] == 1
    assert "peak RSS" in result["measured"] and "gpu_estimate_mib" in result["computed"]
    for series in (result["per_metric"]["entropy"], result["all_metrics"]):
        assert set(series) == {"batch_1", "batch_2", "per_image_mib", "batch_8_estimate_mib"}
        for batch in ("batch_1", "batch_2"):
            row = series[batch]
            assert ROW_FIELDS | {"gpu_estimate_mib", "ratio_to_batch_1"} <= set(row)
            assert row["peak_rss_mib"] >= row["import_rss_mib"] > 100  # torch and pyiqa are imported
            assert row["weights_mib"] == 0 and row["weights_mib_per_metric"] == {"entropy": 0.0}  # weight-free
            assert abs(row["gpu_estimate_mib"] - (row["weights_mib"] + row["activations_mib"])) <= 1
        assert series["batch_1"]["ratio_to_batch_1"] == 1.0
        assert series["batch_8_estimate_mib"] >= series["batch_2"]["peak_rss_mib"] - 1


def test_a_measurement_above_the_rss_limit_is_stopped_and_larger_batches_skipped():
    result = _run("--batch-sizes", "1,2", "--max-rss-mib", "50", "--no-combined")
    series = result["per_metric"]["entropy"]
    assert series["batch_1"]["stopped_above_mib"] == 50 and series["batch_1"]["rss_mib_at_stop"] > 50
    assert "skipped" in series["batch_2"]
    assert "per_image_mib" not in series and result["all_metrics"] is None
