"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fluxir.io.provenance import sha256_file
from fluxir.parameters.config import load_params

from conftest import REPO

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """``FLUXIR_CHROMIUM``, else Debian's chromium (scripts/setup.sh installs it), else None."""
    for candidate in (os.environ.get("FLUXIR_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
SIZES = ((64, 48), (48, 48), (32, 48))  # the tiny env's crop sizes (width, height)


def make_pairs(root: Path, n: int = 8, sizes=SIZES, scale: int = 4) -> pd.DataFrame:
    """n HQ crops of scikit-image sample photos (sizes cycled) + their 1/scale bicubic LQ, and the manifest (with
    the sizes, as ``pairs_manifest`` records them)."""
    import skimage.data

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        photo = Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()).convert("RGB")
        w, h = sizes[i % len(sizes)]
        small = photo.resize((2 * w, max(h, round(photo.height * 2 * w / photo.width))), Image.BICUBIC)
        left, top = (small.width - w) // 2, (small.height - h) // 2
        hq = small.crop((left, top, left + w, top + h))
        hq_path, lq_path = root / f"hq_{i:03d}.png", root / f"lq_{i:03d}.png"
        hq.save(hq_path)
        hq.resize((w // scale, h // scale), Image.BICUBIC).save(lq_path)
        rows.append(
            {
                "image_id": i,
                "hq_path": str(hq_path),
                "lq_path": str(lq_path),
                "hq_sha256": sha256_file(hq_path),
                "lq_sha256": sha256_file(lq_path),
                **{"width": w, "height": h, "lq_width": w // scale, "lq_height": h // scale},
            }
        )
    return pd.DataFrame(rows)


def base_params(group: str, **overrides) -> dict:
    """conf/base's parameters of ``group`` with ``overrides``: every field a config class needs (no Python defaults)."""
    return {**load_params("base", [], REPO)[group], **overrides}


def adapter_params(**overrides) -> dict:
    """conf/base's ``train.adapter`` (rank, guidance) with ``overrides``: what ``FluxIRAdapter.from_flux`` needs."""
    return {**base_params("train")["adapter"], **overrides}


def restore_settings(**overrides) -> dict:
    """conf/base's ``restore.*`` without the file and launch parameters, with ``overrides``: what
    ``RestoreConfig.from_params`` takes."""
    from fluxir.restoration.files import FILE_PARAMS

    return {k: v for k, v in base_params("restore", **overrides).items() if k not in (*FILE_PARAMS, "num_processes")}


def restore_config(**overrides):
    """A validated ``RestoreConfig`` of conf/base's ``restore.*`` with ``overrides``."""
    from fluxir.restoration.restore_config import RestoreConfig

    return RestoreConfig.from_params(restore_settings(**overrides))


def tiny_params(tmp: Path, *overrides: str) -> dict:
    """conf/tiny's train parameters (and quick defaults for tests); ``tmp`` names the run, whose folders are
    ``tiny_folders(tmp)``."""
    return load_params("tiny", ["train.gradient_checkpointing=false", *overrides], REPO)["train"]


def tiny_folders(tmp: Path):
    """A training run's working folders under tmp (the catalog's train_checkpoints and train_latent_cache)."""
    from fluxir.training.config import TrainFolders

    return TrainFolders(tmp / "ckpt", tmp / "cache")


def make_mixed_folder(root: Path) -> dict[str, Path]:
    """RGB, greyscale (in a sub-folder), RGBA, 16-bit PNG, EXIF-rotated JPEG + a corrupt PNG, an empty file, a .txt."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    files = {
        name: root / name
        for name in (
            "rgb.png",
            "sub/gray.png",
            "rgba.png",
            "deep16.png",
            "exif.jpg",
            "corrupt.png",
            "empty.png",
            "notes.txt",
        )
    }
    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(files["rgb.png"])
    Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8), mode="L").save(files["sub/gray.png"])
    rgba = rng.integers(0, 256, (8, 12, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 12, dtype=np.uint8)[None, :]  # alpha ramps left to right
    Image.fromarray(rgba, mode="RGBA").save(files["rgba.png"])
    Image.fromarray(np.full((12, 10), 40000, np.uint16)).save(files["deep16.png"])  # 40000/257 -> 156
    stored = np.zeros((16, 32, 3), np.uint8)  # stored landscape: top half red, bottom half blue
    stored[:8, :, 0] = 230
    stored[8:, :, 2] = 230
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display -> portrait, red on the right
    Image.fromarray(stored).save(files["exif.jpg"], exif=exif, quality=95)
    good = root / "good_to_truncate.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    files["corrupt.png"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    files["empty.png"].write_bytes(b"")
    files["notes.txt"].write_text("not an image\n")
    return files


def save_identity_adapter(project: Path) -> None:
    """A fresh adapter saved through the project's own ``fluxir_adapter`` entry (what train would write)."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.loading import load_pipeline

    loader = OmegaConfigLoader(str(project / "conf"), base_env="base", default_run_env="tiny")
    entry = dict(loader["catalog"]["fluxir_adapter"])
    entry["filepath"] = str(project / entry["filepath"])
    pipe = load_pipeline(str(project / "data/01_raw/tiny/flux"), "float32", "cpu")
    adapter = FluxIRAdapter.from_flux(pipe.transformer, **adapter_params())
    DataCatalog.from_config({"fluxir_adapter": entry}).save("fluxir_adapter", adapter)


def kill_when(
    proc: subprocess.Popen,
    ready: Callable[[], bool],
    timeout: float = 600.0,
    group: bool = False,
    grace: float = 120.0,
    sig: int = signal.SIGKILL,
) -> list[int]:
    """Send ``sig`` (SIGKILL) to ``proc`` (its whole process group with ``group``) once ``ready()`` holds;
    ``timeout`` and ``grace`` are safety nets (each wait returns at its event), never a speed claim.

    Asserts the process was still running when signalled, so a resume test cannot pass on a run that
    simply finished, that it ended within ``grace`` seconds, and that every process it had started (loader
    or pool workers, child jobs) is gone within ``grace`` seconds; survivors are killed before the assertion
    fails. Returns the pids of those children.
    """
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    assert ready(), f"the run did not reach the point to kill it at within {timeout:g} s (a safety net, not a claim)"
    children = psutil.Process(proc.pid).children(recursive=True)
    if group:
        os.killpg(proc.pid, sig)  # the run and every process it started
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
        ended = True
    except subprocess.TimeoutExpired:
        state = Path(f"/proc/{proc.pid}/status")
        masks = [line for line in state.read_text().splitlines() if line.startswith("Sig")] if state.exists() else []
        print(f"signal masks of the run that did not end: {masks}")
        proc.kill()
        proc.wait()
        ended = False
    _, alive = psutil.wait_procs(children, timeout=grace)
    survivors = [f"{p.pid} ({p.name()})" for p in alive if p.is_running()]
    for p in alive:
        p.kill()
    assert ended, f"the run was still running {grace:g} s after signal {signal.Signals(sig).name}"
    assert not survivors, f"processes left running {grace:g} s after their parent was signalled: {survivors}"
    return [p.pid for p in children]


HUB_COMMIT = "0ef5fff789c832c5c7f4e127f94c8b54bbcced44"  # any 40-hex id: the snapshot folder's name
WEIGHT_SHARDS = {"transformer": ("diffusion_pytorch_model", 3), "text_encoder_2": ("model", 2)}  # as FLUX.1-dev


def write_hub_snapshot(folder: Path, cache: Path, repo_id: str) -> Path:
    """Lay the pipeline ``folder`` out as huggingface_hub lays out a download of ``repo_id`` in the cache
    ``cache`` (``HF_HUB_CACHE``): ``models--<org>--<name>/{blobs/<sha256>, refs/main, snapshots/<commit>/...}``,
    each snapshot file a relative symlink to its blob. The transformer and T5 weights are split into shards
    with a ``*.safetensors.index.json`` as in the FLUX.1-dev repo. Returns the snapshot folder."""
    import json

    from safetensors.torch import load_file, save_file

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / HUB_COMMIT
    staging = repo / "staging"
    shutil.copytree(folder, staging)
    for component, (stem, shards) in WEIGHT_SHARDS.items():
        single = staging / component / f"{stem}.safetensors"
        if not single.is_file():
            continue
        state = load_file(single)
        names = sorted(state)
        weight_map, total = {}, 0
        for k in range(shards):
            part = f"{stem}-{k + 1:05d}-of-{shards:05d}.safetensors"
            tensors = {n: state[n].contiguous() for n in names[k::shards]}
            save_file(tensors, single.parent / part, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, part))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
        (single.parent / f"{stem}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        )
        single.unlink()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        relative = path.relative_to(staging)
        blob = repo / "blobs" / sha256_file(path)
        if not blob.exists():
            path.rename(blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    shutil.rmtree(staging)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot


def kedro_session_run(
    project: Path, env: str = "tiny", pipeline: str | None = None, params: dict | None = None, **run_args
) -> dict:
    """Run ``pipeline`` of the Kedro project copy ``project`` in this process (``KedroSession``, the runner
    ``kedro run`` uses), with ``params`` as ``--params`` would give them; returns the free outputs.

    The catalog's relative paths resolve against the working directory, so the run switches into ``project``
    and back; MLFLOW_TRACKING_URI, which kedro-mlflow exports, is put back as it was.
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    cwd, tracking_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(project)
    try:
        bootstrap_project(project)
        with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
            names = [pipeline] if pipeline else None
            return session.run(pipeline_names=names, **run_args)
    finally:
        os.chdir(cwd)
        if tracking_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
