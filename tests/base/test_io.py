"""fluxir.io: atomic writes leave either the old or the new content, hashing sees every bit, the readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxir.io.atomic import atomic_directory, atomic_file, write_atomic, write_json_atomic
from fluxir.io.images import image_size, read_image, read_photo
from fluxir.io.provenance import hash_json, hash_tensors
from fluxir.io.store import WriterPool


def test_failed_file_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = write_atomic(tmp_path / "sub" / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    write_json_atomic(target, {"b": 1, "a": [2]}, sort_keys=True)
    assert json.loads(target.read_text()) == {"a": [2], "b": 1}


def test_directory_is_replaced_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "adapter"
    with atomic_directory(folder) as tmp:
        open(f"{tmp}/x.json", "w").write("1")
    assert (folder / "x.json").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_directory(folder) as tmp:
        open(f"{tmp}/y.json", "w").write("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in folder.iterdir()) == ["x.json"], "a failed write left the old folder as it was"
    with atomic_directory(folder) as tmp:
        open(f"{tmp}/y.json", "w").write("2")
    assert sorted(p.name for p in folder.iterdir()) == ["y.json"], "a new write replaces the whole folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"], "no temporary or old folder is left"


def test_tensor_hash_sees_names_dtypes_shapes_and_every_bit():
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    ref = hash_tensors(state).hexdigest()
    assert hash_tensors(dict(reversed(list(state.items())))).hexdigest() == ref, "order of the dict does not matter"
    flipped = state["w"].clone()
    flipped.view(torch.int32)[0, 0] ^= 1  # one bit of one value
    for changed in (
        {**state, "w": flipped},
        {**state, "w": state["w"].reshape(3, 2)},
        {**state, "w": state["w"].double()},
        {"v": state["w"], "b": state["b"]},
    ):
        assert hash_tensors(changed).hexdigest() != ref
    assert hash_json({"a": 1, "b": [1, 2]}) == hash_json({"b": [1, 2], "a": 1}) != hash_json({"a": 1, "b": [2, 1]})
    assert len(hash_json([1], length=8)) == 8


def test_readers_and_header_size(tmp_path):
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 100
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png") == (7, 5)
    assert read_image(tmp_path / "a.png").shape == (5, 7, 3)
    rgb, alpha = read_photo(tmp_path / "a.png")
    assert rgb.shape == (5, 7, 3) and (rgb[..., 0] == 200).all() and (alpha == 100).all()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="bad.png: not an image file PIL can read"):
        read_photo(tmp_path / "bad.png")


def _fail(message: str) -> None:
    raise OSError(message)


def test_writer_pool_raises_a_job_error_in_the_caller_and_runs_every_job():
    done = []
    with pytest.raises(OSError, match="disk full"), WriterPool(2) as pool:
        pool.submit(_fail, "disk full")
        for i in range(20):  # the error surfaces at a later submit or at the end of the block
            pool.submit(done.append, i)
    pool = WriterPool(1)
    pool.submit(_fail, "at close")
    with pytest.raises(OSError, match="at close"):
        pool.close()
    with WriterPool(3) as pool:
        for i in range(50):
            pool.submit(done.append, i)
    assert sorted(done[-50:]) == list(range(50))  # close waited for all of them


def test_writer_pool_queue_is_bounded():
    import threading

    release, submitted = threading.Event(), []
    pool = WriterPool(1)  # 1 thread: at most 2 jobs queued or running

    def producer():
        for i in range(3):
            pool.submit(release.wait)
            submitted.append(i)

    thread = threading.Thread(target=producer)
    thread.start()
    thread.join(timeout=0.5)
    assert submitted == [0, 1] and thread.is_alive()  # the third submit waits for a free slot
    release.set()
    thread.join(timeout=10)
    pool.close()
    assert submitted == [0, 1, 2]


# ----------------------------------------------------------------------------------------------------
# Durability (a power loss cannot be staged in a test: the order of the real fsync calls is recorded)


@pytest.fixture
def disk_events(monkeypatch):
    """Every fsync (of which path) and rename, in order; the real calls still run."""
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_a_file_is_flushed_before_its_rename_and_its_folder_after(tmp_path, disk_events):
    target = write_atomic(tmp_path / "a.json", "{}")
    (kind0, tmp), (kind1, renamed), (kind2, folder) = disk_events
    assert (kind0, kind1, kind2) == ("fsync", "rename", "fsync")
    assert tmp.startswith(str(tmp_path / ".a.json.")) and renamed == str(target) and folder == str(tmp_path)


def test_images_of_many_writers_flush_each_file_and_each_shard_folder_once(tmp_path, disk_events):
    from fluxir.io.store import ImageStore

    store = ImageStore(tmp_path)
    image = np.zeros((8, 8, 3), np.uint8)
    for i in (998, 999, 1000):  # as the generation's writer threads: each file's data before its rename
        store.write(i, image, fsync_folder=False)
    assert [kind for kind, _ in disk_events] == ["fsync", "rename"] * 3
    disk_events.clear()
    store.sync_shards([998, 999, 1000])  # then each shard folder once
    assert disk_events == [("fsync", str(tmp_path / "0000")), ("fsync", str(tmp_path / "0001"))]


def test_a_directory_is_flushed_file_by_file_before_it_is_moved_in(tmp_path, disk_events):
    with atomic_directory(tmp_path / "ckpt") as tmp:
        (Path(tmp) / "sub").mkdir()
        write_atomic(f"{tmp}/sub/w.bin", b"x", fsync=False)
        disk_events.clear()
    flushed = [path for kind, path in disk_events if kind == "fsync"]
    assert flushed[0].endswith("/sub/w.bin") and (tmp_path / "ckpt" / "sub" / "w.bin").read_bytes() == b"x"
    assert flushed[-1] == str(tmp_path)  # the parent, after the move


def test_a_manifest_names_a_cut_a_changed_and_a_missing_file(tmp_path):
    from fluxir.io.atomic import manifest_problem, write_manifest

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"abcd")
    (tmp_path / "sub" / "b.bin").write_bytes(b"efgh")
    assert set(write_manifest(tmp_path)) == {"a.bin", "sub/b.bin"}
    assert manifest_problem(tmp_path) is None
    (tmp_path / "sub" / "b.bin").write_bytes(b"efgX")  # same size, one byte changed
    assert (
        manifest_problem(tmp_path)
        == f"{tmp_path}/sub/b.bin: its SHA-256 differs from the manifest's (the file is corrupt)"
    )
    (tmp_path / "sub" / "b.bin").write_bytes(b"ef")
    assert manifest_problem(tmp_path) == f"{tmp_path}/sub/b.bin: 2 bytes, the manifest says 4"
    (tmp_path / "a.bin").unlink()
    assert manifest_problem(tmp_path) == f"{tmp_path}/a.bin is missing"
    (tmp_path / "manifest.json").unlink()
    assert "manifest.json is missing" in manifest_problem(tmp_path)
