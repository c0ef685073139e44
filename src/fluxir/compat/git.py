"""git's on-disk repository format (``repositoryformatversion`` 0/1 with the "files" ref backend).

Where the ``git`` command is missing (slim containers) the commit is read from ``.git`` directly: HEAD, a
loose ref or ``packed-refs``, through worktrees' ``gitdir:`` files and ``commondir``. There is no package
version to check at import; a layout this reader does not know (e.g. the reftable backend of git 2.45+)
reads as "unknown" (None), never as a wrong commit.
"""

from __future__ import annotations

from pathlib import Path


def read_head(path: Path) -> str | None:
    """HEAD's commit from the files of ``.git`` in ``path`` or a parent (loose ref, packed ref or detached)."""
    for folder in (path, *path.resolve().parents):
        git = folder / ".git"
        if git.is_file():  # worktree / submodule: "gitdir: <path>"
            text = git.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            git = (folder / text.split(":", 1)[1].strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
        except OSError:
            return None
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip() or None
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
        return None
    return None
