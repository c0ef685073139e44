"""Hub repositories (FLUX.1-dev, the Flux ControlNet upscaler) through huggingface_hub's snapshot_download.

A hub id parameter lands in the Hugging Face cache (what ``from_pretrained(<id>)`` reads offline);
a folder parameter gets the snapshot as that folder (``local_dir``). huggingface_hub resumes cut
files and skips what is already there (it files each LFS blob under the SHA-256 the hub states, without
hashing it again; ``fluxir.check`` then reads every safetensors header against the architecture). The
user's token (``HF_TOKEN`` or ``hf auth login``) is used as is. Its errors become one line that says
what to do: a gated licence not accepted, a token missing or refused, a repository or revision that does
not exist, the offline switch still on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class HubError(RuntimeError):
    """A hub repository could not be fetched; the message says why and what to do."""


@dataclass(frozen=True)
class HubPlan:
    """What a snapshot download would do: bytes still to fetch, files, and whether it is complete."""

    to_download: int | None  # None: unknown (offline)
    files: int
    complete: bool
    note: str = ""


def _kwargs(repo: str, revision: str, repo_type: str, local_dir: Path | None, endpoint: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"repo_id": repo, "revision": revision, "repo_type": repo_type}
    if local_dir is not None:
        kwargs["local_dir"] = str(local_dir)
    if endpoint:
        kwargs["endpoint"] = endpoint
    return kwargs


def explain(err: Exception, repo: str, revision: str) -> str:
    """The hub's exception as one actionable line."""
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


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def is_model_folder(folder: Path) -> bool:
    """A diffusers pipeline (``model_index.json``) or single-model (``config.json``) folder."""
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


def downloaded_here(folder: Path) -> bool:
    """huggingface_hub's ``local_dir`` record: the folder is (being) filled by a snapshot download."""
    return (folder / ".cache" / "huggingface").is_dir()


def local_snapshot(repo: str, revision: str, repo_type: str, local_dir: Path | None) -> Path | None:
    """The complete local copy the loaders would use (cache or folder), or None."""
    if local_dir is not None:
        return local_dir if is_model_folder(local_dir) else None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, repo_type=repo_type, local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached: every reason means "download it")
        return None


def plan(repo: str, revision: str, repo_type: str, local_dir: Path | None, endpoint: str | None = None) -> HubPlan:
    """What :func:`fetch` would download, asked from the hub (file sizes); offline: only what is cached."""
    from huggingface_hub import snapshot_download

    found = local_snapshot(repo, revision, repo_type, local_dir)
    if _offline():
        return HubPlan(
            0 if found else None,
            0,
            found is not None,
            "" if found else "not available offline; the hub is asked for sizes once HF_HUB_OFFLINE=0",
        )
    try:
        infos = snapshot_download(**_kwargs(repo, revision, repo_type, local_dir, endpoint), dry_run=True)
    except Exception as err:
        raise HubError(explain(err, repo, revision)) from err
    missing = [i for i in infos if i.will_download]
    size = sum(i.file_size or 0 for i in missing)
    return HubPlan(size, len(missing), not missing)


def fetch(repo: str, revision: str, repo_type: str, local_dir: Path | None, endpoint: str | None = None) -> Path:
    """Download (or find complete) the snapshot; returns its folder. Raises :class:`HubError`."""
    from huggingface_hub import snapshot_download

    if _offline():
        found = local_snapshot(repo, revision, repo_type, local_dir)
        if found is None:
            raise HubError(explain(RuntimeError("offline"), repo, revision))
        return found
    try:
        return Path(snapshot_download(**_kwargs(repo, revision, repo_type, local_dir, endpoint)))
    except Exception as err:
        raise HubError(explain(err, repo, revision)) from err
