"""The test sets of paper Sec. 4.1 (DIV2K-Val ``synthetic``, RealSR and DrealSR ``paired``, RealLQ250 ``lq_only``),
prepared from the files a user downloads into ``<prepared_benchmarks>/<name>/<key>/{lq,hq}/<image>.png``, the key
hashing settings and sources; a benchmark whose folder is missing or empty is skipped, wrong content is an error."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fluxir.fluxgen.degrade import DegradationConfig, degrade_pair
from fluxir.io.atomic import write_png_atomic
from fluxir.io.images import image_size, read_image
from fluxir.io.provenance import hash_json
from fluxir.parameters.config import Config, Rule, field_problems

log = logging.getLogger(__name__)

KINDS = ("synthetic", "paired", "lq_only")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_STRIP_SUFFIX = r"(_HR|_LR\d*|_x\d+)$"
MANIFEST_COLUMNS = ["dataset", "image", "lq_path", "hq_path", "source", "prep_key"]
OUTPUT_COLUMNS = ["dataset", "image", "method", "path"]  # one row per output image of any method, any source
DEMO_MARKER = "FLUXIR_DEMO_DATA.txt"
DOCS = "docs/evaluation.md"
_SPEC_KEYS = ("name", "kind", "hq_size", "lq_size", "num_images", "seed", "strip_suffix")
FOLDERS_ENTRY = "{key}_benchmark"  # the catalog entry of benchmark <key>'s downloaded folders
SIDES = {"synthetic": ("hq",), "paired": ("hq", "lq"), "lq_only": ("lq",)}  # the folders each kind reads


@dataclass(frozen=True, kw_only=True)
class BenchmarkSpec(Config):
    """One ``evaluate.benchmarks`` entry and the folders of its catalog entry ``<key>_benchmark``. ``num_images``:
    the number of crops for ``synthetic``, else an upper bound (first files by name; ``None``: all)."""

    name: str
    kind: str
    hq_dir: str | None = None
    lq_dir: str | None = None
    hq_size: int | None = None  # unused for lq_only; the others must set it (a rule says so)
    lq_size: int
    num_images: int | None = None
    seed: int = 0
    strip_suffix: str = DEFAULT_STRIP_SUFFIX

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], folders: Mapping[str, Any] | None = None, entry: str = "<key>_benchmark"
    ) -> BenchmarkSpec:
        """From parameters and the folders ``{"hq": ..., "lq": ...}`` of its catalog ``entry`` (None: the settings
        alone are checked)."""
        if not isinstance(params, Mapping):
            raise TypeError(f"a benchmark entry must be a mapping, got {params!r}")
        if unknown := sorted(set(params) - set(_SPEC_KEYS)):
            stale = {"hq_dir", "lq_dir"} & set(unknown)
            moved = " (the folders are the catalog entry's hq_path / lq_path)" if stale else ""
            raise ValueError(
                f"benchmark {params.get('name')!r}: unknown setting(s) {unknown}; known: {list(_SPEC_KEYS)}{moved}"
            )
        given = {f"{side}_dir": str(path) if path else None for side, path in (folders or {}).items()}
        spec = cls(**dict(params), **given)
        if folders is not None:
            spec.check_folders(entry)
        return spec

    def check_folders(self, entry: str = "<key>_benchmark") -> None:
        """Raise ValueError naming the catalog ``entry`` when it lacks a folder this kind reads."""
        needs = SIDES[self.kind]
        if lacking := [f"{side}_path" for side in needs if not getattr(self, f"{side}_dir")]:
            raise ValueError(
                f"benchmark {self.name!r}: kind {self.kind!r} reads {' and '.join(f'{s}_path' for s in needs)}; set "
                f"{' and '.join(lacking)} in its catalog entry {entry} (conf/<env>/catalog_evaluate.yml)"
            )

    def problems(self) -> list[str]:
        """Every setting with which the spec cannot be prepared (the folders: ``check_folders``)."""
        where = f"benchmark {self.name!r}: "
        sizes = ("lq_size",) if self.kind == "lq_only" else ("hq_size", "lq_size")
        size_rules = [
            Rule(key, "multiple_of", 16, must="a positive multiple of 16 (Flux latent grid)") for key in sizes
        ]
        found = field_problems(self, [Rule("kind", "choice", KINDS)], where)
        found += (size_problems := field_problems(self, size_rules, where))
        if len(sizes) == 2 and not size_problems and self.hq_size % self.lq_size:
            found.append(f"{where}hq_size {self.hq_size} must be a multiple of lq_size {self.lq_size}")
        found += field_problems(
            self, [Rule("num_images", "positive_int", nullable=True), Rule("seed", "integer")], where
        )
        if self.kind == "synthetic" and self.num_images is None:
            found.append(f"{where}a synthetic benchmark needs num_images (the paper: 600 crops)")
        try:
            re.compile(self.strip_suffix)
        except (re.error, TypeError) as err:
            found.append(f"{where}strip_suffix {self.strip_suffix!r} is not a regular expression: {err}")
        return found

    @property
    def scale(self) -> int | None:  # None without HQ
        return None if self.kind == "lq_only" else self.hq_size // self.lq_size

    @property
    def source_dirs(self) -> list[str]:  # the folders a user fills
        return [getattr(self, f"{side}_dir") for side in SIDES[self.kind]]


@dataclass
class PreparedBenchmark:
    """One benchmark after preparation: ``status`` "ready" or "skipped", a message, and its images."""

    name: str
    status: str
    message: str
    images: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MANIFEST_COLUMNS))
    demo: bool = False
    reason: str = ""  # why it was skipped

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def outputs_table(rows: list[list[Any]]) -> pd.DataFrame:
    """Rows of (dataset, image, method, path) as the outputs table every restorer and baseline fills."""
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centred ``size`` x ``size`` crop of an (H, W, 3) array; ValueError when the image is smaller."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image of (width, height)={(w, h)} is smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def aligned_crops(hq: np.ndarray, lq: np.ndarray, lq_size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HQ crop (scale*lq_size)^2, LQ centre crop lq_size^2) of one registered pair, covering the same scene.

    LQ pixel (y, x) covers HQ pixels [scale*y, scale*y + scale) (grids aligned at the top-left corner, as
    BasicSR's ``mod_crop`` assumes), so the HQ offset is exactly ``scale`` x the LQ offset. Centre-cropping
    each image on its own would shift the HQ by up to ``scale / 2`` px against its LQ whenever an LQ side
    is odd; extra HQ rows/columns at the right/bottom (a slightly larger HQ) are ignored.
    """
    lh, lw = lq.shape[:2]
    hq_size = lq_size * scale
    top, left = (lh - lq_size) // 2, (lw - lq_size) // 2
    if top < 0 or left < 0:
        raise ValueError(f"LQ of (width, height)={(lw, lh)} is smaller than the {lq_size}x{lq_size} crop")
    if hq.shape[0] < scale * top + hq_size or hq.shape[1] < scale * left + hq_size:
        raise ValueError(
            f"HQ of (width, height)={hq.shape[1::-1]} does not cover the {hq_size}px crop at "
            f"(top, left)={(scale * top, scale * left)} = {scale} x the LQ crop's offset"
        )
    return (
        np.ascontiguousarray(hq[scale * top : scale * top + hq_size, scale * left : scale * left + hq_size]),
        np.ascontiguousarray(lq[top : top + lq_size, left : left + lq_size]),
    )


