"""Unpack a verified archive (zip or tar, told apart by content) into the catalog's image folders.

Each rule is ``(member pattern, folder)``: the archive's image files whose path matches the glob
pattern (alternatives separated by ``|``) are written, flat, into the folder (the benchmark folders of
the catalog entries <key>_benchmark, conf/base/catalog_evaluate.yml).
A folder is filled in a temporary sibling and renamed into place only when every rule found its
files, so a broken archive leaves nothing half-installed. A ``.fetched.json`` in the folder records
which archive it came from and its files: a second run finds it and skips the download. A folder that
already holds images without that record (put there by hand) is left alone.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MARKER = ".fetched.json"


def _is_image_member(name: str) -> bool:
    path = PurePosixPath(name)
    return path.suffix.lower() in IMAGE_SUFFIXES and "__MACOSX" not in path.parts and not path.name.startswith("._")


@contextmanager
def _members(archive: Path) -> Iterator[tuple[list[str], Any]]:
    """The archive's file names and an ``open(name) -> binary file`` function."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield [i.filename for i in zf.infolist() if not i.is_dir()], zf.open
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            files = {m.name: m for m in tf.getmembers() if m.isfile()}
            yield list(files), lambda name: tf.extractfile(files[name])
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive; download it again")


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def installed_from(folder: Path, archive_name: str) -> bool:
    """``folder`` holds every file that ``archive_name`` put there (its record says so)."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    record = json.loads(marker.read_text())
    return record.get("archive") == archive_name and all((folder / f).is_file() for f in record.get("files", []))


def folder_state(folder: Path, archive_name: str) -> str:
    """``installed`` (by this archive), ``user`` (images put there otherwise: left alone) or ``missing``."""
    if installed_from(folder, archive_name):
        return "installed"
    ours = (folder / MARKER).is_file()  # an incomplete install of ours is replaced; a user's folder never
    return "user" if images_in(folder) and not ours else "missing"


def plan_members(names: list[str], rules: list[tuple[str, Path]], archive: Path) -> dict[Path, list[str]]:
    """Members per destination folder; raises if a rule matches nothing or two members share a file name."""
    planned: dict[Path, list[str]] = {}
    for pattern, folder in rules:
        matched = [n for n in names if _is_image_member(n) and any(fnmatch.fnmatch(n, p) for p in pattern.split("|"))]
        if not matched:
            raise ValueError(
                f"{archive.name} has no image matching {pattern!r} (for {folder}); the archive's layout "
                f"is not the one the manifest knows: its first entries are {sorted(names)[:5]}"
            )
        planned.setdefault(folder, []).extend(matched)
    for folder, members in planned.items():
        seen: dict[str, str] = {}
        for name in members:
            base = PurePosixPath(name).name
            if base in seen:
                raise ValueError(f"{archive.name}: {seen[base]!r} and {name!r} would both become {folder / base}")
            seen[base] = name
    return planned


def _write_member(opener: Any, name: str, target: Path) -> None:
    source: IO[bytes]
    with opener(name) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def unpack(
    archive: Path, rules: list[tuple[str, Path]], archive_name: str, digest: str, skip: set[Path] = frozenset()
) -> dict[Path, int]:
    """Write the images matched by ``rules`` into their folders (not those in ``skip``); returns counts."""
    counts: dict[Path, int] = {}
    with _members(archive) as (names, opener):
        planned = plan_members(names, rules, archive)
        for folder, members in planned.items():
            if folder in skip:
                continue
            staging = folder.with_name(f".{folder.name}.fetching")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            files = []
            for name in members:
                base = PurePosixPath(name).name
                _write_member(opener, name, staging / base)
                files.append(base)
            (staging / MARKER).write_text(
                json.dumps({"archive": archive_name, "sha256": digest, "files": sorted(files)}, indent=1)
            )
            if folder.exists():  # empty or ours (checked by the caller): replaced as a whole
                shutil.rmtree(folder)
            staging.rename(folder)
            counts[folder] = len(files)
    return counts
