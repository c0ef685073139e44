"""Upload an export folder to the Hugging Face Hub, or to a local folder standing in for it.

``export.hub_endpoint`` null is the public Hub; ``file:///some/dir`` copies the folder to
``/some/dir/<repo_id>`` instead (a dry run that shows exactly what would be uploaded; the tests use it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

LOCAL_PREFIX = "file://"


def upload_export(
    folder: Path, repo_id: str | None, repo_type: str, endpoint: str | None, private: bool
) -> dict[str, Any]:
    """Upload ``folder`` as ``repo_id`` (a ``dataset`` or ``model`` repository); returns where it went."""
    if not repo_id or "/" not in str(repo_id):
        raise ValueError(
            f"export.repo_id is {repo_id!r}: push_to_hub needs `<user or organisation>/<name>`, e.g. "
            "--params export.repo_id=me/fluxgen-pairs (or set export.push_to_hub=false)"
        )
    if endpoint and str(endpoint).startswith(LOCAL_PREFIX):
        target = Path(str(endpoint)[len(LOCAL_PREFIX) :]) / repo_id
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        return {"pushed": True, "repo_id": repo_id, "url": target.as_uri(), "files": _files(folder)}
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), commit_message="Upload from fluxir export"
    )
    return {
        "pushed": True,
        "repo_id": repo_id,
        "url": str(getattr(commit, "commit_url", commit)),
        "files": _files(folder),
    }


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