def pair_key(stem: str, strip_suffix: str = DEFAULT_STRIP_SUFFIX) -> str:
    """The name shared by an HQ and its LQ file: the stem without e.g. ``_HR``, ``_LR4``, ``_x4``."""
    return re.sub(strip_suffix, "", stem) or stem


def _prep_key(spec: BenchmarkSpec, extra: Any, files: list[Path]) -> str:
    return hash_json([asdict(spec), extra, [[p.name, p.stat().st_size] for p in files]])


def missing_files(spec: BenchmarkSpec) -> str | None:
    """Why a benchmark cannot run (a folder absent or without images), or None when its files are there."""
    for folder in spec.source_dirs:
        if not Path(folder).is_dir():
            return f"folder {folder} not found"
        if not list_images(folder):
            return f"folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})"
    return None


def prepare_benchmark(
    spec: BenchmarkSpec, prepared_dir: str | Path, degradation: Mapping[str, Any] | None = None
) -> PreparedBenchmark:
    """Prepare one benchmark into ``prepared_dir``, or return it skipped (logged) when its files are missing.
    ``degradation``: ``params:degrade.config``, for the synthetic kind (crop size and position are set here)."""
    spec.check_folders()
    reason = missing_files(spec)
    if reason is not None:
        message = (
            f"{spec.name}: skipped, {reason}. Download it and put the files there "
            f"(see {DOCS}); the other benchmarks still run."
        )
        log.warning(message)
        return PreparedBenchmark(spec.name, "skipped", message, reason=reason)
    demo = any(d and (Path(d) / DEMO_MARKER).is_file() for d in spec.source_dirs)
    if demo:
        log.warning("%s: the folders hold fluxir's DEMO data (%s), not the real benchmark", spec.name, DEMO_MARKER)
    out_root = Path(prepared_dir) / spec.name
    if spec.kind == "synthetic":
        table = _prepare_synthetic(spec, out_root, degradation or {})
    elif spec.kind == "paired":
        table = _prepare_paired(spec, out_root)
    else:
        table = _prepare_lq_only(spec, out_root)
    if table.empty:
        raise ValueError(f"{spec.name}: no usable image in {spec.source_dirs} (see the warnings above and {DOCS})")
    has_hq = "with HQ" if spec.kind != "lq_only" else "LQ only"
    message = f"{spec.name}: {len(table)} images ready ({has_hq}, LQ {spec.lq_size}px){' [demo data]' if demo else ''}"
    log.info(message)
    return PreparedBenchmark(spec.name, "ready", message, table.reset_index(drop=True), demo)


