"""`python -m fluxir.fetch` without a network: a loopback HTTP server (a thread of this test, stopped at
teardown) serves the project's random-weight IQA fixtures and small archives laid out like the real test
sets; it honours Range, can drop a connection half-way and answers 404/401/403 (and the hub's error codes)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxir.fetch import manifest, steps, transfer
from fluxir.fetch.__main__ import main as fetch_main
from fluxir.io.provenance import sha256_file
from fluxir.parameters.config import catalog_config, load_params

from conftest import REPO, make_project_copy


class Loopback:
    """Files by URL path; ``drop[path] = n``: the next GET sends n bytes and closes; ``status[path] = code``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.status: dict[str, tuple[int, dict[str, str]]] = {}
        self.redirect: dict[str, dict[str, str]] = {}  # path -> headers of a 302 (Location, the hub's X-Linked-*)
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, head: bool) -> None:
                path = self.path.split("?")[0]
                server.log.append((self.command, path, self.headers.get("Range")))
                if path in server.status or path in server.redirect:
                    code, headers = server.status.get(path) or (302, server.redirect[path])
                    self.send_response(code)
                    for key, value in {**headers, "Content-Length": "0"}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    return
                from urllib.parse import unquote

                data = server.files.get(unquote(path))
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Content-Type", "text/html" if path.endswith(".html") else "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                body = data[start:]
                cut = server.drop.pop(unquote(path), None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the client sees the connection end half-way
                    return
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self) -> list[str]:
        return [path for method, path, _ in self.log if method == "GET"]


@pytest.fixture
def server(no_network):
    loop = Loopback()
    loop.thread.start()
    yield loop
    loop.httpd.shutdown()
    loop.httpd.server_close()
    loop.thread.join(timeout=10)


