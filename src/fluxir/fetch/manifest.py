"""The manifest: every file and repository a full run needs, where it comes from and where it goes.

Sources, sizes and digests are the publishers' (checked 2026-12; ``None`` where nothing is
published: such a file is verified against the size its server announces, and ``fluxir.check``
then loads every weight file and compares its keys). Destinations are never written here: each one
is read from the environment's parameters, so a file lands where the loaders look:

- ``flux``: ``fluxgen.model``, ``train.model``, ``restore.model``, ``evaluate.restore.model``,
  ``baselines.flux_controlnet.model`` (a hub id: the Hugging Face cache; a folder: the snapshot is that folder);
- ``iqa``: the files of ``iqa.metrics`` and ``evaluate.metrics`` under ``iqa.weights_dir``, as
  ``fluxir.iqa.weights`` names them (the names pyiqa, torchvision and CLIP look up);
- ``benchmarks``: the folders of ``evaluate.benchmarks``;
- ``baselines``: ``baselines.realesrgan.weights`` and ``baselines.flux_controlnet.controlnet``, the public
  restorers of ``evaluate.methods`` and ``restore.method``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fluxir.fetch import hub
from fluxir.fetch.transfer import sha256_prefix_from_name

GROUPS = ("flux", "iqa", "benchmarks", "baselines")

FLUX_REPO = "black-forest-labs/FLUX.1-dev"
FLUX_PARAMS = (
    "fluxgen.model",
    "train.model",
    "restore.model",
    "evaluate.restore.model",
    "baselines.flux_controlnet.model",
)
CONTROLNET_REPO = "jasperai/Flux.1-dev-Controlnet-Upscaler"
CONTROLNET_PARAM = "baselines.flux_controlnet.controlnet"
REALESRGAN_URL = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
REALESRGAN_PARAM = "baselines.realesrgan.weights"

STABLESR_URL = "https://huggingface.co/datasets/Iceclear/StableSR-TestSets/resolve/main/StableSR_testsets.zip"
# DreamClear's README links RealLQ250 as a Google Drive file; the `usercontent` address serves its bytes.
REALLQ250_URL = (
    "https://drive.usercontent.google.com/download?id=16uWuJOyGMw5fbXHGcl6GOmxYJb_Szrqe&export=download&confirm=t"
)
DIV2K_VALID_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip"
STABLESR_NOTE = (
    "StableSR's crops: LQ 128x128, HQ 512x512. The paper's 1024/256 centre crops need the full-size "
    "RealSR v3 / DRealSR x4 test pairs; to use these, set hq_size: 512 and lq_size: 128 for the benchmark"
)
# benchmark key -> (archive file name, URL, [(member glob, parameter of the destination folder)], note)
BENCHMARK_ARCHIVES: dict[str, tuple[str, str, list[tuple[str, str]], str]] = {
    "realsr": (
        "StableSR_testsets.zip",
        STABLESR_URL,
        [
            ("StableSR_testsets/RealSRVal_crop128/test_HR/*|StableSR_testsets/RealSRVal_crop128/gt/*", "hq_dir"),
            ("StableSR_testsets/RealSRVal_crop128/test_LR/*|StableSR_testsets/RealSRVal_crop128/lq/*", "lq_dir"),
        ],
        STABLESR_NOTE,
    ),
    "drealsr": (
        "StableSR_testsets.zip",
        STABLESR_URL,
        [
            ("StableSR_testsets/DrealSRVal_crop128/test_HR/*|StableSR_testsets/DrealSRVal_crop128/gt/*", "hq_dir"),
            ("StableSR_testsets/DrealSRVal_crop128/test_LR/*|StableSR_testsets/DrealSRVal_crop128/lq/*", "lq_dir"),
        ],
        STABLESR_NOTE,
    ),
    "reallq250": (
        "RealLQ250.zip",
        REALLQ250_URL,
        [("*", "lq_dir")],
        "DreamClear's 250 LQ images (no HQ); the archive's inner layout is not published: every image in it",
    ),
    "div2k_val": (
        "DIV2K_valid_HR.zip",
        DIV2K_VALID_URL,
        [("DIV2K_valid_HR/*", "hq_dir")],
        "the 100 DIV2K validation HQ images; DIV2K-Val's 600 crops are cut from them by the evaluate pipeline",
    ),
}


@dataclass(frozen=True)
class Item:
    """One manifest row: a file (``url``) or a hub repository (``repo``), and where it goes."""

    name: str
    group: str
    dest: Path | None  # a file's path; an archive's staging path; a snapshot's folder (None: the HF cache)
    url: str | None = None
    repo: str | None = None
    revision: str = "main"
    repo_type: str = "model"
    size: int | None = None
    sha256: str | None = None  # full digest, or the prefix a torch hub file name publishes
    extract: tuple[tuple[str, Path], ...] = ()  # archives: (member glob, destination folder)
    used_by: tuple[str, ...] = ()  # the parameters that point here
    note: str = ""

    @property
    def source(self) -> str:
        return f"hub {self.repo}@{self.revision}" if self.repo else str(self.url)

    @property
    def destination(self) -> str:
        if self.extract:
            return ", ".join(sorted({str(d) for _, d in self.extract}))
        return str(self.dest) if self.dest is not None else "Hugging Face cache (HF_HOME)"


@dataclass
class Manifest:
    items: list[Item] = field(default_factory=list)
    unconfigured: list[str] = field(default_factory=list)  # what this env does not use, and why


HUB_FILES = "https://huggingface.co/"


def unpublished_digest(url: str) -> str:
    """How a file without a digest in the manifest is verified."""
    if url.startswith(HUB_FILES):
        return "SHA-256 and size as the hub states them for its LFS file (asked before the download)"
    return "no digest published: checked against the size the server announces"


def _get(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _is_hub_id(value: str, project: Path) -> bool:
    """``owner/name`` that is not an existing path: what diffusers' from_pretrained takes for a hub id."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", value)) and not (project / value).exists()


