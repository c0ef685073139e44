"""Hub repositories through huggingface_hub's snapshot_download: a hub id parameter lands in the Hugging Face
cache, a folder parameter gets the snapshot as that folder. Its errors become one line that says what to do.

A mirror folder (air-gapped clusters) holds a repository as ``<mirror>/<owner>/<name>/`` (what ``hf download
--local-dir`` writes): each file is verified, then copied into the folder or the cache as a snapshot.
"""

from __future__ import annotations

import fnmatch
import hashlib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxir.fetch import transfer
from fluxir.io.atomic import write_atomic

RECORDS = Path(".cache") / "huggingface"  # huggingface_hub's local_dir records (documented layout)


class HubError(RuntimeError):
    pass


@dataclass(frozen=True)
class HubPlan:
    to_download: int | None  # None: unknown (offline)
    files: int
    complete: bool
    note: str = ""


def _snapshot_download(
    repo: str,
    revision: str,
    repo_type: str,
    local_dir: Path | None,
    endpoint: str | None,
    patterns: tuple[str, ...],
    **extra: Any,
) -> Any:
    """``huggingface_hub.snapshot_download`` of the repository; any failure as a :class:`HubError` saying why."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo,
            revision=revision,
            repo_type=repo_type,
            local_dir=local_dir,
            endpoint=endpoint or None,
            allow_patterns=list(patterns) or None,
            **extra,
        )
    except Exception as err:
        raise HubError(explain(err, repo, revision)) from err


def explain(err: Exception, repo: str, revision: str) -> str:
    from huggingface_hub import errors, get_token

    cause = err  # dry runs wrap the HTTP error: explain the innermost hub error
    while not isinstance(cause, errors.HfHubHTTPError) and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    err = cause if isinstance(cause, errors.HfHubHTTPError) else err

    page = f"https://huggingface.co/{repo}"
    status = getattr(getattr(err, "response", None), "status_code", None)
    token = get_token()
    if isinstance(err, errors.GatedRepoError):
        if not token:
            return (
                f"{repo} is gated and no token is set (HTTP {status}): accept its licence on {page}, then "
                f"`export HF_TOKEN=hf_...` (a read token of that account) or `hf auth login`"
            )
        return (
            f"{repo} is gated and this token's account has not accepted its licence (HTTP {status}): open {page} "
            f"with that account and accept it (approval can take a moment), then run again"
        )
    if isinstance(err, errors.RevisionNotFoundError):
        return f"{repo}: revision {revision!r} does not exist (HTTP {status}); see {page}/commits/main"
    if status == 401 or (isinstance(err, errors.RepositoryNotFoundError) and status != 404 and not token):
        return f"{repo}: the hub refused the request (HTTP {status}): " + (
            "the token is invalid or expired; make a new read token and set HF_TOKEN"
            if token
            else "no token is set; `export HF_TOKEN=hf_...` or `hf auth login` (gated and private repos need one)"
        )
    if status == 403:
        return (
            f"{repo}: this token may not read it (HTTP 403): a gated licence to accept on {page}, or a "
            f"fine-grained token without read access to public gated repos"
        )
    if isinstance(err, errors.RepositoryNotFoundError) or status == 404:
        return f"{repo}: no such repository on the hub (HTTP {status}); check the id ({page})"
    if isinstance(err, errors.OfflineModeIsEnabled) or "offline" in str(err).lower():
        return (
            f"{repo} is not in the local cache and HF_HUB_OFFLINE=1 forbids downloads: run the fetch with "
            f"HF_HUB_OFFLINE=0"
        )
    return f"{repo}: {type(err).__name__}: {err}"


def offline(url: str | None = None) -> bool:
    """HF_HUB_OFFLINE=1 (the Makefile's, the tests'): no request to another machine; this machine's are allowed."""
    from huggingface_hub import constants

    host = urllib.parse.urlparse(url or "").hostname or ""
    return constants.is_offline_mode() and not (host == "localhost" or host.startswith("127.") or host == "::1")


def is_model_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


def local_snapshot(
    repo: str, revision: str = "main", repo_type: str = "model", local_dir: Path | None = None
) -> Path | None:
    """The complete local copy the loaders would use (cache or folder), or None."""
    if local_dir is not None:
        return local_dir if is_model_folder(local_dir) else None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, repo_type=repo_type, local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached, or not a valid id: every reason means "download it")
        return None