@pytest.fixture(scope="module")
def lpips_fixture(tmp_path_factory) -> dict[str, bytes]:
    """The project's random-weight LPIPS files (scripts/make_iqa_fixture_weights.py) by published name."""
    spec = importlib.util.spec_from_file_location(
        "make_iqa_fixture_weights", REPO / "scripts" / "make_iqa_fixture_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    home = tmp_path_factory.mktemp("iqa_fixture")
    return {p.name: p.read_bytes() for p in module.write_lpips_alex(home)}


def _png(seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def benchmark_archives() -> dict[str, bytes]:
    """Small archives with the real ones' names and layouts (RealLQ250's layout is not published: a tar here)."""
    stablesr = {
        f"StableSR_testsets/{s}/{d}/{i:04d}.png": _png(i)
        for s in ("RealSRVal_crop128", "DrealSRVal_crop128")
        for d in ("test_HR", "test_LR")
        for i in range(2)
    }
    stablesr["StableSR_testsets/DIV2K_V2_val/gt/0000.png"] = _png(9)  # StableSR's own DIV2K set: not installed
    return {
        "StableSR_testsets.zip": _zip(stablesr),
        "RealLQ250.zip": _tar(
            {f"RealLQ250/{i:03d}.png": _png(20 + i) for i in range(3)} | {"__MACOSX/._000.png": b"x"}
        ),
        "DIV2K_valid_HR.zip": _zip({f"DIV2K_valid_HR/{801 + i:04d}.png": _png(40 + i) for i in range(2)}),
    }


STAND_INS = ("StableSR_testsets.zip", "DIV2K_valid_HR.zip")  # published sizes/digests are the real archives'


@pytest.fixture
def stand_in_archives(monkeypatch):
    """The fixture archives stand in for the real ones: the manifest's published sizes and digests are
    taken out for them (the test below shows those refuse a fixture)."""
    monkeypatch.setattr(
        manifest, "PUBLISHED_SIZES", {k: v for k, v in manifest.PUBLISHED_SIZES.items() if k not in STAND_INS}
    )
    monkeypatch.setattr(
        manifest, "PUBLISHED_SHA256", {k: v for k, v in manifest.PUBLISHED_SHA256.items() if k not in STAND_INS}
    )


# ----------------------------------------------------------------------------- single files


def test_a_connection_dropped_half_way_is_resumed_with_a_range_request(server, tmp_path):
    data = os.urandom(300_000)
    server.files["/w.pth"] = data
    server.drop["/w.pth"] = 100_000
    dest = tmp_path / "hub" / "w.pth"
    seen = []
    transfer.download(
        f"{server.url}/w.pth", dest, transfer.Expected(sha256=sha256_file_bytes(data)), on_bytes=seen.append
    )
    assert dest.read_bytes() == data
    assert not dest.with_name("w.pth.part").exists()
    assert [r for _, _, r in server.log] == [None, "bytes=100000-"], "the second request resumes at the cut"
    assert sum(seen) == len(data)


def test_a_cut_left_by_an_earlier_run_is_resumed_not_restarted(server, tmp_path):
    data = os.urandom(200_000)
    server.files["/w.pth"] = data
    server.drop["/w.pth"] = 50_000
    dest = tmp_path / "w.pth"
    with pytest.raises(ConnectionError, match=r"50000 bytes kept in .*w\.pth\.part \(run again to resume\)"):
        transfer.download(f"{server.url}/w.pth", dest, transfer.Expected(), retries=0)
    assert not dest.exists() and dest.with_name("w.pth.part").stat().st_size == 50_000
    transfer.download(f"{server.url}/w.pth", dest, transfer.Expected(size=len(data)))
    assert dest.read_bytes() == data
    assert server.log[-1][2] == "bytes=50000-"


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_wrong_checksum_is_named_and_the_file_not_installed(server, tmp_path, lpips_fixture):
    """The random AlexNet fixture under torchvision's name fails the SHA-256 prefix in that name."""
    name = "alexnet-owt-7be5be79.pth"
    server.files[f"/{name}"] = lpips_fixture[name]
    dest = tmp_path / "hub" / "checkpoints" / name
    expected = transfer.Expected(sha256=transfer.sha256_prefix_from_name(name))
    assert expected.sha256 == "7be5be79"
    with pytest.raises(transfer.VerifyError) as err:
        transfer.download(f"{server.url}/{name}", dest, expected)
    digest = sha256_file_bytes(lpips_fixture[name])
    assert f"SHA-256 {digest}, expected SHA-256 prefix 7be5be79" in str(err.value) and "not installed" in str(err.value)
    assert not dest.exists() and not dest.with_name(name + ".part").exists()
    full = transfer.Expected(sha256="0" * 64)
    with pytest.raises(transfer.VerifyError, match="expected SHA-256 0000"):
        transfer.download(f"{server.url}/{name}", dest, full)
    transfer.download(f"{server.url}/{name}", dest, transfer.Expected(sha256=digest))  # the right digest installs it
    assert sha256_file(dest) == digest


def test_the_digest_the_hub_states_on_its_redirect_is_checked(server, project, lpips_fixture):
    """huggingface.co answers a resolve URL with a 302 carrying the LFS file's SHA-256 (X-Linked-Etag) and size."""
    name = "LPIPS_v0.1_alex-df73285e.pth"
    data = lpips_fixture[name]
    server.redirect[f"/resolve/{name}"] = {
        "Location": f"/cdn/{name}",
        "X-Linked-Etag": f'"{sha256_file_bytes(data)}"',
        "X-Linked-Size": str(len(data)),
    }
    server.files[f"/cdn/{name}"] = data[:-1] + bytes([data[-1] ^ 1])  # the CDN serves other bytes of the same size
    built = manifest.build(_params(project), project, ("iqa",))
    item = next(i for i in built.items if i.name == name)
    assert item.sha256 is None, "pyiqa publishes no digest itself"
    item = dataclasses.replace(item, url=f"{server.url}/resolve/{name}")
    [step] = steps.plan(manifest.Manifest([item]))
    assert step.expected == transfer.Expected(len(data), sha256_file_bytes(data))
    assert server.log[0][0] == "HEAD" and server.log[1] == ("HEAD", f"/cdn/{name}", None), "HEAD follows the redirect"
    [(_, outcome, ok)] = steps.run([step])
    assert not ok and f"expected SHA-256 {sha256_file_bytes(data)}" in outcome and not item.dest.exists()
    server.files[f"/cdn/{name}"] = data
    [(_, outcome, ok)] = steps.run(steps.plan(manifest.Manifest([item])))
    assert ok and item.dest.read_bytes() == data


def test_a_web_page_instead_of_the_file_is_refused(server, tmp_path):
    """Google Drive answers with an HTML page (quota, sign-in) where the archive should be."""
    server.files["/RealLQ250.zip"] = b"<html>quota exceeded</html>"
    server.redirect["/drive"] = {"Location": "/page.html"}
    server.files["/page.html"] = b"<html>quota exceeded</html>"
    with pytest.raises(transfer.DownloadError, match="sent a web page instead of the file"):
        transfer.download(f"{server.url}/drive", tmp_path / "RealLQ250.zip", transfer.Expected())
    assert not (tmp_path / "RealLQ250.zip").exists()


@pytest.mark.parametrize(("code", "words"), [(404, "not found"), (401, "unauthorised"), (403, "forbidden")])
def test_http_refusals_name_the_url_and_what_they_mean(server, tmp_path, code, words):
    if code != 404:
        server.status["/w.pth"] = (code, {})
    with pytest.raises(transfer.DownloadError, match=rf"{server.url}/w\.pth: HTTP {code} {words}"):
        transfer.download(f"{server.url}/w.pth", tmp_path / "w.pth", transfer.Expected())
    assert not list(tmp_path.iterdir()), "nothing is left behind"


# ----------------------------------------------------------------------------- the manifest of an env


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project_copy(tmp_path / "project")


def _params(project: Path, *extra: str) -> dict:
    """The base env with the IQA weights under the project and LPIPS as the only metric with files."""
    return load_params(
        "base",
        [
            f"iqa.weights_dir={project / 'iqa'}",
            "iqa.metrics=[]",
            "evaluate.metrics.no_reference=null",
            *extra,
        ],
        project,
    )


def test_list_prints_what_from_where_how_big_and_where_it_goes(project, capsys):
    assert (
        fetch_main(
            ["--list", "--env", "base", "--project", str(project), "--params", f"iqa.weights_dir={project / 'iqa'}"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "hub black-forest-labs/FLUX.1-dev@main" in out
    assert "for     fluxgen.model, train.model, restore.model, evaluate.restore.model" in out
    vit = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
    assert f"sha256  {vit}" in out and f"{project / 'iqa'}/hub/clip/ViT-L-14.pt" in out  # from iqa.weights_dir
    for name in (
        "CLIPIQA%2B_ViTL14_512-e66488f2.pth",
        "MANIQA_PIPAL-ae6d356b.pth",
        "musiq_koniq_ckpt-e95806b9.pth",
        "LPIPS_v0.1_alex-df73285e.pth",
        "alexnet-owt-7be5be79.pth",
    ):
        assert f"{project / 'iqa'}/hub/" in out and name in out
    assert "sha256  7be5be79" in out
    assert f"->  {project}/data/01_raw/benchmarks/RealSR/HR" in out  # catalog realsr_benchmark's hq_path
    assert "huggingface.co/datasets/Iceclear/StableSR-TestSets/resolve/main/StableSR_testsets.zip" in out
    assert "DIV2K_valid_HR.zip" in out and "RealLQ250.zip" in out
    blocks = re.split(r"^\[", out.split("not in this env")[0], flags=re.MULTILINE)[1:]
    sizes = {
        b.split("]")[1].split("\n")[0].strip(): re.search(r"^    size    (.*)$", b, re.MULTILINE)[1] for b in blocks
    }
    assert len(sizes) == len(blocks) == 13, "every item has a size line"
    assert sizes["ViT-L-14.pt"] == "932.8 MB (932768134 bytes)"
    assert sizes["alexnet-owt-7be5be79.pth"] == "244.4 MB (244408911 bytes)"
    assert sizes["StableSR_testsets.zip"] == "3.1 GB (3055396861 bytes)"
    assert sizes["RealESRGAN_x4plus.pth"] == "67.0 MB (67040989 bytes)"
    assert sizes["FLUX.1-dev"].startswith("~33.7 GB: 9 large files of exact size")
    assert "9.9 GB  transformer/diffusion_pytorch_model-00002-of-00003.safetensors" in out
    assert sizes["Flux.1-dev-Controlnet-Upscaler"].startswith("~3.6 GB (a rounded figure")
    unknown = sorted(k for k, v in sizes.items() if v.startswith("unknown: "))
    assert unknown == ["CLIPIQA%2B_ViTL14_512-e66488f2.pth", "LPIPS_v0.1_alex-df73285e.pth", "RealLQ250.zip"]
    assert "sha256  32a6344e2a0d394ffcaa7a9245df14105c590dab3ef0d3540e940add1ef9b803" in out  # StableSR's LFS pointer
    assert f"to      {project}/data/06_models/baselines/RealESRGAN_x4plus.pth" in out  # baselines.realesrgan.weights
    assert manifest.REALESRGAN_URL in out and "hub jasperai/Flux.1-dev-Controlnet-Upscaler@main" in out
    assert "not in this env" not in out, "the base env uses every item"


def test_destinations_follow_the_parameters_and_the_catalog(project):
    tiny = REPO / "data" / "01_raw" / "tiny" / "flux"  # a complete model folder of the user's own: left alone
    params = _params(
        project,
        "fluxgen.model=/models/flux",
        f"train.model={tiny}",
    )
    catalog = catalog_config("base", project)
    catalog["realsr_benchmark"]["hq_path"] = "/elsewhere/realsr_hq"  # as a conf/local/catalog_evaluate.yml entry
    built = manifest.build(params, project, catalog=catalog)
    stablesr = next(i for i in built.items if i.name == "StableSR_testsets.zip")
    assert (
        "StableSR_testsets/RealSRVal_crop128/test_HR/*|StableSR_testsets/RealSRVal_crop128/gt/*",
        Path("/elsewhere/realsr_hq"),
    ) in stablesr.extract
    flux = [i for i in built.items if i.group == "flux"]
    assert [(i.dest, i.used_by[:2]) for i in flux] == [  # (the ControlNet baseline's base model may follow)
        (Path("/models/flux"), ("fluxgen.model",)),
        (None, ("restore.model", "evaluate.restore.model")),
    ]
    baselines = manifest.build(
        _params(
            project,
            f"baselines.realesrgan.weights={project / 'w' / 'esrgan.pth'}",
            f"baselines.flux_controlnet.controlnet={manifest.CONTROLNET_REPO}",
        ),
        project,
        ("baselines",),
    )
    assert [(i.name, i.url or i.repo, i.dest) for i in baselines.items] == [
        ("RealESRGAN_x4plus.pth", manifest.REALESRGAN_URL, project / "w" / "esrgan.pth"),
        ("Flux.1-dev-Controlnet-Upscaler", "jasperai/Flux.1-dev-Controlnet-Upscaler", None),
    ]
    iqa_files = {i.name: i.dest for i in built.items if i.group == "iqa"}
    assert iqa_files == {
        "alexnet-owt-7be5be79.pth": project / "iqa/hub/checkpoints/alexnet-owt-7be5be79.pth",
        "LPIPS_v0.1_alex-df73285e.pth": project / "iqa/hub/pyiqa/LPIPS_v0.1_alex-df73285e.pth",
    }


def test_a_full_disk_is_refused_before_any_download(server, project, stand_in_archives):
    for name, data in benchmark_archives().items():
        server.files[f"/{name}"] = data
    planned = steps.plan(
        manifest.build(_params(project), project, ("benchmarks",), catalog_config("base", project)), mirror=server.url
    )
    need = sum(s.disk for s in planned)
    assert need >= 2 * sum(len(d) for d in benchmark_archives().values()), "archives count twice (unpacked images)"
    with pytest.raises(steps.DiskSpaceError, match=r"only 0\.00 GB free.*nothing was downloaded"):
        steps.check_disk(planned, free_space=lambda path: need - 1)
    assert steps.check_disk(planned, free_space=lambda path: need) == []
    assert server.gets() == [], "only HEAD requests (sizes) before the disk check"


def test_mirror_folder_installs_into_the_catalog_layout_and_refuses_a_foreign_file(
    project, tmp_path, lpips_fixture, capsys, stand_in_archives
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in {**benchmark_archives(), **lpips_fixture}.items():
        (mirror / name).write_bytes(data)
    assert (
        fetch_main(
            [
                "--env",
                "base",
                "--project",
                str(project),
                "--only",
                "iqa,benchmarks",
                "--mirror",
                str(mirror),
                "--params",
                f"iqa.weights_dir={project / 'iqa'},iqa.metrics=[]",
                "--params",
                "evaluate.metrics.no_reference=null",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    bench = project / "data" / "01_raw" / "benchmarks"
    assert sorted(p.name for p in transfer.images_in(bench / "RealSR" / "HR")) == ["0000.png", "0001.png"]
    assert (bench / "DrealSR" / "LR" / "0001.png").read_bytes() == _png(1)
    assert sorted(p.name for p in transfer.images_in(bench / "RealLQ250")) == ["000.png", "001.png", "002.png"]
    assert sorted(p.name for p in transfer.images_in(bench / "DIV2K_valid_HR")) == ["0801.png", "0802.png"]
    assert not (bench / ".fetch").exists(), "archives are removed once unpacked"
    lin = project / "iqa" / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    assert lin.read_bytes() == lpips_fixture[lin.name]
    alexnet = project / "iqa" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert not alexnet.exists(), "the random AlexNet is not torchvision's file: refused"
    size = len(lpips_fixture[alexnet.name])
    assert re.search(
        rf"^FAIL  alexnet-owt-7be5be79\.pth +alexnet-owt-7be5be79\.pth: {size} bytes, "
        r"the publisher's file has 244408911;",
        out,
        re.MULTILINE,
    ), out
    assert out.count("FAIL  ") == 1 and out.count("OK    ") == 4, out  # LPIPS' linear layers and the three archives


def test_a_second_run_downloads_nothing(server, project, capsys, stand_in_archives):
    for name, data in benchmark_archives().items():
        server.files[f"/{name}"] = data
    args = ["--env", "base", "--project", str(project), "--only", "benchmarks", "--mirror", server.url]
    assert fetch_main(["--dry-run", *args]) == 0
    assert capsys.readouterr().out.count("fetch  ") == 3
    assert server.gets() == [], "a dry run downloads nothing"
    status = fetch_main(args)  # fetches, then prints the preflight check (no Flux, no GPU here: it FAILs)
    out = capsys.readouterr().out
    assert status == 2, out
    for name in ("StableSR_testsets.zip", "RealLQ250.zip", "DIV2K_valid_HR.zip"):
        assert re.search(rf"^OK +{name} +unpacked \d images into ", out, re.MULTILINE), out
    assert re.search(r"^\w+ +benchmark +realsr ", out, re.MULTILINE) and re.search(r"checks: \d+ FAIL", out), out
    assert sorted(server.gets()) == ["/DIV2K_valid_HR.zip", "/RealLQ250.zip", "/StableSR_testsets.zip"]
    server.log.clear()
    built = manifest.build(_params(project), project, ("benchmarks",), catalog_config("base", project))
    again = steps.plan(built, server.url)
    assert [s.state for s in again] == ["present"] * 3
    steps.run(again, server.url)
    assert server.log == [], "a second run asks the server nothing"
    assert fetch_main(["--dry-run", *args]) == 0
    assert "0 to fetch" in capsys.readouterr().out


def test_an_archive_of_another_layout_installs_nothing(server, project, stand_in_archives):
    server.files["/DIV2K_valid_HR.zip"] = _zip({"DIV2K_valid_HR_renamed/0801.png": _png(1)})
    built = manifest.build(_params(project), project, ("benchmarks",), catalog_config("base", project))
    step = next(s for s in steps.plan(built, server.url) if s.item.name == "DIV2K_valid_HR.zip")
    [(_, outcome, ok)] = steps.run([step], server.url)
    assert (
        not ok
        and "has no image matching 'DIV2K_valid_HR/*'" in outcome
        and "DIV2K_valid_HR_renamed/0801.png" in outcome
    )
    hq = project / "data" / "01_raw" / "benchmarks" / "DIV2K_valid_HR"
    assert not hq.exists() and not step.item.dest.parent.exists(), "no folder, no archive kept"


def test_images_put_there_by_hand_are_left_alone(server, project):
    own = project / "data" / "01_raw" / "benchmarks" / "RealLQ250"
    own.mkdir(parents=True)
    (own / "mine.png").write_bytes(_png(99))
    built = manifest.build(_params(project), project, ("benchmarks",), catalog_config("base", project))
    step = next(s for s in steps.plan(built, server.url, ask_sizes=False) if s.item.name == "RealLQ250.zip")
    assert step.state == "present" and "left alone" in step.detail
    assert [p.name for p in own.iterdir()] == ["mine.png"]


# ----------------------------------------------------------------------------- hub repositories


def _hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache holding one snapshot of ``repo`` (the layout huggingface_hub documents)."""
    commit = "0" * 39 + "1"
    folder = root / f"models--{repo.replace('/', '--')}"
    for name, data in files.items():
        (folder / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / commit / name).write_bytes(data)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def test_hub_snapshot_offline_from_a_prepared_cache(project, tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "tests run with HF_HUB_OFFLINE=1"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    built = manifest.build(_params(project), project, ("flux",))
    [missing] = steps.plan(built)
    assert missing.state == "fetch" and "HF_HUB_OFFLINE=0" in missing.detail
    assert missing.size == missing.item.size, "offline the hub is not asked: the manifest's size for the disk check"
    [(_, outcome, ok)] = steps.run([missing])
    assert not ok and "HF_HUB_OFFLINE=1 forbids downloads" in outcome
    tiny = REPO / "data" / "01_raw" / "tiny" / "flux"
    snapshot = _hub_cache(
        tmp_path / "hf",
        manifest.FLUX_REPO,
        {str(p.relative_to(tiny)): p.read_bytes() for p in tiny.rglob("*") if p.is_file()},
    )
    [present] = steps.plan(built)
    assert present.state == "present"
    [(_, outcome, ok)] = steps.run([steps.Step(present.item, "fetch")])
    assert ok and outcome == f"complete in {snapshot}"


HUB_DRIVER = """
import json, sys
from fluxir.fetch import hub
out = {}
for case in sys.argv[2:]:
    try:
        hub.plan("black-forest-labs/FLUX.1-dev", "main", "model", None, endpoint=sys.argv[1] + "/" + case)
    except hub.HubError as err:
        out[case] = str(err)
print(json.dumps(out))
"""


@pytest.mark.parametrize("token", [None, "hf_fake"])
@pytest.mark.starts_process(
    "huggingface_hub reads HF_ENDPOINT, HF_HOME and offline mode at import: a fresh interpreter"
)
def test_hub_refusals_say_what_to_do(server, tmp_path, token):
    api = "/api/models/black-forest-labs/FLUX.1-dev/revision/main"
    server.status[f"/gated{api}"] = (403 if token else 401, {"X-Error-Code": "GatedRepo"})
    server.status[f"/denied{api}"] = (401, {})
    server.status[f"/missing{api}"] = (404, {"X-Error-Code": "RepoNotFound"})
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": server.url}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    proc = subprocess.run(
        [sys.executable, "-c", HUB_DRIVER, server.url, "gated", "denied", "missing"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    if token:
        assert "has not accepted its licence (HTTP 403)" in said["gated"]
        assert "the token is invalid or expired" in said["denied"]
    else:
        assert "is gated and no token is set (HTTP 401)" in said["gated"] and "HF_TOKEN" in said["gated"]
        assert "no token is set" in said["denied"]
    assert "no such repository on the hub (HTTP 404)" in said["missing"]
    assert any(path.startswith("/gated/api/models/") for _, path, _ in server.log), "asked the loopback server"


def test_the_published_size_and_digest_refuse_a_stand_in_archive(server, project):
    """Without the stand-in fixture the manifest's published StableSR size is checked: the fixture archive fails."""
    data = benchmark_archives()["StableSR_testsets.zip"]
    server.files["/StableSR_testsets.zip"] = data
    built = manifest.build(_params(project), project, ("benchmarks",), catalog_config("base", project))
    step = next(s for s in steps.plan(built, server.url) if s.item.name == "StableSR_testsets.zip")
    assert step.expected == transfer.Expected(3_055_396_861, manifest.PUBLISHED_SHA256["StableSR_testsets.zip"])
    [(_, outcome, ok)] = steps.run([step], server.url)
    assert not ok and f"StableSR_testsets.zip: {len(data)} bytes, the publisher's file has 3055396861" in outcome
    bench = project / "data" / "01_raw" / "benchmarks"
    assert not (bench / "RealSR").exists(), "no image, no archive, no staging folder left"


# ----------------------------------------------------------------------------- progress


PROGRESS_DRIVER = """
import runpy, sys
from fluxir.fetch import manifest
for name in {stand_ins!r}:  # the loopback server's archives stand in for the real ones
    manifest.PUBLISHED_SIZES.pop(name)
    manifest.PUBLISHED_SHA256.pop(name)
sys.argv = ["fluxir.fetch", *sys.argv[1:]]
runpy.run_module("fluxir.fetch", run_name="__main__")
"""


@pytest.mark.e2e  # what the command writes to a stderr that is not a terminal, and its exit status
def test_progress_per_file_and_in_total_reach_the_byte_counts(server, project):
    """`python -m fluxir.fetch` without a terminal: each bar ends with a log line on stderr whose count is
    every byte of its file, and the total's is the sum."""
    archives_ = benchmark_archives()
    for name, data in archives_.items():
        server.files[f"/{name}"] = data
    env = {**os.environ, "FLUXIR_PROGRESS": "log"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PROGRESS_DRIVER.format(stand_ins=STAND_INS),
            *("--env", "base", "--project", str(project), "--only", "benchmarks", "--mirror", server.url),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]  # fetched; the check FAILs (no Flux)
    for name, data in archives_.items():
        n = len(data)
        assert re.search(rf"^{re.escape(name)}: {n}/{n} B \(100%\)", proc.stderr, re.MULTILINE), proc.stderr
    total = sum(len(d) for d in archives_.values())
    assert re.search(rf"^all files: {total}/{total} B \(100%\)", proc.stderr, re.MULTILINE), proc.stderr


def test_progress_bars_on_a_terminal_count_every_byte(server, tmp_path, monkeypatch, capsys):
    """With a terminal (FLUXIR_PROGRESS=bar) tqdm draws the bars on stderr; the total's last state is every byte."""
    data = os.urandom(3000)
    server.files["/a.pth"] = data
    server.files["/b.pth"] = data[:1000]
    monkeypatch.setenv("FLUXIR_PROGRESS", "bar")
    items = [
        manifest.Item(n, "iqa", tmp_path / n, url=f"{server.url}/{n}", used_by=("test",)) for n in ("a.pth", "b.pth")
    ]
    results = steps.run(steps.plan(manifest.Manifest(items)))
    assert all(ok for _, _, ok in results)
    err = capsys.readouterr().err
    assert re.search(r"all files: 100%\|[^\r\n]*\| 3\.91k/3\.91k", err), err  # 4000 B at unit_divisor 1024
    assert re.search(r"a\.pth: +\d+%\|", err) and re.search(r"b\.pth: +\d+%\|", err), err


# ----------------------------------------------------------------------------- hub repositories from a mirror folder


LOAD_DRIVER = """
import sys, torch
from fluxir.models.loading import load_pipeline
pipe = load_pipeline(sys.argv[1], "float32")
print(type(pipe).__name__, type(pipe.text_encoder_2).__name__,
      float(sum(p.double().sum() for p in pipe.transformer.parameters())))
"""


def _load_in_subprocess(source: str, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_DRIVER, source], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


@pytest.mark.starts_process(
    "huggingface_hub reads HF_ENDPOINT, HF_HOME and offline mode at import: a fresh interpreter"
)
def test_mirror_folder_serves_hub_repositories_into_the_cache_verified(project, tmp_path, full_flux_dir, monkeypatch):
    """An air-gapped cluster: the mirror holds FLUX.1-dev as <mirror>/black-forest-labs/FLUX.1-dev (here the tiny
    full-format Flux); a hub-id parameter gets it copied into the Hugging Face cache, where the loader finds it
    offline; sizes the manifest publishes and SHA-256s the folder's hub records state are checked first."""
    import shutil

    from huggingface_hub import constants

    mirror = tmp_path / "mirror"
    shutil.copytree(full_flux_dir, mirror / manifest.FLUX_REPO)
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    [real] = manifest.build(_params(project), project, ("flux",)).items
    assert real.dest is None, "globals.flux_model is the hub id: the Hugging Face cache"

    [refused] = steps.plan(manifest.Manifest([real]), str(mirror))
    te = mirror / manifest.FLUX_REPO / "text_encoder" / "model.safetensors"
    assert refused.state == "problem"
    assert f"{te}: {te.stat().st_size} bytes, the publisher's file has 246144352" in refused.detail
    assert re.search(r"lacks [^;]*transformer/diffusion_pytorch_model-00001-of-00003\.safetensors", refused.detail)
    assert not cache.exists(), "nothing installed"

    item = dataclasses.replace(real, files=())  # the tiny stand-in: no published sizes to hold it to
    records = mirror / manifest.FLUX_REPO / ".cache" / "huggingface" / "download" / "vae"
    records.mkdir(parents=True)
    vae = mirror / manifest.FLUX_REPO / "vae" / "diffusion_pytorch_model.safetensors"
    commit = "c0ffee" + "0" * 34
    (records / "diffusion_pytorch_model.safetensors.metadata").write_text(f"{commit}\n{'1' * 64}\n1700000000.0\n")
    [step] = steps.plan(manifest.Manifest([item]), str(mirror))
    source_files = [p for p in (mirror / manifest.FLUX_REPO).rglob("*") if p.is_file() and ".cache" not in p.parts]
    assert step.state == "fetch" and step.size == sum(p.stat().st_size for p in source_files)
    [(_, outcome, ok)] = steps.run([step], str(mirror))
    assert not ok and f"expected SHA-256 {'1' * 64}" in outcome and "not the file the hub published" in outcome
    assert not (cache / "models--black-forest-labs--FLUX.1-dev" / "refs" / "main").exists(), "not marked complete"
    assert steps.plan(manifest.Manifest([item]), str(mirror))[0].state == "fetch"

    (records / "diffusion_pytorch_model.safetensors.metadata").write_text(
        f"{commit}\n{sha256_file(vae)}\n1700000000.0\n"
    )
    [(_, outcome, ok)] = steps.run(steps.plan(manifest.Manifest([item]), str(mirror)), str(mirror))
    snapshot = cache / "models--black-forest-labs--FLUX.1-dev" / "snapshots" / commit
    assert ok and outcome == f"copied into {snapshot}", outcome
    assert (cache / "models--black-forest-labs--FLUX.1-dev" / "refs" / "main").read_text() == commit
    assert not (snapshot / ".cache").exists(), "the mirror's download records are not repository files"
    assert [s.state for s in steps.plan(manifest.Manifest([item]), str(mirror))] == ["present"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    from_cache = _load_in_subprocess(manifest.FLUX_REPO, env)
    assert from_cache == _load_in_subprocess(str(full_flux_dir), env), "the same pipeline and weights as the mirror's"
    assert from_cache[:2] == ["FluxPipeline", "T5EncoderModel"]
