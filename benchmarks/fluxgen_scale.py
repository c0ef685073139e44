"""FluxGen at scale, measured on tiny images: every number is a ratio to a reference from the same run.

- ``degrade_speedup_2_workers``: pairs/s with ``degrade.workers=2`` / pairs/s with 1 worker, same crops
  (pool start-up included; target >= 1.8 on 2 idle cores).
- ``score_speedup_2_procs``: images/s of 2 scoring processes (ids sharded like ``accelerate launch``) /
  1 process, weight-free pyiqa metrics on the CPU, model build excluded (target >= 1.7).
- ``manifest_ms_per_image``: the generation manifest of N existing images, ``cold`` (no recorded hash:
  every image is read and hashed; from the page cache here, a disk is slower), ``sidecars`` (the first
  manifest after generation: hashes recorded at write time) and ``warm`` (nothing changed since the last
  manifest: one ``stat`` per image; target <= 0.05 ms/image).
- ``resume_scan_ms_per_image``: how long a rerun of each stage takes to find that nothing is left to do.
- ``manifest_peak_*_per_100k_rows``: while building the manifest, per 100,000 rows: peak RSS over the RSS
  before it (an upper bound), peak allocations traced by tracemalloc, and the finished table's size.
- ``degrade_ms_per_pair_1024x768_one_core``: one SeeSR/Real-ESRGAN pair of a 1024x768 image, one thread.
- ``write_images_per_s`` / ``generate_images_per_s_tiny``: the cost of durable writes (each PNG flushed
  before its rename on generation's writer threads, so the flushes overlap; each shard folder once per
  run; and on one thread) over the same writes without any fsync, for the
  PNG writes alone and for tiny generation (``--only durable`` runs just these; ``FLUXIR_BENCH_DIR``
  puts the files on the disk to measure, the system temporary folder by default).

    PYTHONPATH=src .venv/bin/python benchmarks/fluxgen_scale.py --json [--num-images 10000] [--only durable]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import skimage.data

TINY_METRICS = ["entropy", "piqe"]  # weight-free pyiqa metrics (the real ones need downloaded weights)


def seesr_config(**overrides):
    """conf/base's degrade.config (SeeSR's settings, the one copy) with ``overrides``."""
    from fluxir.fluxgen.degrade import DegradationConfig

    return DegradationConfig.from_params({**_base("degrade")["config"], **overrides})


def _photos(n: int, width: int, height: int) -> list[np.ndarray]:
    """``n`` different (height, width, 3) crops of a bundled photo, resized."""
    photo = cv2.resize(skimage.data.astronaut(), (2 * width, 2 * height), interpolation=cv2.INTER_AREA)
    return [
        np.ascontiguousarray(
            photo[(3 * i) % height : (3 * i) % height + height, (7 * i) % width : (7 * i) % width + width]
        )
        for i in range(n)
    ]


def _base(group: str) -> dict:
    """conf/base's parameters of ``group``: every field a config class needs."""
    from fluxir.parameters.config import load_params

    return load_params("base", [], Path(__file__).resolve().parents[1])[group]


def _store(root: Path, n: int, record: bool):
    from fluxir.fluxgen.generate import GenerationConfig
    from fluxir.io.store import ImageStore

    cfg = GenerationConfig.from_params(
        {**_base("fluxgen"), "model": "none", "num_images": n, "height": 48, "width": 64}
    )
    store = ImageStore(root).sub(cfg.key())
    for i, image in enumerate(_photos(min(n, 97), 64, 48) * (n // 97 + 1)):
        if i == n:
            break
        image = image.copy()
        image[0, 0, 0] = i % 256  # every file distinct
        image[0, 1, 0] = i // 256 % 256
        image[0, 2, 0] = i // 65536
        (store.write_recorded(i, image) if record else store.write(i, image))
    return cfg, store


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def _rss_child(root: str, n: int, queue) -> None:
    from fluxir.fluxgen.generate import GenerationConfig, generation_manifest
    from fluxir.io.store import ImageStore

    cfg = GenerationConfig.from_params(
        {**_base("fluxgen"), "model": "none", "num_images": n, "height": 48, "width": 64}
    )
    store = ImageStore(Path(root)).sub(cfg.key())
    generation_manifest(cfg.__class__.from_params({**cfg.__dict__, "num_images": 1}), store)  # warm imports
    before = _status_mb("VmRSS")
    tracemalloc.start()
    table = generation_manifest(cfg, store)
    peak_traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    queue.put((_status_mb("VmHWM") - before, peak_traced, table.memory_usage(deep=True).sum() / 2**20))


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident of this process image) in MiB (Linux).
    Not ``ru_maxrss``: a spawned child inherits its parent's across exec."""
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def bench_manifest(work: Path, n: int) -> dict:
    from fluxir.fluxgen.generate import generate_into_store, generation_manifest

    os.chdir(work)
    cfg, store = _store(work / "plain", n, record=False)
    cold, _ = _timed(generation_manifest, cfg, store)
    cfg, store = _store(work / "recorded", n, record=True)
    sidecars, _ = _timed(generation_manifest, cfg, store)
    warm = min(_timed(generation_manifest, cfg, store)[0] for _ in range(3))
    generate_into_store(cfg, store, progress=False)  # imports torch/diffusers: not part of the scan
    resume, todo = _timed(generate_into_store, cfg, store, progress=False)
    assert todo == []
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_rss_child, args=(str(work / "recorded"), n, queue))
    child.start()
    rss_mb, traced_mb, frame_mb = queue.get()
    child.join()
    return {
        "manifest_ms_per_image": {"cold": 1e3 * cold / n, "sidecars": 1e3 * sidecars / n, "warm": 1e3 * warm / n},
        "resume_scan_ms_per_image": {"generate": 1e3 * resume / n},
        "manifest_peak_rss_growth_mb_per_100k_rows": rss_mb * 1e5 / n,
        "manifest_peak_traced_mb_per_100k_rows": traced_mb * 1e5 / n,
        "manifest_frame_mb_per_100k_rows": frame_mb * 1e5 / n,
        "manifest_images": n,
    }