def sources_too_small(spec: BenchmarkSpec) -> dict[str, tuple[int, list[str]]]:
    """{folder: (images, names of those smaller than the run's crops)}: the HQ ``hq_size`` crops of synthetic
    and paired benchmarks, the LQ ``lq_size`` crops of paired and LQ-only ones (image headers only)."""
    out = {}
    for folder, size in ((getattr(spec, f"{s}_dir"), getattr(spec, f"{s}_size")) for s in SIDES[spec.kind]):
        files = list_images(folder)
        out[str(folder)] = (len(files), [p.name for p in files if min(image_size(p)) < size])
    return out


def _prepare_synthetic(spec: BenchmarkSpec, out_root: Path, degradation: Mapping[str, Any]) -> pd.DataFrame:
    # The reference is the original crop, never USM-sharpened (that is for training HQ only): a sharpened
    # reference would reward over-sharpening, as in StableSR's DIV2K-Val that SeeSR and later papers use.
    crop = {"crop_sizes": [[spec.hq_size, spec.hq_size]], "crop_position": "random", "use_usm": False}
    config = DegradationConfig.from_params({**degradation, **crop})
    if config.scale != spec.scale:
        raise ValueError(f"{spec.name}: hq_size/lq_size = {spec.scale} but the degradation scale is {config.scale}")
    files = list_images(spec.hq_dir)
    usable = [p for p in files if min(image_size(p)) >= spec.hq_size]
    if len(usable) < len(files):
        small = [p.name for p in files if p not in usable]
        log.warning(
            "%s: %d source image(s) smaller than %dpx skipped: %s", spec.name, len(small), spec.hq_size, small[:5]
        )
    if not usable:
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    key = _prep_key(spec, config.to_dict(), usable)
    hq_dir, lq_dir = out_root / key / "hq", out_root / key / "lq"
    n = len(usable)
    rows: dict[int, list[Any]] = {}
    for k, source in enumerate(usable):  # all crops of one source in a row: each file is read once
        loaded: np.ndarray | None = None
        for i in range(k, spec.num_images, n):
            image = f"{source.stem}_{i // n}"
            hq_path, lq_path = hq_dir / f"{image}.png", lq_dir / f"{image}.png"
            if not (hq_path.is_file() and lq_path.is_file()):
                loaded = read_image(source) if loaded is None else loaded
                hq, lq, _ = degrade_pair(loaded, image, spec.seed, config)
                write_png_atomic(hq_path, hq)
                write_png_atomic(lq_path, lq)
            rows[i] = [spec.name, image, str(lq_path), str(hq_path), str(source), key]
    return pd.DataFrame([rows[i] for i in sorted(rows)], columns=MANIFEST_COLUMNS)


