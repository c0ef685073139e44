"""The fetch on this machine: what is missing (:func:`plan`), room on the disk before the first byte
(:func:`check_disk`), then each item fetched (:func:`run`). A ``mirror`` (a folder or an HTTP server) serves the
same file names; hub repositories come from ``<mirror>/<owner>/<name>`` or from a hub mirror endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fluxir.fetch import hub, transfer
from fluxir.fetch.manifest import Item, Manifest

FreeSpace = Callable[[Path], int]
BYTE_BAR = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}  # progress bars counting bytes
ARCHIVE_FACTOR = 2  # an archive needs its own size and about as much again for the unpacked images


class DiskSpaceError(RuntimeError):
    pass


@dataclass
class Step:
    """One item on this machine: ``present`` (nothing to do), ``fetch`` (to download) or ``problem``."""

    item: Item
    state: str
    size: int | None = None  # bytes of the download (None: unknown)
    detail: str = ""
    have: int = 0  # bytes already in a .part file from an earlier, cut run
    # the manifest's size and digest, completed by what the server states (the hub's LFS SHA-256)
    expected: transfer.Expected = field(default_factory=transfer.Expected)

    @property
    def disk(self) -> int | None:
        if self.size is None:
            return None
        return self.size - self.have + (self.size * (ARCHIVE_FACTOR - 1) if self.item.extract else 0)


def _is_mirror_folder(mirror: str | None) -> bool:
    return bool(mirror) and not mirror.startswith(("http://", "https://"))


def _file_step(item: Item, mirror: str | None, ask_sizes: bool) -> Step:
    expected = transfer.Expected(item.exact_size, item.sha256)
    if item.extract:
        states = {folder: transfer.folder_state(folder, item.name) for _, folder in item.extract}
        if all(s != "missing" for s in states.values()):
            own = [str(f) for f, s in states.items() if s == "user"]
            return Step(item, "present", 0, f"images you put in {own} are left alone" if own else "unpacked, recorded")
    elif item.dest is not None and item.dest.is_file():
        if problem := transfer.verify(item.dest, expected):
            detail = f"{problem}: this file is not the published one; move it away to fetch the published file"
            return Step(item, "problem", None, detail)
        verified = "verified" if expected.size or expected.sha256 else "present (nothing published to verify)"
        return Step(item, "present", 0, verified)
    source = transfer.mirrored(str(item.url), item.name, mirror)
    offline = hub.offline(source) and not _is_mirror_folder(mirror)
    if (item.exact_size is None or item.sha256 is None) and ask_sizes and not offline:
        try:
            stated = transfer.remote_info(source)
        except transfer.DownloadError as err:
            return Step(item, "problem", None, str(err))
        expected = transfer.Expected(item.exact_size or stated.size, item.sha256 or stated.sha256)
    size = expected.size or item.size
    part = item.dest.with_name(item.dest.name + ".part") if item.dest is not None else None
    resumed = part.stat().st_size if part is not None and part.is_file() else 0
    detail = f"resumes at {resumed} bytes" if resumed else ""
    if offline:
        detail = ", ".join(filter(None, [detail, "size not asked: HF_HUB_OFFLINE=1"]))
    return Step(item, "fetch", size, detail, have=resumed, expected=expected)


def _hub_step(item: Item, mirror: str | None) -> Step:
    if _is_mirror_folder(mirror):
        source = Path(str(mirror)).expanduser().resolve() / str(item.repo)
        if hub.local_snapshot(str(item.repo), item.revision, item.repo_type, item.dest):
            where = str(item.dest) if item.dest else "the Hugging Face cache"
            return Step(item, "present", 0, f"complete in {where}")
        files, problems = hub.check_folder(source, item.allow_patterns, dict(item.files))
        if problems:
            return Step(item, "problem", None, "; ".join(problems))
        size = sum(p.stat().st_size for p in files.values())
        return Step(item, "fetch", size, f"copy of {source} ({len(files)} files)")
    endpoint = mirror if mirror else None
    try:
        planned = hub.plan(str(item.repo), item.revision, item.repo_type, item.dest, endpoint, item.allow_patterns)
    except hub.HubError as err:
        return Step(item, "problem", None, str(err))
    if planned.complete:
        return Step(item, "present", 0, "complete in " + (str(item.dest) if item.dest else "the Hugging Face cache"))
    # offline the hub is not asked: the manifest's size stands in for the disk check
    size = planned.to_download if planned.to_download is not None else item.size
    return Step(item, "fetch", size, planned.note or f"{planned.files} file(s)")


def plan(manifest: Manifest, mirror: str | None = None, ask_sizes: bool = True) -> list[Step]:
    """What a run would do on this machine, item by item (asks servers for sizes unless ``ask_sizes`` is False)."""
    return [_hub_step(i, mirror) if i.repo else _file_step(i, mirror, ask_sizes) for i in manifest.items]


def check_disk(steps: list[Step], free_space: FreeSpace = transfer.free_bytes) -> list[str]:
    """Raise :class:`DiskSpaceError` if a file system lacks room for its downloads; returns warnings."""
    need: dict[int, tuple[Path, int]] = {}
    unknown = []
    for step in steps:
        if step.state != "fetch":
            continue
        where = step.item.dest if step.item.dest is not None else _hub_cache()
        if step.disk is None:
            unknown.append(step.item.name)
            continue
        device = transfer.existing_parent(where).stat().st_dev
        path, total = need.get(device, (where, 0))
        need[device] = (path, total + step.disk)
    for path, total in need.values():
        free = free_space(path)
        if total > free:
            raise DiskSpaceError(
                f"{total / 1e9:.2f} GB to download onto the file system of {path}, only {free / 1e9:.2f} GB "
                f"free: free space there or point the destinations elsewhere (the parameters in --list); "
                f"nothing was downloaded"
            )
    return [f"size not known before download, not counted in the disk check: {', '.join(unknown)}"] if unknown else []


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _fetch_file(step: Step, mirror: str | None, on_bytes: Callable[[int], None]) -> str:
    item = step.item
    expected = transfer.Expected(item.exact_size or step.expected.size, item.sha256 or step.expected.sha256)
    source = transfer.mirrored(str(item.url), item.name, mirror)
    assert item.dest is not None
    if hub.offline(source) and not _is_mirror_folder(mirror):
        raise transfer.DownloadError(
            f"{source}: HF_HUB_OFFLINE=1 forbids downloads; run the fetch with HF_HUB_OFFLINE=0 "
            "(or give a --mirror folder)"
        )
    try:
        if _is_mirror_folder(mirror):
            transfer.copy_file(Path(source), item.dest, expected, on_bytes=on_bytes)
        else:
            transfer.download(source, item.dest, expected, on_bytes=on_bytes)
        if not item.extract:
            return f"installed {item.dest}"
        skip = {folder for _, folder in item.extract if transfer.folder_state(folder, item.name) != "missing"}
        counts = transfer.unpack(item.dest, list(item.extract), item.name, transfer.sha256_file(item.dest), skip)
    finally:
        if item.extract:  # unpacked, or refused: the archive is not kept, nor its empty staging folders (a .part is)
            item.dest.unlink(missing_ok=True)
            folder, stop = item.dest.parent, item.extract[0][1].parents[1]
            while folder != stop and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    return "unpacked " + ", ".join(f"{n} images into {folder}" for folder, n in counts.items())


def _fetch_hub(step: Step, mirror: str | None, on_bytes: Callable[[int], None]) -> str:
    item = step.item
    if _is_mirror_folder(mirror):
        found = hub.install_from_folder(
            Path(str(mirror)).expanduser().resolve() / str(item.repo),
            str(item.repo),
            item.revision,
            item.repo_type,
            item.dest,
            item.allow_patterns,
            dict(item.files),
            on_bytes=on_bytes,
        )
        return f"copied into {found}"
    found = hub.fetch(str(item.repo), item.revision, item.repo_type, item.dest, mirror or None, item.allow_patterns)
    return f"complete in {found}"


def _counted(step: Step, mirror: str | None) -> bool:
    """Bytes that pass through this process count in the bars; a hub download shows huggingface_hub's own."""
    return step.state == "fetch" and (not step.item.repo or _is_mirror_folder(mirror))


def run(steps: list[Step], mirror: str | None = None) -> list[tuple[Step, str, bool]]:
    """Fetch every ``fetch`` step (a bar each, and one for "all files"); one failure does not stop the others."""
    from fluxir.runtime.progress import progress

    results: list[tuple[Step, str, bool]] = []
    known = sum(s.size or 0 for s in steps if _counted(s, mirror))
    with progress(total=known or None, desc="all files", **BYTE_BAR) as total:
        for step in steps:
            if step.state != "fetch":
                results.append((step, step.detail or step.state, step.state == "present"))
                continue
            fetch = _fetch_hub if step.item.repo else _fetch_file
            try:
                with progress(
                    total=step.size, desc=step.item.name, leave=False, disable=not _counted(step, mirror), **BYTE_BAR
                ) as bar:

                    def on_bytes(n: int, bar=bar) -> None:
                        bar.update(n)
                        total.update(n)

                    outcome = fetch(step, mirror, on_bytes)
                results.append((step, outcome, True))
            except (transfer.DownloadError, transfer.VerifyError, hub.HubError, ValueError, OSError) as err:
                results.append((step, str(err), False))
    return results