@contextmanager
def _without_fsync():
    """The reference of the durability cost: the same writes with every fsync skipped."""
    from fluxir.io import atomic, store

    saved = atomic.fsync_file, atomic.fsync_dir, store.fsync_dir
    atomic.fsync_file = atomic.fsync_dir = store.fsync_dir = lambda path: None
    try:
        yield
    finally:
        atomic.fsync_file, atomic.fsync_dir, store.fsync_dir = saved


def bench_durable_writes(work: Path, n: int) -> dict:
    """Images/s of tiny generation and of the PNG writes alone, durable (as shipped) over no fsync."""
    import dataclasses

    from fluxir.fluxgen.generate import GenerationConfig, generate_into_store, write_generated
    from fluxir.io.store import ImageStore

    tiny = str(Path(__file__).resolve().parents[1] / "data/01_raw/tiny/flux")
    cfg = GenerationConfig.from_params(
        {
            **_base("fluxgen"),
            "model": tiny,
            "num_images": max(16, n // 5),
            "height": 48,
            "width": 64,
            "steps": 4,
            "dtype": "float32",
            "device": "cpu",
            "batch_size": 4,
        }
    )
    images = _photos(n, 64, 48)

    def write_all(root: Path, threads: int) -> float:
        start = time.perf_counter()
        write_generated(
            dataclasses.replace(cfg, write_threads=threads),
            ImageStore(root),
            ((i, images[i]) for i in range(n)),
            n,
            progress=False,
        )
        return n / (time.perf_counter() - start)

    pooled = write_all(work / "w_pool", cfg.write_threads)  # generation's writer threads: fsyncs overlap
    serial = write_all(work / "w_serial", 0)  # one file after the other
    with _without_fsync():
        plain = write_all(work / "w_plain", cfg.write_threads)

    generate_into_store(
        cfg, ImageStore(work / "g_warm"), progress=False
    )  # model load and first call outside the timing
    durable_runs, plain_runs = [], []
    for repeat in range(3):  # interleaved, best of 3: a shared machine's load drifts
        durable_runs.append(
            _timed(generate_into_store, cfg, ImageStore(work / f"g_durable{repeat}"), progress=False)[0]
        )
        with _without_fsync():
            plain_runs.append(
                _timed(generate_into_store, cfg, ImageStore(work / f"g_plain{repeat}"), progress=False)[0]
            )
    durable_s, plain_s = min(durable_runs), min(plain_runs)
    return {
        "write_images_per_s": {
            "durable_writer_threads": pooled,
            "durable_one_thread": serial,
            "no_fsync": plain,
            "ratio_threads_to_no_fsync": pooled / plain,
            "ratio_one_thread_to_no_fsync": serial / plain,
            "write_threads": cfg.write_threads,
            "images": n,
        },
        "generate_images_per_s_tiny": {
            "durable": cfg.num_images / durable_s,
            "no_fsync": cfg.num_images / plain_s,
            "ratio_durable_to_no_fsync": plain_s / durable_s,
            "images": cfg.num_images,
            "includes": "pipeline load per run (best of 3, interleaved)",
        },
    }


def bench_degrade(work: Path, n_pairs: int) -> dict:
    import pandas as pd

    from fluxir.fluxgen.pairs import PairStores, make_pairs, pairs_manifest
    from fluxir.io.store import ImageStore

    config = seesr_config(crop_sizes=((256, 192), (192, 192), (128, 192)))
    source = ImageStore(work / "degrade_src")
    jobs = [(i, str(source.write(i, image))) for i, image in enumerate(_photos(n_pairs, 256, 192))]
    # start the forkserver (it imports torch + basicsr once per process) before the clock
    make_pairs(jobs[:2], PairStores(ImageStore(work / "warmup"), "bench"), config, 0, workers=2, progress=False)
    rates = {}
    for workers in (1, 2):
        stores = PairStores(ImageStore(work / f"pairs{workers}"), "bench")
        seconds, made = _timed(make_pairs, jobs, stores, config, 0, workers=workers, progress=False)
        assert len(made) == n_pairs
        rates[workers] = n_pairs / seconds  # wall clock, pool start of the workers included
    stores = PairStores(ImageStore(work / "pairs2"), "bench")
    resume, made = _timed(make_pairs, jobs, stores, config, 0, workers=2, progress=False)
    assert made == []
    kept = pd.DataFrame({"image_id": [i for i, _ in jobs], "path": [p for _, p in jobs], "sha256": "-"})
    listing, _ = _timed(pairs_manifest, kept, stores, 0)
    one = sorted((work / "pairs1").rglob("*.png"))
    same = len(one) == 2 * n_pairs and all(
        p.read_bytes() == (work / "pairs2" / p.relative_to(work / "pairs1")).read_bytes() for p in one
    )
    return {
        "degrade_pairs_per_s": rates,
        "degrade_speedup_2_workers": rates[2] / rates[1],
        "degrade_pairs": n_pairs,
        "degrade_pair_size": "256x192 crops of 256x192",
        "degrade_2_workers_identical": same,
        "resume_scan_ms_per_image_degrade": 1e3 * resume / n_pairs,
        "pairs_manifest_ms_per_pair": 1e3 * listing / n_pairs,
    }


def _tiny_iqa():
    from fluxir.fluxgen.score import IqaConfig

    return IqaConfig.from_params(
        {
            "metrics": TINY_METRICS,
            "weights_dir": None,
            "trust_weight_files": False,
            "batch_size": 8,
            "device": "cpu",
            "loader_workers": 0,
            "part_size": 1024,
            "precision": "fp32",
        }
    )


def _score_process(manifest_path: str, parts: str, rank: int, world: int, barrier, queue) -> None:
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    from fluxir import iqa as iqa_lib
    from fluxir.fluxgen.score import run_scoring

    manifest = pd.read_parquet(manifest_path)
    iqa_lib.create_metrics(TINY_METRICS)  # build once before the clock: import and model set-up excluded
    barrier.wait()
    start = time.perf_counter()
    run_scoring(_tiny_iqa(), manifest, Path(parts), rank, world, progress=False)
    queue.put((start, time.perf_counter()))


def bench_score(work: Path, n: int) -> dict:
    from fluxir.fluxgen.generate import generation_manifest
    from fluxir.fluxgen.score import run_scoring

    os.chdir(work)
    cfg, store = _store(work / "score_images", n, record=True)
    manifest = generation_manifest(cfg, store)
    path = work / "score_manifest.parquet"
    manifest.to_parquet(path)
    ctx = multiprocessing.get_context("spawn")
    rates = {}
    for world in (1, 2):
        barrier, queue = ctx.Barrier(world), ctx.Queue()
        procs = [
            ctx.Process(target=_score_process, args=(str(path), str(work / f"parts{world}"), r, world, barrier, queue))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        spans = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        rates[world] = n / (max(e for _, e in spans) - min(s for s, _ in spans))
    run_scoring(_tiny_iqa(), manifest, work / "parts2", progress=False)  # imports pyiqa
    resume, (_, scored) = _timed(run_scoring, _tiny_iqa(), manifest, work / "parts2", progress=False)
    assert scored == 0
    return {
        "score_images_per_s": rates,
        "score_speedup_2_procs": rates[2] / rates[1],
        "score_images": n,
        "score_metrics": TINY_METRICS,
        "resume_scan_ms_per_image_score": 1e3 * resume / n,
    }


def bench_one_pair_1024x768(repeats: int) -> dict:
    import torch

    from fluxir.fluxgen.degrade import degrade_pair

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    image = cv2.resize(skimage.data.astronaut(), (1024, 768), interpolation=cv2.INTER_CUBIC)
    config = seesr_config()
    times = [_timed(degrade_pair, image, i, 0, config)[0] for i in range(repeats)]
    ms = 1e3 * float(np.median(times))
    return {
        "degrade_ms_per_pair_1024x768_one_core": ms,
        "degrade_pairs_timed_1024x768": repeats,
        "computed_hours_350k_pairs_64_cores": 350_000 * ms / 1e3 / (64 * 0.9) / 3600,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--num-images", type=int, default=10000, help="manifest size; scoring uses N/5, degradation N/30 pairs"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    parser.add_argument("--pair-repeats", type=int, default=5, help="1024x768 pairs timed for the median")
    parser.add_argument("--only", choices=["durable"], default=None, help="durable: only the fsync cost (images/s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLUXIR_PROGRESS", "off")
    result = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("FLUXIR_BENCH_DIR")) as tmp:
        work = Path(tmp)
        result.update(bench_durable_writes(work, max(40, args.num_images // 50)))
        if args.only is None:
            result.update(bench_manifest(work, args.num_images))
            result.update(bench_degrade(work, max(8, args.num_images // 30)))
            result.update(bench_score(work, max(16, args.num_images // 5)))
            result.update(bench_one_pair_1024x768(args.pair_repeats))
    result["note"] = (
        "speedups on a shared or busy machine are lower bounds; the 350k-pair hours are computed "
        "from the one-core time assuming 90% efficiency on 64 cores, not measured"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