def _prepare_paired(spec: BenchmarkSpec, out_root: Path) -> pd.DataFrame:
    hq_files, lq_files = ({pair_key(p.stem, spec.strip_suffix): p for p in list_images(d)} for d in spec.source_dirs)
    keys = sorted(hq_files.keys() & lq_files.keys())
    if unmatched := sorted(hq_files.keys() ^ lq_files.keys()):
        log.warning(
            "%s: %d file(s) without a partner (after stripping %r) ignored, e.g. %s",
            spec.name,
            len(unmatched),
            spec.strip_suffix,
            unmatched[:5],
        )
    if not keys:
        raise ValueError(
            f"{spec.name}: no HQ/LQ pair in {spec.hq_dir} and {spec.lq_dir}. Files pair by name once "
            f"{spec.strip_suffix!r} is stripped from the stem (e.g. Canon_001_HR.png + Canon_001_LR4.png); "
            f"HQ has e.g. {sorted(hq_files)[:3]}, LQ {sorted(lq_files)[:3]} (see {DOCS})"
        )
    keys = keys[: spec.num_images]
    sources = [hq_files[k] for k in keys] + [lq_files[k] for k in keys]
    key = _prep_key(spec, "hq offset = scale x lq offset", sources)
    rows = []
    for name in keys:
        hq_src, lq_src = hq_files[name], lq_files[name]
        (hw, hh), (lw, lh) = image_size(hq_src), image_size(lq_src)
        if abs(hw - spec.scale * lw) > 2 * spec.scale or abs(hh - spec.scale * lh) > 2 * spec.scale:
            raise ValueError(
                f"{spec.name}: {hq_src.name} is {hw}x{hh} but {lq_src.name} is {lw}x{lh}; expected the HQ to be "
                f"x{spec.scale} the LQ (use the x{spec.scale} test split with LQ at its own low resolution, see {DOCS})"
            )
        if min(hw, hh) < spec.hq_size or min(lw, lh) < spec.lq_size:
            log.warning(
                "%s: %s skipped, smaller than the %d/%d px centre crops", spec.name, name, spec.hq_size, spec.lq_size
            )
            continue
        hq_path, lq_path = out_root / key / "hq" / f"{name}.png", out_root / key / "lq" / f"{name}.png"
        if not (hq_path.is_file() and lq_path.is_file()):
            try:
                hq, lq = aligned_crops(read_image(hq_src), read_image(lq_src), spec.lq_size, spec.scale)
            except ValueError as err:
                raise ValueError(f"{spec.name}: {hq_src} / {lq_src}: {err} (see {DOCS})") from err
            write_png_atomic(hq_path, hq)
            write_png_atomic(lq_path, lq)
        rows.append([spec.name, name, str(lq_path), str(hq_path), str(lq_src), key])
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _prepare_lq_only(spec: BenchmarkSpec, out_root: Path) -> pd.DataFrame:
    files = list_images(spec.lq_dir)[: spec.num_images]  # None: all
    key = _prep_key(spec, None, files)
    rows = []
    for source in files:
        if min(image_size(source)) < spec.lq_size:
            log.warning("%s: %s skipped, smaller than the %dpx centre crop", spec.name, source.name, spec.lq_size)
            continue
        lq_path = out_root / key / "lq" / f"{source.stem}.png"
        if not lq_path.is_file():
            write_png_atomic(lq_path, center_crop(read_image(source), spec.lq_size))
        rows.append([spec.name, source.stem, str(lq_path), None, str(source), key])
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def collect(prepared: list[PreparedBenchmark]) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One manifest of all ready benchmarks and a status per benchmark; error when none is ready."""
    status = {
        p.name: {"status": p.status, "message": p.message, "images": len(p.images), "demo": p.demo} for p in prepared
    }
    ready = [p.images for p in prepared if p.ready]
    if not ready:
        raise ValueError(
            f"no benchmark is available; download at least one and put it where its catalog entry "
            f"<key>_benchmark says ({DOCS}): " + "; ".join(f"{p.name}: {p.reason}" for p in prepared)
        )
    manifest = pd.concat(ready, ignore_index=True)
    duplicated = manifest.duplicated(["dataset", "image"])
    if duplicated.any():
        raise ValueError(
            f"duplicate (dataset, image) names: {manifest[duplicated][['dataset', 'image']].values[:5].tolist()}"
        )
    return manifest, status
