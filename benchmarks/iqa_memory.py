"""Memory of IQA scoring per metric and ``iqa.batch_size``: measured CPU peak RSS, computed GPU figures.

Each measurement runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own: the
interpreter with torch and pyiqa imported (``import_rss_mib``), then the metric(s) built from weight files of
the published layout (``scripts/make_iqa_fixture_weights.py --with-vit-l14``: the released architectures and
sizes, random weights, so the same memory as the real files), then one ``score_no_reference`` call on
``batch`` random images of the generated size (1024x768, the paper's), exactly as ``fluxir.fluxgen.score``
calls it with ``iqa.batch_size = batch``.

Per metric and batch: ``peak_rss_mib`` (measured), ``weights_mib`` (computed: parameter bytes of the built
model, what a GPU holds for it in float32), ``activations_mib`` = peak - import - weights (measured on the
CPU; the same tensors are what the GPU allocates, so ``gpu_estimate_mib`` = weights + activations is a
computed estimate, not a CUDA measurement), and ``ratio_to_batch_1`` (the reference measured in this run).
``all_metrics`` is the three selection metrics in one process, as scoring runs them; ``per_image_mib`` is
the slope between the two largest batches measured, used to extrapolate ``batch_8_estimate_mib``.

    .venv/bin/python benchmarks/iqa_memory.py --json                  # ~5-10 min on 2 cores, ~8 GB RAM
    .venv/bin/python benchmarks/iqa_memory.py --json --batch-sizes 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ["clipiqa+_vitL14_512", "maniqa-pipal", "musiq"]  # conf/base: iqa.metrics

PROBE = r"""
import json, resource, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
from fluxir.fluxgen import iqa
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
names, batch, (height, width) = sys.argv[1].split(","), int(sys.argv[2]), map(int, sys.argv[3].split("x"))
iqa.configure_weights(sys.argv[5], trust_files=True)
import pyiqa  # noqa: F401,E402  (after configure_weights: pyiqa fixes its weight folder at import)
imported = rss()
metrics = iqa.create_metrics(names, "cpu")
weights = {n: sum(p.numel() * p.element_size() for p in m.net.parameters()) / 2**20 for n, m in metrics.items()}
del metrics
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
scores = iqa.score_no_reference(images, names, batch_size=batch, progress=False)
assert len(scores) == batch and scores.notna().all().all()
print(json.dumps({"import_rss_mib": imported, "peak_rss_mib": rss(), "weights_mib": weights}))
"""


def measure(names: list[str], batch: int, size: str, threads: int, home: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(names), str(batch), size, str(threads), str(home)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{names} batch {batch}: {out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    weights = sum(row["weights_mib"].values())
    activations = row["peak_rss_mib"] - row["import_rss_mib"] - weights
    return {
        "peak_rss_mib": round(row["peak_rss_mib"]),
        "import_rss_mib": round(row["import_rss_mib"]),
        "weights_mib": round(weights),
        "activations_mib": round(activations),
        "gpu_estimate_mib": round(weights + activations),
    }


def series(names: list[str], batches: list[int], size: str, threads: int, home: Path) -> dict:
    rows = {}
    for b in batches:
        rows[b] = measure(names, b, size, threads, home)
        print(f"{'+'.join(names)} batch {b}: {json.dumps(rows[b])}", file=sys.stderr, flush=True)  # progress
    for row in rows.values():
        row["ratio_to_batch_1"] = round(row["peak_rss_mib"] / rows[batches[0]]["peak_rss_mib"], 3)
    out: dict = {f"batch_{b}": row for b, row in rows.items()}
    if len(batches) >= 2:
        lo, hi = batches[-2], batches[-1]
        slope = (rows[hi]["peak_rss_mib"] - rows[lo]["peak_rss_mib"]) / (hi - lo)
        out["per_image_mib"] = round(slope)
        out["batch_8_estimate_mib"] = round(rows[hi]["peak_rss_mib"] + slope * (8 - hi))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--batch-sizes", default="1,2")
    parser.add_argument("--size", default="768x1024", help="HEIGHTxWIDTH of the scored images (fluxgen's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", help="an existing fixture weight home (default: written to a temp folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    metrics, batches = args.metrics.split(","), [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.weights or tmp)
        if not args.weights:
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "scripts" / "make_iqa_fixture_weights.py"),
                    "--out",
                    str(home),
                    "--with-vit-l14",
                ],
                check=True,
                capture_output=True,
            )
        result = {
            "size": args.size,
            "threads": args.threads,
            "measured": "CPU peak RSS (ru_maxrss)",
            "computed": "weights_mib (parameter bytes), gpu_estimate_mib (weights + CPU-measured activations)",
            "all_metrics": series(metrics, batches, args.size, args.threads, home),
            "per_metric": {m: series([m], batches, args.size, args.threads, home) for m in metrics},
        }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
