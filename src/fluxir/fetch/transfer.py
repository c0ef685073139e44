"""One file from a URL (or a mirror) to its place through ``<dest>.part``: resumed (HTTP ``Range``, also by the
next run), verified against the published size and SHA-256, then moved in (a wrong file is never installed);
an archive's images unpacked into the catalog's folders. Standard library only (urllib).
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fluxir.io.provenance import sha256_file

CHUNK = 1 << 20
RETRIES = 5  # reconnections per file within one run, each resuming where the last one stopped
TIMEOUT_S = 60
USER_AGENT = "fluxir-fetch (urllib)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MARKER = ".fetched.json"  # an unpacked folder's record: which archive, which files


class VerifyError(RuntimeError):
    """A downloaded file is not the published one (size or SHA-256); it was not installed."""


class DownloadError(RuntimeError):
    """The server refused the file (404, 401, 403, ...) or the connection kept failing."""


@dataclass(frozen=True)
class Expected:
    """What the publisher states about a file; None where nothing is published."""

    size: int | None = None
    sha256: str | None = None  # a full hex digest, or the published prefix (torch hub names: name-<8 hex>.ext)


def verify(path: Path, expected: Expected, name: str | None = None) -> str | None:
    """None when ``path`` matches ``expected``, else the reason naming ``name`` (default: the file's own)."""
    size, name, published = path.stat().st_size, name or path.name, expected.sha256
    if expected.size is not None and size != expected.size:
        return f"{name}: {size} bytes, the publisher's file has {expected.size}"
    if published and not (digest := sha256_file(path)).startswith(published.lower()):
        what = "SHA-256" if len(published) == 64 else f"SHA-256 prefix {published}"
        return f"{name}: SHA-256 {digest}, expected {what}" + ("" if len(published) < 64 else f" {published}")
    return None


def _open(url: str, start: int) -> Any:
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, **({"Range": f"bytes={start}-"} if start else {})}
    )
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the part already holds every byte
            return None
        raise DownloadError(_http_advice(url, err.code)) from err
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"{url}: {getattr(err, 'reason', err)}") from err


def _http_advice(url: str, code: int) -> str:
    advice = {
        404: "not found: the file was moved or the mirror lacks it (a mirror needs the same file names)",
        401: "unauthorised: this server wants credentials",
        403: "forbidden: the server refuses this file to this client (a licence to accept, or a login)",
    }.get(code, "server error")
    return f"{url}: HTTP {code} {advice}"


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib, keeping each hop's headers (the hub states digests on its redirect)."""

    def __init__(self) -> None:
        self.hops: list[Any] = []

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.hops.append(headers)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()  # a HEAD stays a HEAD
        return new


def _linked_sha256(value: str | None) -> str | None:
    digest = (value or "").removeprefix("W/").strip('"').lower()
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def remote_info(url: str) -> Expected:
    """What the server states about ``url`` (a HEAD request): its size, and the SHA-256 the Hugging Face hub
    gives LFS files (``X-Linked-Etag`` / ``X-Linked-Size``); ``Expected()`` when it cannot be asked."""
    if not url.startswith(("http://", "https://")):  # a mirror folder's file
        return Expected(Path(url).stat().st_size if Path(url).is_file() else None)
    redirects = _RecordRedirects()
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.build_opener(redirects).open(request, timeout=TIMEOUT_S) as response:
            hops = [*redirects.hops, response.headers]
    except urllib.error.HTTPError as err:
        raise DownloadError(_http_advice(url, err.code)) from err
    except (urllib.error.URLError, OSError, ValueError):
        return Expected()
    sha256 = next((d for h in hops if (d := _linked_sha256(h.get("X-Linked-Etag")))), None)
    linked = next((h.get("X-Linked-Size") for h in hops if h.get("X-Linked-Size")), None)
    length = linked or hops[-1].get("Content-Length")
    return Expected(int(length) if length is not None and length.isdigit() else None, sha256)


