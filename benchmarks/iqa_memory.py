"""Memory of IQA scoring per metric and ``iqa.batch_size``: measured CPU peak RSS, computed GPU figures.

Each measurement runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own: the
interpreter with torch and pyiqa imported (``import_rss_mib``), then the metric(s) built from weight files of
the published layout (``scripts/make_iqa_fixture_weights.py --with-vit-l14``: the released architectures and
sizes, random weights, so the same memory as the real files), then one ``score_no_reference`` call on
``batch`` random images of the generated size (1024x768, the paper's), exactly as ``fluxir.fluxgen.score``
calls it with ``iqa.batch_size = batch``.

Per metric and batch: ``peak_rss_mib`` (measured), ``weights_mib`` (computed: the bytes of the built model's
parameters and buffers, backbones pyiqa keeps outside the module tree included; what a GPU holds for it),
``activations_mib`` = peak - import - weights (measured on the CPU; the same tensors are what the GPU
allocates, so ``gpu_estimate_mib`` = weights + activations is a computed estimate, not a CUDA
measurement), and ``ratio_to_batch_1`` (the reference measured in this run). ``all_metrics`` is the
three selection metrics in one process, as scoring runs them; ``per_image_mib`` is the slope between the
two largest batches measured, used to extrapolate ``batch_8_estimate_mib``.

    .venv/bin/python benchmarks/iqa_memory.py --json --batch-sizes 1,2,4     # ~10 min on 2 cores
    .venv/bin/python benchmarks/iqa_memory.py --json --metrics entropy --batch-sizes 1 --size 48x64  # seconds

A measurement whose resident memory passes ``--max-rss-mib`` (default 8000) is stopped, recorded as
``{"stopped_above_mib": ...}``, and the larger batches of its series are skipped, so the benchmark never
takes the machine's memory. Fixture weights are written only for metrics that need files (the ViT-L/14
backbone only when a ViT-L/14 metric is asked for).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fluxir import iqa  # specs and file names only: no torch or pyiqa until a probe runs

REPO = Path(__file__).resolve().parents[1]
METRICS = ["clipiqa+_vitL14_512", "maniqa-pipal", "musiq"]  # conf/base: iqa.metrics

PROBE = r"""
import json, resource, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
from fluxir import iqa
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
names, batch, (height, width) = sys.argv[1].split(","), int(sys.argv[2]), map(int, sys.argv[3].split("x"))
iqa.configure_weights(sys.argv[5], trust_files=True)
import pyiqa  # noqa: F401,E402  (after configure_weights: pyiqa fixes its weight folder at import)
imported = rss()
metrics = iqa.create_metrics(names, "cpu")
def weight_mib(net):
    # pyiqa keeps some backbones out of the module tree (CLIP-IQA: ``self.clip_model = [model]``): count those too
    modules = [net] + [v for m in net.modules() for x in vars(m).values() if isinstance(x, (list, tuple))
                       for v in x if isinstance(v, torch.nn.Module)]
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
weights = {n: weight_mib(m.net) for n, m in metrics.items()}
del metrics
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
scores = iqa.score_no_reference(images, names, batch_size=batch, progress=False)
assert len(scores) == batch and scores.notna().all().all()
print(json.dumps({"import_rss_mib": imported, "peak_rss_mib": rss(), "weights_mib": weights}))
"""


def _rss_mib(pid: int) -> float:
    """Current resident memory of a process (Linux ``/proc``); 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def measure(names: list[str], batch: int, size: str, threads: int, home: Path, max_rss_mib: float) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, ",".join(names), str(batch), size, str(threads), str(home)],
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        highest = 0.0
        while proc.poll() is None:  # the watchdog: stop a measurement before it takes the machine's memory
            highest = max(highest, _rss_mib(proc.pid))
            if highest > max_rss_mib:
                proc.kill()
                proc.wait()
                return {"stopped_above_mib": round(max_rss_mib), "rss_mib_at_stop": round(highest)}
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{names} batch {batch}: {stderr[-3000:]}")
    row = json.loads(stdout.strip().splitlines()[-1])
    weights = sum(row["weights_mib"].values())
    activations = row["peak_rss_mib"] - row["import_rss_mib"] - weights
    return {
        "peak_rss_mib": round(row["peak_rss_mib"]),
        "import_rss_mib": round(row["import_rss_mib"]),
        "weights_mib": round(weights),
        "weights_mib_per_metric": {n: round(v, 1) for n, v in row["weights_mib"].items()},
        "activations_mib": round(activations),
        "gpu_estimate_mib": round(weights + activations),
    }


def series(names: list[str], batches: list[int], size: str, threads: int, home: Path, max_rss_mib: float) -> dict:
    rows: dict[int, dict] = {}
    for b in batches:
        rows[b] = measure(names, b, size, threads, home, max_rss_mib)
        print(f"{'+'.join(names)} batch {b}: {json.dumps(rows[b])}", file=sys.stderr, flush=True)  # progress
        if "stopped_above_mib" in rows[b]:  # a larger batch only needs more
            rows.update({later: {"skipped": f"batch {b} passed --max-rss-mib"} for later in batches if later > b})
            break
    done = [b for b, row in rows.items() if "peak_rss_mib" in row]
    for b in done:
        rows[b]["ratio_to_batch_1"] = round(rows[b]["peak_rss_mib"] / rows[done[0]]["peak_rss_mib"], 3)
    out: dict = {f"batch_{b}": row for b, row in rows.items()}
    if len(done) >= 2:
        lo, hi = done[-2], done[-1]
        slope = (rows[hi]["peak_rss_mib"] - rows[lo]["peak_rss_mib"]) / (hi - lo)
        out["per_image_mib"] = round(slope)
        out["batch_8_estimate_mib"] = round(rows[hi]["peak_rss_mib"] + slope * (8 - hi))
    return out


def fixture_weights(metrics: list[str], home: Path) -> None:
    """Random-weight files of the published layout for the metrics that need files, none for weight-free ones."""
    files = [path for name in metrics for path in iqa.required_weight_files(name)]
    if not files:
        return
    vit = ["--with-vit-l14"] if any("ViT-L-14" in path.name for path in files) else []
    script = REPO / "scripts" / "make_iqa_fixture_weights.py"
    subprocess.run([sys.executable, str(script), "--out", str(home), *vit], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--batch-sizes", default="1,2")
    parser.add_argument("--size", default="768x1024", help="HEIGHTxWIDTH of the scored images (fluxgen's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", help="an existing fixture weight home (default: written to a temp folder)")
    parser.add_argument("--max-rss-mib", type=float, default=8000, help="stop a measurement above this RSS")
    parser.add_argument("--no-combined", action="store_true", help="skip the all-metrics-in-one-process series")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    metrics, batches = args.metrics.split(","), sorted(int(b) for b in args.batch_sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.weights or tmp)
        if not args.weights:
            fixture_weights(metrics, home)
        run = (batches, args.size, args.threads, home, args.max_rss_mib)
        result = {
            "size": args.size,
            "threads": args.threads,
            "max_rss_mib": args.max_rss_mib,
            "measured": "CPU peak RSS (ru_maxrss)",
            "computed": "weights_mib (parameter + buffer bytes), gpu_estimate_mib (weights + CPU-measured activations)",
            "per_metric": {m: series([m], *run) for m in metrics},
        }
        result["all_metrics"] = None if args.no_combined else series(metrics, *run)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