def _snapshot_items(
    name: str, group: str, repo: str, params: Mapping[str, Any], keys: tuple[str, ...], project: Path, note: str
) -> list[Item]:
    """One item per distinct destination among the parameters ``keys`` that name this repository or a folder."""
    by_dest: dict[Path | None, list[str]] = {}
    for key in keys:
        value = _get(params, key)
        if value is None:
            continue
        value = str(value)
        if _is_hub_id(value, project):
            if value != repo:
                continue  # another hub model: not this manifest's
            by_dest.setdefault(None, []).append(key)
        elif not hub.is_model_folder(project / value) or hub.downloaded_here(project / value):
            by_dest.setdefault((project / value).resolve(), []).append(key)  # a folder to fill (or ours to complete)
        # else: a model folder of the user's own (the tiny models, a copy made by hand): not the manifest's
    return [Item(name, group, dest, repo=repo, used_by=tuple(used), note=note) for dest, used in by_dest.items()]


def iqa_specs(params: Mapping[str, Any]) -> list[Any]:
    """The distinct metric specs of ``iqa.metrics`` and ``evaluate.metrics``."""
    from fluxir import iqa

    groups = _get(params, "evaluate.metrics") or {}
    specs = [*(_get(params, "iqa.metrics") or []), *(s for g in groups.values() for s in (g or {}).values())]
    parsed: list[Any] = []
    for spec in map(iqa.MetricSpec.parse, specs):
        parsed += [] if spec in parsed else [spec]
    return parsed


def _iqa_items(params: Mapping[str, Any]) -> tuple[list[Item], list[str]]:
    from fluxir.iqa import weights as iqa_weights

    items: dict[Path, Item] = {}
    skipped = []
    # iqa_weights names the files under the weight home in use; re-rooted at iqa.weights_dir without
    # configuring it (that would fix pyiqa's folder for this process)
    current, weights_dir = iqa_weights.weights_home(), _get(params, "iqa.weights_dir")
    home = Path(str(weights_dir)).expanduser().resolve() if weights_dir is not None else current
    for spec in iqa_specs(params):
        needs, complete = iqa_weights.plan_files(spec)
        if not complete:
            skipped.append(f"iqa {spec.name}: its weight files are not known to the manifest; fetch them by hand")
        for need in needs:
            if not need.source.startswith("download from "):
                skipped.append(f"iqa {spec.name}: {need.path} is {need.source}")
                continue
            url = need.source.removeprefix("download from ")
            need = replace(need, path=home / need.path.relative_to(current))
            digest = need.sha256 or (
                sha256_prefix_from_name(need.path.name) if url.startswith(iqa_weights.TORCHVISION_URL) else None
            )
            if need.path in items:
                old = items[need.path]
                items[need.path] = Item(
                    old.name,
                    old.group,
                    old.dest,
                    url=old.url,
                    sha256=old.sha256,
                    used_by=(*old.used_by, spec.name),
                    note=old.note,
                )
                continue
            note = (
                "SHA-256 from the digest in OpenAI's URL"
                if need.sha256
                else "SHA-256 prefix from torch hub's file-name convention"
                if digest
                else f"{unpublished_digest(url)}; fluxir.check then loads it and compares its keys"
            )
            items[need.path] = Item(
                need.path.name, "iqa", need.path, url=url, sha256=digest, used_by=(spec.name,), note=note
            )
    return list(items.values()), skipped