def _copy_to_part(url: str, part: Path, on_bytes: Callable[[int], None]) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the total size the server announced (or None)."""
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start)
    if response is None:
        return start
    with response:
        if response.headers.get_content_type() == "text/html":
            raise DownloadError(
                f"{url}: the server sent a web page instead of the file (a sign-in, quota or "
                f"confirmation page): download it in a browser and give its folder as --mirror"
            )
        status = getattr(response, "status", 200)
        resumed = start > 0 and status == 206
        if start and not resumed:  # the server sent the whole file: start the part again
            on_bytes(-start)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as out:
            _stream(response, out, on_bytes)
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes")
    return total


def download(
    url: str,
    dest: Path,
    expected: Expected,
    *,
    on_bytes: Callable[[int], None] = lambda n: None,
    retries: int = RETRIES,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; ``on_bytes(n)`` is told every chunk (negative: a part
    restarted). ``ConnectionError`` when ``retries`` reconnections all broke (the part stays for the next run)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        on_bytes(part.stat().st_size)  # resumed from an earlier run
    announced = None
    for attempt in range(retries + 1):
        try:
            announced = _copy_to_part(url, part, on_bytes)
            break
        except (ConnectionError, http.client.HTTPException, TimeoutError) as err:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise ConnectionError(
                    f"{err}; gave up after {retries} reconnections, {kept} bytes kept in {part} (run again to resume)"
                ) from err
    wanted = expected if expected.size is not None or announced is None else Expected(announced, expected.sha256)
    failure = f"not installed ({url}). Run again to download it anew; if it fails again the source serves another file"
    return _move_in(part, dest, wanted, failure + " than the one published")


def copy_file(
    source: Path, dest: Path, expected: Expected, *, on_bytes: Callable[[int], None] = lambda n: None
) -> Path:
    if not source.is_file():
        raise DownloadError(f"{source}: not in the mirror folder (a mirror holds the files under the names of --list)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with open(source, "rb") as src, open(part, "wb") as out:
        _stream(src, out, on_bytes)
    return _move_in(part, dest, expected, f"not installed (mirror file {source})")


def _stream(source: Any, out: Any, on_bytes: Callable[[int], None]) -> None:
    for chunk in iter(lambda: source.read(CHUNK), b""):
        out.write(chunk)
        on_bytes(len(chunk))


def _move_in(part: Path, dest: Path, expected: Expected, failure: str) -> Path:
    """Rename ``part`` onto ``dest`` if it is the published file; else delete it and raise, naming ``failure``."""
    if problem := verify(part, expected, dest.name):
        part.unlink()
        raise VerifyError(f"{problem}; {failure}")
    os.replace(part, dest)
    return dest


def mirrored(url: str, file_name: str, mirror: str | None) -> str:
    """The address of ``file_name`` on ``mirror`` (a folder or an http(s) URL), or ``url`` without one."""
    if not mirror:
        return url
    if mirror.startswith(("http://", "https://")):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(file_name)
    return str(Path(mirror).expanduser().resolve() / file_name)


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing parent: where the file system that will hold it can be asked."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing_parent(path)).free


def sha256_prefix_from_name(name: str) -> str | None:
    """torch hub's naming convention ``name-<first 8+ hex of the SHA-256>.ext`` (torchvision's files)."""
    stem = name.rsplit(".", 1)[0]
    _, _, tail = stem.rpartition("-")
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


def _is_image_member(name: str) -> bool:
    path = PurePosixPath(name)
    return path.suffix.lower() in IMAGE_SUFFIXES and "__MACOSX" not in path.parts and not path.name.startswith("._")


@contextmanager
def _members(archive: Path) -> Iterator[tuple[list[str], Any]]:
    """The archive's file names and an ``open(name) -> binary file`` function (zip or tar, told by content)."""
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


def folder_state(folder: Path, archive_name: str) -> str:
    """``installed`` (by this archive), ``user`` (images put there otherwise: left alone) or ``missing``."""
    marker = folder / MARKER
    if not marker.is_file():
        return "user" if images_in(folder) else "missing"
    record = json.loads(marker.read_text())  # ours: replaced unless complete (a user's folder never is)
    complete = all((folder / f).is_file() for f in record.get("files", []))
    return "installed" if record.get("archive") == archive_name and complete else "missing"


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


def unpack(
    archive: Path, rules: list[tuple[str, Path]], archive_name: str, digest: str, skip: set[Path] = frozenset()
) -> dict[Path, int]:
    """Write the images matched by ``rules`` (``(member glob | glob, folder)``) flat into their folders (not those in
    ``skip``); returns counts. Each folder is filled in a temporary sibling and renamed into place with its record."""
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
                with opener(name) as source, open(staging / base, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                files.append(base)
            (staging / MARKER).write_text(
                json.dumps({"archive": archive_name, "sha256": digest, "files": sorted(files)}, indent=1)
            )
            if folder.exists():  # empty or ours (checked by the caller): replaced as a whole
                shutil.rmtree(folder)
            staging.rename(folder)
            counts[folder] = len(files)
    return counts