def plan(
    repo: str,
    revision: str,
    repo_type: str,
    local_dir: Path | None,
    endpoint: str | None = None,
    patterns: tuple[str, ...] = (),
) -> HubPlan:
    """What :func:`fetch` would download, asked from the hub (file sizes); offline: only what is cached."""
    if offline():
        found = local_snapshot(repo, revision, repo_type, local_dir)
        note = "" if found else "not available offline; the hub is asked for sizes once HF_HUB_OFFLINE=0"
        return HubPlan(0 if found else None, 0, found is not None, note)
    infos = _snapshot_download(repo, revision, repo_type, local_dir, endpoint, patterns, dry_run=True)
    missing = [i for i in infos if i.will_download]
    return HubPlan(sum(i.file_size or 0 for i in missing), len(missing), not missing)


def fetch(
    repo: str,
    revision: str,
    repo_type: str,
    local_dir: Path | None,
    endpoint: str | None = None,
    patterns: tuple[str, ...] = (),
) -> Path:
    """Download (or find complete) the snapshot; returns its folder."""
    if offline():
        found = local_snapshot(repo, revision, repo_type, local_dir)
        if found is None:
            raise HubError(explain(RuntimeError("offline"), repo, revision))
        return found
    return Path(_snapshot_download(repo, revision, repo_type, local_dir, endpoint, patterns))


def folder_files(source: Path, patterns: tuple[str, ...] = ()) -> dict[str, Path]:
    """A repository folder's files by repository path (``a/b.json``) that ``patterns`` select (all: empty)."""
    files = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source)
        if rel.parts[: len(RECORDS.parts)] == RECORDS.parts:
            continue
        name = rel.as_posix()
        if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns):
            files[name] = path
    return files


def recorded(source: Path, name: str, line: int, length: int) -> str | None:
    """A line of ``hf download --local-dir``'s record of ``name`` (0: the commit, 1: an LFS file's SHA-256)."""
    record = source / RECORDS / "download" / f"{name}.metadata"
    lines = record.read_text().splitlines() if record.is_file() else []
    value = lines[line].strip().lower() if len(lines) > line else ""
    return value if len(value) == length and all(c in "0123456789abcdef" for c in value) else None


def check_folder(source: Path, patterns: tuple[str, ...], sizes: dict[str, int]) -> tuple[dict[str, Path], list[str]]:
    """The files a copy of ``source`` would install, and why it must not be (empty: it may)."""
    if not source.is_dir():
        return {}, [f"mirror folder {source} does not exist (a mirror holds each repository as <owner>/<name>/)"]
    files = folder_files(source, patterns)
    if not is_model_folder(source):
        return files, [f"{source} is not a model folder (no model_index.json or config.json)"]
    problems = [
        f"{source / name}: {files[name].stat().st_size} bytes, the publisher's file has {size}"
        for name, size in sizes.items()
        if name in files and files[name].stat().st_size != size
    ]
    if missing := sorted(set(sizes) - set(files)):
        problems.append(f"{source} lacks {', '.join(missing)}")
    return files, problems


def install_from_folder(
    source: Path,
    repo: str,
    revision: str,
    repo_type: str,
    local_dir: Path | None,
    patterns: tuple[str, ...] = (),
    sizes: dict[str, int] | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> Path:
    """Copy a mirror's repository folder, each file verified, into ``local_dir`` or the cache's
    ``models--<owner>--<name>/snapshots/<commit>/`` (``refs/<revision>`` last: a cut copy is not complete)."""
    files, problems = check_folder(source, patterns, sizes or {})
    if problems:
        raise HubError("; ".join(problems) + "; nothing was installed from the mirror")
    if local_dir is not None:
        target, ref = local_dir, None
    else:
        from huggingface_hub import constants

        commit = (
            revision if len(revision) == 40 else next(filter(None, (recorded(source, n, 0, 40) for n in files)), None)
        )
        if commit is None:  # a copy made without records: a stable name from its files
            listing = "\n".join(f"{n} {p.stat().st_size}" for n, p in files.items())
            commit = hashlib.sha1(listing.encode()).hexdigest()
        cache = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo.replace('/', '--')}"
        target, ref = cache / "snapshots" / commit, (cache / "refs" / revision, commit)
    markers = ("model_index.json", "config.json")  # what marks a folder complete: copied last
    for name, path in sorted(files.items(), key=lambda item: item[0] in markers):
        expected = transfer.Expected((sizes or {}).get(name, path.stat().st_size), recorded(source, name, 1, 64))
        try:
            transfer.copy_file(path, target / name, expected, on_bytes=on_bytes)
        except transfer.VerifyError as err:
            raise HubError(f"{err}: the mirror's copy is not the file the hub published") from err
    if ref is not None and ref[0].name != ref[1]:
        write_atomic(*ref)
    return target
