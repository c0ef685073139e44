"""The manifest: every file and repository a full run needs, where it comes from and where it goes.

Sizes and digests are the publishers' where stated (checked 2026-12), else what two or more independent download
scripts or a checksum registry (TFDS) record; a rounded size ("3.58 GB") is approximate: counted in the disk check,
never used to verify. Destinations are read from the environment's parameters (benchmark folders: its catalog), so
a file lands where the loaders look; a hub id parameter means the Hugging Face cache.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fluxir.fetch import hub
from fluxir.fetch.transfer import sha256_prefix_from_name
from fluxir.preflight import MODEL_ROLES, lookup

GROUPS = ("flux", "iqa", "benchmarks", "baselines", "filter")

FLUX_REPO = "black-forest-labs/FLUX.1-dev"
FLUX_PARAMS = (*MODEL_ROLES, "baselines.flux_controlnet.model")
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
# Byte counts (and digests where found) by file name. FLUX.1-dev's and the IQA files' from download
# scripts that record the hub API's LFS sizes; ViT-L-14.pt's SHA-256 is in OpenAI's URL; DIV2K's from
# TFDS' url_checksums/div2k.txt; StableSR's from its LFS pointer (commit a1acb40). Not found: the RealLQ250
# archive (Google Drive), pyiqa's LPIPS_v0.1_alex and CLIPIQA+_ViTL14_512 files.
PUBLISHED_SIZES = {
    "ViT-L-14.pt": 932_768_134,
    "alexnet-owt-7be5be79.pth": 244_408_911,
    "MANIQA_PIPAL-ae6d356b.pth": 543_335_435,
    "musiq_koniq_ckpt-e95806b9.pth": 108_610_983,
    "RealESRGAN_x4plus.pth": 67_040_989,
    "DIV2K_valid_HR.zip": 448_993_893,
    "StableSR_testsets.zip": 3_055_396_861,
}
PUBLISHED_SHA256 = {
    "RealESRGAN_x4plus.pth": "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
    "DIV2K_valid_HR.zip": "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
    "StableSR_testsets.zip": "32a6344e2a0d394ffcaa7a9245df14105c590dab3ef0d3540e940add1ef9b803",
}
# Hub repositories: only the diffusers layout the loaders read (FLUX.1-dev's single-file
# flux1-dev.safetensors and ae.safetensors, 24 GB, are not fetched), and the exact sizes of its large
# files; the small config files (a few MB together) are not listed.
FLUX_PATTERNS = (
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
    "transformer/*",
    "vae/*",
)
FLUX_FILES = (
    ("transformer/diffusion_pytorch_model-00001-of-00003.safetensors", 9_983_040_304),
    ("transformer/diffusion_pytorch_model-00002-of-00003.safetensors", 9_949_328_904),
    ("transformer/diffusion_pytorch_model-00003-of-00003.safetensors", 3_870_584_832),
    ("text_encoder_2/model-00001-of-00002.safetensors", 4_994_582_224),
    ("text_encoder_2/model-00002-of-00002.safetensors", 4_530_066_360),
    ("text_encoder/model.safetensors", 246_144_352),
    ("vae/diffusion_pytorch_model.safetensors", 167_666_902),
    ("tokenizer/vocab.json", 1_059_962),
    ("tokenizer_2/tokenizer.json", 2_424_235),
)
CONTROLNET_PATTERNS = ("config.json", "*.safetensors")
FILTER_REPO = "Falconsai/nsfw_image_detection"
FILTER_PARAM = "fluxgen.content_filter.model"
# what AutoImageProcessor / AutoModelForImageClassification.from_pretrained read (not the repo's .bin, ONNX or TF files)
FILTER_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
FILTER_APPROX_SIZE = 343_000_000  # model.safetensors: the hub page's "343 MB" (ViT-B/16, 85.8M float32 parameters)
CONTROLNET_APPROX_SIZE = 3_580_000_000  # the hub page's "3.58 GB" for diffusion_pytorch_model.safetensors
STABLESR_NOTE = (
    "StableSR's crops: LQ 128x128, HQ 512x512 (conf/base's hq_size/lq_size for realsr and drealsr); "
    "the paper's 1024/256 centre crops need the full-size RealSR v3 / DRealSR x4 pairs (docs/evaluation.md)"
)


# benchmark key -> (archive file name, URL, [(member glob, destination folder in catalog entry <key>_benchmark)], note)
def _stablesr(name: str) -> tuple[str, str, list[tuple[str, str]], str]:
    root = f"StableSR_testsets/{name}_crop128"  # HQ in test_HR or gt, LQ in test_LR or lq
    rules = [(f"{root}/test_HR/*|{root}/gt/*", "hq_path"), (f"{root}/test_LR/*|{root}/lq/*", "lq_path")]
    return "StableSR_testsets.zip", STABLESR_URL, rules, STABLESR_NOTE


BENCHMARK_ARCHIVES: dict[str, tuple[str, str, list[tuple[str, str]], str]] = {
    "realsr": _stablesr("RealSRVal"),
    "drealsr": _stablesr("DrealSRVal"),
    "reallq250": (
        "RealLQ250.zip",
        REALLQ250_URL,
        [("*", "lq_path")],
        "DreamClear's 250 LQ images (no HQ); the archive's inner layout is not published: every image in it",
    ),
    "div2k_val": (
        "DIV2K_valid_HR.zip",
        DIV2K_VALID_URL,
        [("DIV2K_valid_HR/*", "hq_path")],
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
    size: int | None = None  # bytes (a repository: the sum of ``files``, or an approximate total)
    sha256: str | None = None  # full digest, or the prefix a torch hub file name publishes
    size_approx: bool = False  # ``size`` is a rounded figure: shown with "~", never used to verify
    files: tuple[tuple[str, int], ...] = ()  # a repository's files of known exact size (path, bytes)
    allow_patterns: tuple[str, ...] = ()  # a repository's files that are fetched (empty: all)
    extract: tuple[tuple[str, Path], ...] = ()  # archives: (member glob, destination folder)
    used_by: tuple[str, ...] = ()  # the parameters that point here
    note: str = ""

    @property
    def exact_size(self) -> int | None:
        """The size a download is verified against (None: only what the server announces)."""
        return None if self.size_approx else self.size

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


def _is_hub_id(value: str, project: Path) -> bool:
    """``owner/name`` that is not an existing path: what diffusers' from_pretrained takes for a hub id."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", value)) and not (project / value).exists()