def _benchmark_items(params: Mapping[str, Any], project: Path) -> tuple[list[Item], list[str]]:
    benchmarks = _get(params, "evaluate.benchmarks") or {}
    archives: dict[str, dict[str, Any]] = {}
    skipped = []
    for key, (file_name, url, rules, note) in BENCHMARK_ARCHIVES.items():
        entry = benchmarks.get(key)
        if not isinstance(entry, Mapping):
            skipped.append(f"benchmarks {key}: not in evaluate.benchmarks of this env")
            continue
        row = archives.setdefault(file_name, {"url": url, "extract": [], "used_by": [], "notes": []})
        for pattern, folder_key in rules:
            if entry.get(folder_key) is None:
                continue
            row["extract"].append((pattern, (project / str(entry[folder_key])).resolve()))
        row["used_by"].append(f"evaluate.benchmarks.{key}")
        row["notes"] += [] if note in row["notes"] else [note]
    items = []
    for file_name, row in archives.items():
        staging = row["extract"][0][1].parent / ".fetch" / file_name
        items.append(
            Item(
                file_name,
                "benchmarks",
                staging,
                url=row["url"],
                extract=tuple(row["extract"]),
                used_by=tuple(row["used_by"]),
                note="; ".join([*row["notes"], unpublished_digest(row["url"])]),
            )
        )
    return items, skipped


def _baseline_items(params: Mapping[str, Any], project: Path) -> tuple[list[Item], list[str]]:
    items, skipped = [], []
    weights = _get(params, REALESRGAN_PARAM)
    if weights is None:
        skipped.append(f"baselines RealESRGAN_x4plus.pth: {REALESRGAN_PARAM} is not set in this env")
    else:
        items.append(
            Item(
                "RealESRGAN_x4plus.pth",
                "baselines",
                (project / str(weights)).resolve(),
                url=REALESRGAN_URL,
                used_by=(REALESRGAN_PARAM,),
                note="Real-ESRGAN release v0.1.0; no digest published; loaded by basicsr's RRDBNet",
            )
        )
    rows = _snapshot_items(
        "Flux.1-dev-Controlnet-Upscaler",
        "baselines",
        CONTROLNET_REPO,
        params,
        (CONTROLNET_PARAM,),
        project,
        "a FluxControlNetModel for FLUX.1-dev (its own licence)",
    )
    if not rows:
        skipped.append(f"baselines {CONTROLNET_REPO}: {CONTROLNET_PARAM} names neither it nor a folder to fill")
    return items + rows, skipped


def build(params: Mapping[str, Any], project: Path, only: tuple[str, ...] = GROUPS) -> Manifest:
    """The manifest for an environment's parameters, restricted to the groups in ``only``."""
    manifest = Manifest()
    if "flux" in only:
        rows = _snapshot_items(
            "FLUX.1-dev",
            "flux",
            FLUX_REPO,
            params,
            FLUX_PARAMS,
            project,
            "gated: accept the licence on its hub page; HF_TOKEN of that account",
        )
        manifest.items += rows
        if not rows:
            manifest.unconfigured.append(
                f"flux: none of {', '.join(FLUX_PARAMS)} names {FLUX_REPO} or a folder to fill "
                f"(model folders of your own are left alone)"
            )
    for group, build_group in (
        ("iqa", lambda: _iqa_items(params)),
        ("benchmarks", lambda: _benchmark_items(params, project)),
        ("baselines", lambda: _baseline_items(params, project)),
    ):
        if group in only:
            rows, skipped = build_group()
            manifest.items += rows
            manifest.unconfigured += skipped
    return manifest
