"""One file from a URL (or a mirror) to its place: resumed, verified, then moved in.

The bytes go to ``<dest>.part`` first. A cut connection is resumed with an HTTP ``Range`` request
(within this run, and by the next run from the ``.part`` left behind); a server that ignores the
range sends the whole file again and the part is restarted. Only a file whose size and SHA-256 match
what the manifest publishes is renamed onto ``dest``; a mismatch deletes the part and raises a
:class:`VerifyError` naming the file and both values, so a wrong file is never installed.

Only the standard library (urllib) is used: the same code serves huggingface.co ``resolve`` URLs,
GitHub releases, an internal HTTP mirror and a mirror folder (``file`` copies).
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxir.io.provenance import sha256_file

CHUNK = 1 << 20
RETRIES = 5  # reconnections per file within one run, each resuming where the last one stopped
TIMEOUT_S = 60
USER_AGENT = "fluxir-fetch (urllib)"


class VerifyError(RuntimeError):
    """A downloaded file is not the published one (size or SHA-256); it was not installed."""


class DownloadError(RuntimeError):
    """The server refused the file (404, 401, 403, ...) or the connection kept failing."""


@dataclass(frozen=True)
class Expected:
    """What the publisher states about a file; None where nothing is published."""

    size: int | None = None
    sha256: str | None = None  # a full hex digest, or the published prefix (torch hub names: name-<8 hex>.ext)

    def problem(self, path: Path, digest: str | None, name: str | None = None) -> str | None:
        """Why ``path`` (the file ``name``) is not the published file, or None when it is (or nothing is
        published)."""
        size, name = path.stat().st_size, name or path.name
        if self.size is not None and size != self.size:
            return f"{name}: {size} bytes, the publisher's file has {self.size}"
        if self.sha256 and digest is not None and not digest.startswith(self.sha256.lower()):
            what = "SHA-256" if len(self.sha256) == 64 else f"SHA-256 prefix {self.sha256}"
            return f"{name}: SHA-256 {digest}, expected {what}" + ("" if len(self.sha256) < 64 else f" {self.sha256}")
        return None


def verify(path: Path, expected: Expected, name: str | None = None) -> str | None:
    """None when ``path`` matches ``expected``, else the reason naming ``name`` (default: the file's own); its
    digest is computed only when one is published."""
    if expected.size is not None and path.stat().st_size != expected.size:
        return expected.problem(path, None, name)
    return expected.problem(path, sha256_file(path) if expected.sha256 else None, name)


def _open(url: str, start: int, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    if start:
        request.add_header("Range", f"bytes={start}-")
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


def remote_info(url: str, headers: dict[str, str] | None = None) -> Expected:
    """What the server states about ``url`` (a HEAD request): its size, and the SHA-256 the Hugging Face hub
    gives LFS files (``X-Linked-Etag`` / ``X-Linked-Size``); ``Expected()`` when it cannot be asked."""
    if url.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        return Expected(path.stat().st_size if path.is_file() else None)
    redirects = _RecordRedirects()
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT, **(headers or {})})
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


def _copy_to_part(url: str, part: Path, on_bytes: Callable[[int], None], headers: dict[str, str]) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the total size the server announced (or None)."""
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start, headers)
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
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                on_bytes(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes")
    return total


def download(
    url: str,
    dest: Path,
    expected: Expected,
    *,
    on_bytes: Callable[[int], None] = lambda n: None,
    headers: dict[str, str] | None = None,
    retries: int = RETRIES,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``: resumed, verified, then renamed onto ``dest``.

    ``on_bytes(n)`` is told every chunk written (negative when a part is restarted). Raises
    :class:`DownloadError` for an HTTP refusal, :class:`VerifyError` for a file that is not the
    published one (the part is deleted), ``ConnectionError`` when ``retries`` reconnections all broke
    (the part stays for the next run).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        on_bytes(part.stat().st_size)  # resumed from an earlier run
    announced = None
    for attempt in range(retries + 1):
        try:
            announced = _copy_to_part(url, part, on_bytes, headers or {})
            break
        except (ConnectionError, http.client.HTTPException, TimeoutError) as err:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise ConnectionError(
                    f"{err}; gave up after {retries} reconnections, {kept} bytes kept in {part} (run again to resume)"
                ) from err
    wanted = expected if expected.size is not None or announced is None else Expected(announced, expected.sha256)
    problem = verify(part, wanted, dest.name)
    if problem:
        part.unlink()
        raise VerifyError(
            f"{problem}; not installed ({url}). Run again to download it anew; if it fails again the "
            f"source serves another file than the one published"
        )
    os.replace(part, dest)
    return dest


def copy_file(
    source: Path, dest: Path, expected: Expected, *, on_bytes: Callable[[int], None] = lambda n: None
) -> Path:
    """A mirror folder's file copied to ``dest`` through ``dest.part``, verified like a download."""
    if not source.is_file():
        raise DownloadError(f"{source}: not in the mirror folder (a mirror holds the files under the names of --list)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with open(source, "rb") as src, open(part, "wb") as out:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            out.write(chunk)
            on_bytes(len(chunk))
    problem = verify(part, expected, dest.name)
    if problem:
        part.unlink()
        raise VerifyError(f"{problem}; not installed (mirror file {source})")
    os.replace(part, dest)
    return dest


def mirrored(url: str, file_name: str, mirror: str | None) -> str:
    """The address of ``file_name`` on ``mirror`` (a folder or an http(s) URL), or ``url`` without one."""
    if not mirror:
        return url
    if mirror.startswith(("http://", "https://")):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(file_name)
    return str(Path(mirror).expanduser().resolve() / file_name)


def free_bytes(path: Path) -> int:
    """Free space on the file system that will hold ``path`` (its nearest existing parent)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def device_of(path: Path) -> int:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.stat().st_dev


def sha256_prefix_from_name(name: str) -> str | None:
    """torch hub's naming convention ``name-<first 8+ hex of the SHA-256>.ext`` (torchvision's files)."""
    stem = name.rsplit(".", 1)[0]
    _, _, tail = stem.rpartition("-")
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None