# The hub repositories: one item per destination of the parameters that name them (``_snapshot_items``).
FLUX_ITEM = Item(
    "FLUX.1-dev",
    "flux",
    None,
    repo=FLUX_REPO,
    size=sum(n for _, n in FLUX_FILES),
    size_approx=True,
    files=FLUX_FILES,
    allow_patterns=FLUX_PATTERNS,
    note="gated: accept the licence on its hub page; HF_TOKEN of that account. The diffusers layout only "
    "(not the single-file flux1-dev.safetensors / ae.safetensors); the size counts its large files",
)
CONTROLNET_ITEM = Item(
    "Flux.1-dev-Controlnet-Upscaler",
    "baselines",
    None,
    repo=CONTROLNET_REPO,
    size=CONTROLNET_APPROX_SIZE,
    size_approx=True,
    allow_patterns=CONTROLNET_PATTERNS,
    note="a FluxControlNetModel for FLUX.1-dev (its own licence); its example images are not fetched",
)
FILTER_ITEM = Item(
    "nsfw_image_detection",
    "filter",
    None,
    repo=FILTER_REPO,
    size=FILTER_APPROX_SIZE,
    size_approx=True,
    allow_patterns=FILTER_FILES,
    note="FluxGen's content filter (FLUX.1-dev licence 2(e)(i)(A)), the classifier Black Forest Labs' cli.py runs",
)


def _snapshot_items(
    template: Item, keys: tuple[str, ...], params: Mapping[str, Any], project: Path
) -> tuple[list[Item], list[str]]:
    """One item per distinct destination among the parameters ``keys`` that name this repository or a folder."""
    by_dest: dict[Path | None, list[str]] = {}
    for key in keys:
        value = lookup(params, *key.split("."))
        if value is None:
            continue
        value = str(value)
        if _is_hub_id(value, project):
            if value != template.repo:
                continue  # another hub model: not this manifest's
            by_dest.setdefault(None, []).append(key)
        elif not hub.is_model_folder(project / value) or (project / value / hub.RECORDS).is_dir():
            # a folder to fill, or one a snapshot download (its records) left to complete
            by_dest.setdefault((project / value).resolve(), []).append(key)
        # else: a model folder of the user's own (the tiny models, a copy made by hand): not the manifest's
    items = [replace(template, dest=dest, used_by=tuple(used)) for dest, used in by_dest.items()]
    unused = (
        f"{template.group} {template.repo}: none of {', '.join(keys)} names it or a folder to fill "
        "(your own folders are left alone)"
    )
    return items, [] if items else [unused]


