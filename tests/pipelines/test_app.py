"""The restoration web app in real headless Chromium (Playwright + Debian's chromium, as tests/pipelines/test_viz.py).

A project copy gets two versions of a tiny adapter saved through the catalog dataset; the app is built
from that project's tiny env and served in-process on a free loopback port. The browser uploads a photo,
restores it, sees the before/after slider and downloads the PNG; a broken upload shows the message in
the page. Tiny random-weight models: this proves the machinery, never quality. A screenshot goes to
``test-artifacts/app/`` (git-ignored; docs/img/app.png is a copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, free_port
from support import CHROMIUM_ARGS, adapter_params, find_chromium

# its module-scoped runs are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_app")

ARTIFACTS = REPO / "test-artifacts" / "app"


def save_adapter_versions(project: Path, count: int) -> list[str]:
    """Save ``count`` tiny adapters as versions of fluxir_adapter (as the train pipeline does); newest first."""
    import time

    import torch
    from kedro.io import Version

    from fluxir.datasets import FluxIRAdapterDataset
    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.loading import load_pipeline

    flux = load_pipeline(str(project / "data/01_raw/tiny/flux"), dtype="float32", device="cpu").transformer
    root = project / "data/06_models/fluxir_adapter"
    for i in range(count):
        torch.manual_seed(i)
        FluxIRAdapterDataset(filepath=str(root), version=Version(None, None)).save(
            FluxIRAdapter.from_flux(flux, **adapter_params(text_seq_len=8))
        )
        time.sleep(0.01)  # distinct timestamps
    return sorted((p.name for p in root.iterdir()), reverse=True)


@pytest.fixture(scope="module")
def app_project(tmp_path_factory):
    from fluxir.app import ProjectModels

    from conftest import make_project_copy

    project = make_project_copy(tmp_path_factory.mktemp("app") / "project")
    versions = save_adapter_versions(project, 2)
    return ProjectModels.from_kedro(project, env="tiny"), versions


def test_versions_come_from_the_catalog_folder_newest_first(app_project):
    from fluxir.app import NO_ADAPTER

    models, versions = app_project
    assert models.adapter_versions() == versions and len(versions) == 2
    assert models.params["model"] == "data/01_raw/tiny/flux"
    assert models.load_adapter(versions[1]).config.text_seq_len == 8
    assert models.load_adapter(NO_ADAPTER) is None


def test_restore_upload_reports_a_bad_file_and_a_bad_setting_by_name(app_project, tmp_path):
    from fluxir.app import restore_upload

    models, versions = app_project
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"^holiday.jpg: "):
        restore_upload(models, str(broken), versions[0], {})
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    with pytest.raises(ValueError, match="restore.start_t must be a number in"):
        restore_upload(models, str(photo), versions[0], {"start_t": 0})
    with pytest.raises(
        ValueError, match=r"restore.method must be one of \('fluxir', 'flux_controlnet', 'realesrgan'\)"
    ):
        restore_upload(models, str(photo), versions[0], {"method": "seesr"})
    with pytest.raises(ValueError) as err:  # every bad setting at once
        restore_upload(models, str(photo), versions[0], {"start_t": 0, "steps": 0})
    assert "restore.start_t must be" in str(err.value) and "restore.steps must be" in str(err.value)


def test_public_methods_restore_without_an_adapter_and_say_so(app_project, tmp_path):
    from fluxir.app import NO_ADAPTER, restore_upload

    models, versions = app_project
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(photo)
    labels, outputs = {}, {}
    for method in ("realesrgan", "flux_controlnet", "fluxir"):
        before, after, png, labels[method] = restore_upload(models, str(photo), versions[0], {"method": method})
        outputs[method] = after
        assert after.shape == before.shape == (48, 40, 3) and png.name == f"photo_{method}.png"
    assert labels["realesrgan"].startswith("Restored with Real-ESRGAN x4plus: RRDBNet x4 (num_feat 8")
    assert labels["flux_controlnet"].startswith(
        "Restored with Flux ControlNet upscaler: diffusers FluxControlNetPipeline"
    )
    assert labels["fluxir"] == f"Restored with FluxIR: Flux (data/01_raw/tiny/flux) + adapter {versions[0]}"
    assert not np.array_equal(outputs["realesrgan"], outputs["flux_controlnet"])
    # The page's steps reach the ControlNet sampler without reloading it (2 steps: another result).
    _, two_steps, _, label = restore_upload(models, str(photo), NO_ADAPTER, {"method": "flux_controlnet", "steps": 2})
    assert "2 steps" in label and not np.array_equal(two_steps, outputs["flux_controlnet"])


def test_an_oversized_upload_is_refused_before_the_models_load(app_project, tmp_path):
    from fluxir.app import ProjectModels, restore_upload

    models, versions = app_project
    fresh = ProjectModels(models.project, models.params, models.catalog)
    photo = tmp_path / "phone.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(photo)
    with pytest.raises(
        ValueError,
        match=r"^phone.png: 40x30 with restore.scale 4 gives a 160x120 output .* above "
        r"restore.max_output_megapixels = 0.001",
    ):
        restore_upload(fresh, str(photo), versions[0], {"max_output_megapixels": 0.001})
    assert fresh.current.restorer is None, "nothing was loaded"


@pytest.fixture(scope="module")
def browser_app(app_project):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed: scripts/setup.sh installs Debian's `chromium`, or set FLUXIR_CHROMIUM")
    from playwright.sync_api import sync_playwright

    from fluxir.app import build_app

    models, _ = app_project
    app = build_app(models)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1300}, accept_downloads=True).new_page()
            page.set_default_timeout(120_000)
            yield page, f"http://127.0.0.1:{port}/"
            browser.close()
    finally:
        app.close()


def open_app(browser_app):
    """The app freshly loaded (an empty upload field)."""
    page, url = browser_app
    page.goto(url)
    page.wait_for_selector("#restore")
    return page


@pytest.mark.e2e  # a real browser against the app's server
def test_upload_restore_compare_download_in_chromium(browser_app, tmp_path):
    page = open_app(browser_app)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    photo = tmp_path / "portrait.png"
    Image.fromarray(small).resize((32, 24), Image.Resampling.BICUBIC).save(photo)
    page.set_input_files("#upload input[type=file]", str(photo))
    page.wait_for_selector("#upload a", state="attached")  # the upload landed on the server
    page.click("#restore")
    link = page.wait_for_selector("#download a[download]")
    images = page.locator("#compare img")
    assert images.count() == 2, "the slider shows before and after"
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "downloaded.png"
    download.value.save_as(saved)
    restored = np.asarray(Image.open(saved))
    assert restored.shape == (96, 128, 3), "4x of the 32x24 upload, as restore.scale says"
    assert restored.std() > 1
    assert "Restored with FluxIR" in page.inner_text("#method_label")
    page.locator("#method").get_by_text("realesrgan", exact=True).click()
    page.click("#restore")
    page.wait_for_function("document.querySelector('#method_label').innerText.includes('Restored with Real-ESRGAN')")
    assert "Restored with Real-ESRGAN x4plus: RRDBNet x4" in page.inner_text("#method_label")


@pytest.mark.e2e  # a real browser against the app's server
def test_broken_upload_shows_the_message_not_a_stack_trace(browser_app, tmp_path):
    page = open_app(browser_app)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    page.set_input_files("#upload input[type=file]", str(broken))
    page.wait_for_selector("#upload a", state="attached")
    page.click("#restore")
    toast = page.get_by_text("broken.png: ", exact=False).first
    toast.wait_for()
    text = toast.inner_text()
    assert "not an image file" in text or "corrupt" in text
    assert "Traceback" not in page.content()
