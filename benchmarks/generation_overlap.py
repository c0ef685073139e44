"""Does generation wait on files? images/s writing PNGs (encode + sha256 + sidecar) vs discarding them.

The tiny random-weight Flux (``data/01_raw/tiny/flux``) generates at 1024x768, the paper's size, so each
image is a full-size PNG (the encode costs what it costs at scale; the denoising is far cheaper than
FLUX.1-dev's, which makes this a harder test than the real run). Three runs over the same ids, one
pipeline, torch on one thread:

- ``discard``: the images are made and dropped (the reference: no file work at all);
- ``pool``: ``write_generated`` with ``fluxgen.write_threads`` threads (the default), as a run does;
- ``inline``: ``write_threads=0``, every image written before the next denoising starts.

``ratio_pool`` = images/s of ``pool`` / images/s of ``discard`` (target >= 0.9); ``ratio_inline`` is the
same for the inline writes. Each mode runs ``--repeats`` times, interleaved; the best time of each counts
(a shared machine only ever makes a run slower). ``wait_fraction``: the share of the run the generating
thread spent held up by writes (waiting for a queue slot or at the end), which does not depend on how
busy the machine is: the overlap on a GPU, where the denoising leaves the CPU cores free.

    PYTHONPATH=src .venv/bin/python benchmarks/generation_overlap.py --json [--images 6 --steps 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6, help="images per timed run")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode (best counts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLUXIR_PROGRESS", "off")

    import torch

    from fluxir.fluxgen.generate import GenerationConfig, denoised_images, write_generated
    from fluxir.io.store import ImageStore
    from fluxir.models.loading import load_pipeline
    from fluxir.models.prompts import PromptEncoder
    from fluxir.parameters.config import load_params

    torch.set_num_threads(1)
    base = load_params("tiny", [], REPO)["fluxgen"]
    cfg = GenerationConfig.from_params(
        {
            **base,
            "model": str(REPO / base["model"]),
            "height": 768,
            "width": 1024,
            "steps": args.steps,
            "num_images": args.images,
        }
    )
    pipe = load_pipeline(cfg.model, dtype=cfg.dtype, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    encoder = PromptEncoder(pipe, [""], cfg.max_sequence_length, "cpu")
    ids = list(range(args.images))
    for _ in denoised_images(cfg, pipe, encoder, ids[:1], "cpu"):  # warm-up: first-call allocations
        pass

    seconds: dict[str, list[float]] = {"discard": [], "pool": [], "inline": []}
    waits: dict[str, list[float]] = {"pool": [], "inline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode, times in seconds.items():
                images = denoised_images(cfg, pipe, encoder, ids, "cpu")
                start = time.perf_counter()
                if mode == "discard":
                    for _ in images:
                        pass
                else:
                    threads = cfg.write_threads if mode == "pool" else 0
                    store = ImageStore(Path(tmp) / f"{mode}{repeat}")
                    _, waited = write_generated(
                        dataclasses.replace(cfg, write_threads=threads), store, images, len(ids), progress=False
                    )
                times.append(time.perf_counter() - start)
                if mode in waits:
                    waits[mode].append(waited / times[-1])
        png_mb = sum(p.stat().st_size for p in (Path(tmp) / "pool0").rglob("*.png")) / len(ids) / 2**20
    rate = {mode: len(ids) / min(times) for mode, times in seconds.items()}
    print(
        json.dumps(
            {
                "images_per_s": rate,
                "ratio_pool": rate["pool"] / rate["discard"],
                "ratio_inline": rate["inline"] / rate["discard"],
                "wait_fraction": {mode: min(values) for mode, values in waits.items()},
                "target_ratio_pool": 0.9,
                "write_threads": cfg.write_threads,
                "size": f"{cfg.width}x{cfg.height}",
                "steps": cfg.steps,
                "images": len(ids),
                "repeats": args.repeats,
                "png_mb_per_image": png_mb,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "load_average_1min": os.getloadavg()[0],  # above cpu_count: no core is free to overlap the writes
                "python": platform.python_version(),
                "note": "measured on the CPU with the tiny random-weight Flux; best of the repeats",
            }
        )
    )


if __name__ == "__main__":
    main()