def iqa_specs(params: Mapping[str, Any]) -> list[Any]:
    """The distinct metric specs of ``iqa.metrics`` and ``evaluate.metrics`` (a name may come with two settings)."""
    from fluxir import iqa

    groups = lookup(params, "evaluate", "metrics") or {}
    specs = [*(lookup(params, "iqa", "metrics") or []), *(s for g in groups.values() for s in (g or {}).values())]
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
    current, weights_dir = iqa_weights.weights_home(), lookup(params, "iqa", "weights_dir")
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
                items[need.path] = replace(old, used_by=(*old.used_by, spec.name))
                continue
            note = (
                "SHA-256 from the digest in OpenAI's URL"
                if need.sha256
                else "SHA-256 prefix from torch hub's file-name convention"
                if digest
                else f"{unpublished_digest(url)}; fluxir.preflight then loads it and compares its keys"
            )
            items[need.path] = Item(
                need.path.name,
                "iqa",
                need.path,
                url=url,
                size=PUBLISHED_SIZES.get(need.path.name),
                sha256=digest,
                used_by=(spec.name,),
                note=note,
            )
    return list(items.values()), skipped


def _benchmark_items(
    params: Mapping[str, Any], catalog: Mapping[str, Any], project: Path
) -> tuple[list[Item], list[str]]:
    benchmarks = lookup(params, "evaluate", "benchmarks") or {}
    archives: dict[str, dict[str, Any]] = {}
    skipped = []
    for key, (file_name, url, rules, note) in BENCHMARK_ARCHIVES.items():
        entry = benchmarks.get(key)
        if not isinstance(entry, Mapping):
            skipped.append(f"benchmarks {key}: not in evaluate.benchmarks of this env")
            continue
        folders = catalog.get(f"{key}_benchmark")
        if not isinstance(folders, Mapping):
            skipped.append(f"benchmarks {key}: no catalog entry {key}_benchmark in this env")
            continue
        row = archives.setdefault(file_name, {"url": url, "extract": [], "used_by": [], "notes": []})
        for pattern, folder_key in rules:
            if folders.get(folder_key) is None:
                continue
            row["extract"].append((pattern, (project / str(folders[folder_key])).resolve()))
        row["used_by"].append(f"catalog {key}_benchmark")
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
                size=PUBLISHED_SIZES.get(file_name),
                sha256=PUBLISHED_SHA256.get(file_name),
                extract=tuple(row["extract"]),
                used_by=tuple(row["used_by"]),
                note="; ".join(
                    [*row["notes"]] + ([] if file_name in PUBLISHED_SHA256 else [unpublished_digest(row["url"])])
                ),
            )
        )
    return items, skipped


def _baseline_items(params: Mapping[str, Any], project: Path) -> tuple[list[Item], list[str]]:
    weights = lookup(params, *REALESRGAN_PARAM.split("."))
    items, skipped = _snapshot_items(CONTROLNET_ITEM, (CONTROLNET_PARAM,), params, project)
    if weights is None:
        return items, [f"baselines RealESRGAN_x4plus.pth: {REALESRGAN_PARAM} is not set in this env", *skipped]
    realesrgan = Item(
        "RealESRGAN_x4plus.pth",
        "baselines",
        (project / str(weights)).resolve(),
        url=REALESRGAN_URL,
        size=PUBLISHED_SIZES["RealESRGAN_x4plus.pth"],
        sha256=PUBLISHED_SHA256["RealESRGAN_x4plus.pth"],
        used_by=(REALESRGAN_PARAM,),
        note="Real-ESRGAN release v0.1.0 (the release states no digest; this one is what its users record); "
        "loaded by basicsr's RRDBNet",
    )
    return [realesrgan, *items], skipped


def _filter_items(params: Mapping[str, Any], project: Path) -> tuple[list[Item], list[str]]:
    if lookup(params, "fluxgen", "content_filter", "enabled") is False:
        return [], [f"filter {FILTER_REPO}: fluxgen.content_filter.enabled is false in this env"]
    return _snapshot_items(FILTER_ITEM, (FILTER_PARAM,), params, project)


def build(
    params: Mapping[str, Any], project: Path, only: tuple[str, ...] = GROUPS, catalog: Mapping[str, Any] | None = None
) -> Manifest:
    """The manifest for an environment's parameters and catalog entries (``catalog_config``), groups ``only``."""
    if "benchmarks" in only and catalog is None:
        raise ValueError("the benchmark folders are catalog entries: pass the environment's catalog config")
    manifest = Manifest()
    for group, build_group in (
        ("flux", lambda: _snapshot_items(FLUX_ITEM, FLUX_PARAMS, params, project)),
        ("iqa", lambda: _iqa_items(params)),
        ("benchmarks", lambda: _benchmark_items(params, catalog, project)),
        ("baselines", lambda: _baseline_items(params, project)),
        ("filter", lambda: _filter_items(params, project)),
    ):
        if group in only:
            rows, skipped = build_group()
            manifest.items += rows
            manifest.unconfigured += skipped
    return manifest
