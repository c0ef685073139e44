"""Every benchmark the README lists runs at its smallest size and prints one JSON object with its keys.

Smoke runs prove the scripts work (a benchmark nobody runs breaks silently); their numbers mean nothing at
these sizes. Benchmarks that measure in processes of their own (peak memory per setting, several ranks) run in
the e2e tier; the rest run in this process through their ``main(argv)``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys

import pytest

from conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def _in_process(name: str, *argv: str) -> dict:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(list(argv))
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _as_process(name: str, *argv: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # a safety net
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


IN_PROCESS = {
    "adapter_size": (["--json"], {"flux_params", "adapter_params", "se_params"}),
    "gpu_cost": (["--json", "--gpus", "8", "--gpu", "h100"], {"stages", "total_gpu_hours", "paper"}),
    "train_memory": (["--json", "--sizes", "512x768", "--batch-sizes", "1"], {"static_total_gib", "rows"}),
    "adapter_overhead": (
        ["--json", "--repeats", "1", "--heads", "2", "--head-dim", "16", "--image-tokens", "16", "--text-tokens", "8"],
        {"flux_tflops", "fluxir_tflops", "flops_ratio", "targets"},
    ),
    "degradation": (
        ["--json", "--size", "128", "128", "--n", "2", "--batch", "2", "--threads", "1"],
        {"ratio", "pairs_per_s", "reference_pairs_per_s"},
    ),
    "generation_overlap": (
        ["--json", "--images", "1", "--steps", "1", "--repeats", "1"],
        {"images_per_s", "ratio_pool"},
    ),
}

AS_PROCESS = {  # each measures in processes of its own
    "fluxgen_scale": (
        ["--json", "--num-images", "60", "--pair-repeats", "1"],
        {"degrade_speedup_2_workers", "score_speedup_2_procs"},
    ),
    "restore_memory": (["--json", "--width", "64", "--side", "32", "--steps", "2", "--modes", "none,int8"], {"modes"}),
    "restore_tiling": (  # one mode: a process per size and mode, and the modes differ only in the tile settings
        ["--json", "--base", "8", "--steps", "2", "--tile", "32", "--tile-overlap", "16", "--vae-tile", "32"]
        + ["--vae-tile-overlap", "8", "--modes", "tiled"],
        {"tiled"},
    ),
    "train_step": (
        ["--json", "--config", "tiny", "--variants", "no_pixel_loss", "pixel_loss", "--steps", "1", "--warmup", "0"],
        {"tiny"},
    ),
}


@pytest.mark.parametrize("name", sorted(IN_PROCESS))
def test_benchmark_prints_its_json(name):
    argv, keys = IN_PROCESS[name]
    result = _in_process(name, *argv)
    assert keys <= set(result), f"{name}: missing {sorted(keys - set(result))}"


@pytest.mark.e2e  # these benchmarks start a process per measurement (peak memory, ranks): processes are the method
@pytest.mark.parametrize("name", sorted(AS_PROCESS))
def test_benchmark_with_processes_prints_its_json(name):
    argv, keys = AS_PROCESS[name]
    result = _as_process(name, *argv)
    assert keys <= set(result), f"{name}: missing {sorted(keys - set(result))}"


def test_every_benchmark_the_readme_lists_is_smoke_tested():
    pages = (REPO / "README.md", BENCHMARKS / "README.md")  # the user's page and the benchmarks' own
    text = "".join(page.read_text() for page in pages if page.is_file())
    listed = {script.stem for script in BENCHMARKS.glob("*.py") if f"benchmarks/{script.name}" in text}
    tested = set(IN_PROCESS) | set(AS_PROCESS) | {"gpu_throughput", "iqa_memory"}  # tests/base, tests/iqa
    assert listed, "the README lists no benchmark: this test would prove nothing"
    assert listed <= tested, f"listed in the README but not smoke-tested: {sorted(listed - tested)}"
