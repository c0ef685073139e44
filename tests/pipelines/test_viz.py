"""kedro-viz: light pipeline imports, sensible layers, and the static site drawn in headless Chromium.

Pipelines are discovered (``register_pipelines`` in a subprocess), never hard-coded, so pipelines added
later are checked too; fluxgen's four nodes are checked by name as well, and so is the grouping of each
pipeline into one collapsible namespace box. The static site is built with
``kedro viz build --include-previews`` in a project copy after a tiny fluxgen run (so previews have data),
served on 127.0.0.1 and opened in Debian's Chromium through Playwright; a screenshot of each pipeline
goes to ``test-artifacts/viz/`` (git-ignored).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, kedro_run
from support import CHROMIUM_ARGS, find_chromium

# its module-scoped runs are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_viz")

FLUXGEN_NODES = {"fluxgen.generate_images", "fluxgen.score_images", "fluxgen.select_by_iqa", "fluxgen.degrade_pairs"}
# Each registered pipeline is a modular pipeline (a namespace) of its own name; the default chains three.
DEFAULT_GROUPS = {"fluxgen", "train", "evaluate"}
HEAVY_MODULES = ("torch", "torchvision", "diffusers", "transformers", "pyiqa", "basicsr", "accelerate", "timm")
# Kedro's layer convention, in data-flow order (https://docs.kedro.org/en/stable/faq/faq.html#what-is-data-engineering-convention)
LAYERS = ("raw", "intermediate", "primary", "feature", "model_input", "models", "model_output", "reporting")
ARTIFACTS = REPO / "test-artifacts" / "viz"
# ------------------------------------------------------------------------------------------------ imports


_REGISTRY_PROBE = r"""
import importlib, json, pkgutil, sys, time
start = time.perf_counter()
from kedro.framework.project import configure_project
configure_project("fluxir")
import fluxir.pipeline_registry
import fluxir.pipelines
pipelines = fluxir.pipeline_registry.register_pipelines()
for module in pkgutil.iter_modules(fluxir.pipelines.__path__):
    for part in ("", ".pipeline", ".nodes"):
        try:
            importlib.import_module(f"fluxir.pipelines.{module.name}{part}")
        except ModuleNotFoundError as error:
            if error.name != f"fluxir.pipelines.{module.name}{part}":
                raise
print(json.dumps({
    "pipelines": {name: sorted(node.name for node in pipeline.nodes) for name, pipeline in pipelines.items()},
    "loaded": sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY_MODULES)),
    "seconds": time.perf_counter() - start,
}))
""".replace("HEAVY_MODULES", repr(HEAVY_MODULES))


@pytest.fixture(scope="module")
def registry() -> dict:
    """Registered pipelines with their node names, and the heavy modules their import loaded (fresh interpreter)."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTRY_PROBE],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.starts_process("a fresh interpreter is the only way to see what an import pulls in")
def test_pipeline_registry_and_all_pipelines_import_no_heavy_libraries(registry):
    assert not registry["loaded"], (
        f"importing fluxir.pipeline_registry and every fluxir.pipelines.* (pipeline + nodes) loaded "
        f"{registry['loaded']}: import torch/diffusers/pyiqa inside the node functions instead"
    )
    assert "__default__" in registry["pipelines"] and "fluxgen" in registry["pipelines"]
    assert FLUXGEN_NODES <= set(registry["pipelines"]["fluxgen"])
    named = {name: nodes for name, nodes in registry["pipelines"].items() if name != "__default__"}
    assert set(registry["pipelines"]["__default__"]) <= set().union(*map(set, named.values()))


@pytest.mark.starts_process("a fresh interpreter is the only way to see what an import pulls in")
def test_every_pipeline_is_a_namespace_of_its_own_name(registry):
    for name, nodes in registry["pipelines"].items():
        groups = {node.split(".")[0] for node in nodes}
        assert all("." in node for node in nodes), f"pipeline {name}: nodes outside a namespace"
        assert groups == (DEFAULT_GROUPS if name == "__default__" else {name}), f"pipeline {name}: {sorted(groups)}"


@pytest.mark.starts_process("a fresh interpreter is the only way to see what an import pulls in")
def test_catalog_loads_without_heavy_libraries():
    """What `kedro viz` loads besides the pipelines: the catalog of every dataset, with no torch behind it."""
    probe = r"""
import json, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

bootstrap_project(Path.cwd())
with KedroSession.create(project_path=Path.cwd(), env="tiny") as session:
    catalog = session.load_context().catalog
    names = list(catalog.keys()) if hasattr(catalog, "keys") else list(catalog.list())
    for name in names:
        catalog.get(name)
print(json.dumps(sorted({n.split(".")[0] for n in sys.modules} & set(HEAVY_MODULES))))
""".replace("HEAVY_MODULES", repr(HEAVY_MODULES))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not loaded, (
        f"creating the catalog (as kedro viz does) imported {loaded}: dataset modules should "
        f"import torch and model code inside load()/save()"
    )


# ------------------------------------------------------------------------------------------------ build


@pytest.fixture(scope="module")
def viz_site(tiny_fluxgen_project) -> Path:
    """`kedro viz build --include-previews` of a project copy that has one tiny fluxgen run's data."""
    project = tiny_fluxgen_project
    shutil.rmtree(project / "build", ignore_errors=True)
    proc = kedro_run(project, "viz", "build", "--include-previews")
    site = project / "build"
    assert (site / "index.html").is_file() and (site / "api" / "main").is_file(), (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    return site


def _main(site: Path) -> dict:
    return json.loads((site / "api" / "main").read_text())


def test_static_site_lists_every_registered_pipeline(viz_site, registry):
    main = _main(viz_site)
    assert {p["id"] for p in main["pipelines"]} == set(registry["pipelines"])
    for name, nodes in registry["pipelines"].items():
        data = json.loads((viz_site / "api" / "pipelines" / name).read_text())
        drawn = {n["full_name"] for n in data["nodes"] if n["type"] == "task"}
        assert drawn == set(nodes), f"pipeline {name}"
        # one modular pipeline per namespace, each a child of the root: the collapsed view's boxes
        root = data["modular_pipelines"]["__root__"]["children"]
        boxes = {child["id"] for child in root if child["type"] == "modularPipeline"}
        assert boxes == (DEFAULT_GROUPS if name == "__default__" else {name}), f"pipeline {name}: {boxes}"


def test_datasets_have_layers_in_data_flow_order(viz_site):
    main = _main(viz_site)
    nodes = {n["id"]: n for n in main["nodes"]}
    unlayered = []
    for node in nodes.values():
        if node["type"] != "data":
            continue
        kind = node.get("dataset_type") or ""
        if kind.endswith("MemoryDataset") or "mlflow" in kind.lower():
            continue  # in-memory hand-overs and MLflow metrics are no files on a layer
        if node.get("layer") not in LAYERS:
            unlayered.append(f"{node['name']} ({node.get('layer')})")
    assert not unlayered, f"catalog entries without a kedro-viz layer from {LAYERS}: {unlayered}"
    assert set(main["layers"]) <= set(LAYERS)
    # Every node reads from layers no later than those it writes: arrows never point back up the layer bands.
    inputs: dict[str, list[str]] = {}
    outputs: dict[str, list[str]] = {}
    for edge in main["edges"]:
        source, target = nodes[edge["source"]], nodes[edge["target"]]
        if source["type"] == "data" and target["type"] == "task" and source.get("layer"):
            inputs.setdefault(target["name"], []).append(source)
        elif source["type"] == "task" and target["type"] == "data" and target.get("layer"):
            outputs.setdefault(source["name"], []).append(target)
    backwards = []
    for task, produced in outputs.items():
        for src in inputs.get(task, []):
            for dst in produced:
                if LAYERS.index(src["layer"]) > LAYERS.index(dst["layer"]):
                    backwards.append(f"{src['name']} ({src['layer']}) -> {task} -> {dst['name']} ({dst['layer']})")
    assert not backwards, "layers against the data flow (order " + " -> ".join(LAYERS) + "):\n" + "\n".join(backwards)


def test_previews_are_built_for_tables_and_plots(viz_site):
    main = _main(viz_site)
    ids = {n["name"]: n["id"] for n in main["nodes"]}
    table = json.loads((viz_site / "api" / "nodes" / ids["iqa_scores"]).read_text())
    assert table["preview_type"] == "TablePreview"
    assert {"entropy", "piqe", "musiq"} <= set(table["preview"]["columns"])
    assert len(table["preview"]["data"]) == 6
    plot = json.loads((viz_site / "api" / "nodes" / ids["iqa_histograms"]).read_text())
    assert plot["preview_type"] == "ImagePreview" and plot["preview"].startswith("iVBORw0KGgo")  # base64 PNG


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser_page(viz_site):
    """A Playwright page in headless Debian Chromium, and the URL of the static site served on 127.0.0.1."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "Chromium is not installed: scripts/setup.sh installs Debian's `chromium` "
            "(apt-get, as root or with sudo), or set FLUXIR_CHROMIUM to a Chromium/Chrome binary"
        )
    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(viz_site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1600, "height": 1100})
            # No onboarding tour over the graph; raw node names (the pipeline code's names).
            context.add_init_script(
                "window.localStorage.setItem('KedroViz', "
                "JSON.stringify({showFeatureHints: false, isPrettyName: false}))"
            )
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page, f"http://127.0.0.1:{server.server_address[1]}"
            browser.close()
    finally:
        server.shutdown()


def _open_pipeline(page, url: str, pipeline: str, expand: bool = True) -> None:
    """Open ``pipeline``; ``expand``: every namespace box opened (all task nodes drawn), else all collapsed."""
    page.goto(f"{url}/?pid={pipeline}&expandAllPipelines={str(expand).lower()}")
    page.wait_for_selector(
        "svg g.pipeline-node--task" if expand else "svg g.pipeline-node[data-node-type=modularPipeline]"
    )
    page.wait_for_function(
        "() => document.querySelectorAll('svg g.pipeline-node').length > 0 && "
        "Array.from(document.querySelectorAll('svg .pipeline-node__text')).every(t => t.textContent)"
    )


@pytest.mark.e2e  # kedro-viz's site in a real browser
def test_every_pipeline_is_drawn_in_chromium(browser_page, registry):
    page, url = browser_page
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for pipeline, full_names in registry["pipelines"].items():
        # the browser draws and labels each node with the name given in pipeline.py (no namespace)
        expected = sorted(name.split(".", 1)[1] for name in full_names)
        _open_pipeline(page, url, pipeline)
        try:  # the app may draw the default pipeline first, then the one in the URL
            page.wait_for_function(
                "names => { const got = new Set(Array.from(document.querySelectorAll('svg g.pipeline-node--task'))"
                ".map(n => n.getAttribute('data-node-fullname'))); "
                "return got.size === names.length && names.every(n => got.has(n)); }",
                arg=expected,
                timeout=30_000,
            )
        except PlaywrightTimeout:
            pass  # the assertions below say what was drawn instead
        drawn = set(
            page.eval_on_selector_all(
                "svg g.pipeline-node--task", "nodes => nodes.map(n => n.getAttribute('data-node-fullname'))"
            )
        )
        labels = set(
            page.eval_on_selector_all(
                "svg g.pipeline-node--task .pipeline-node__text", "texts => texts.map(t => t.textContent.trim())"
            )
        )
        page.screenshot(path=str(ARTIFACTS / f"{pipeline.strip('_') or 'default'}.png"))
        assert drawn == set(expected), f"pipeline {pipeline}: drawn {sorted(drawn)}"
        assert labels == set(expected), f"pipeline {pipeline}: node labels {sorted(labels)}"
        if pipeline == "fluxgen":
            assert {name.split(".", 1)[1] for name in FLUXGEN_NODES} <= drawn
            layers = page.eval_on_selector_all(".pipeline-layer-name", "els => els.map(e => e.textContent.trim())")
            assert {"intermediate", "feature", "reporting"} <= set(layers)
    assert (ARTIFACTS / "fluxgen.png").stat().st_size > 10_000


@pytest.mark.e2e  # kedro-viz's site in a real browser
def test_collapsed_pipelines_read_as_one_box_per_namespace(browser_page, registry):
    """All namespaces collapsed: the default pipeline is three boxes (fluxgen, train, evaluate), every
    other pipeline one box, and no task node is drawn outside a box."""
    page, url = browser_page
    for pipeline in registry["pipelines"]:
        _open_pipeline(page, url, pipeline, expand=False)
        boxes = set(
            page.eval_on_selector_all(
                "svg g.pipeline-node[data-node-type=modularPipeline]",
                "nodes => nodes.map(n => n.getAttribute('data-node-fullname'))",
            )
        )
        page.screenshot(path=str(ARTIFACTS / f"{pipeline.strip('_') or 'default'}_collapsed.png"))
        assert boxes == (DEFAULT_GROUPS if pipeline == "__default__" else {pipeline}), f"pipeline {pipeline}: {boxes}"
        assert page.locator("svg g.pipeline-node--task").count() == 0, f"pipeline {pipeline}: tasks outside a box"


@pytest.mark.e2e  # kedro-viz's site in a real browser
def test_dataset_previews_render_in_chromium(browser_page):
    page, url = browser_page
    _open_pipeline(page, url, "fluxgen")
    # dispatch the click: floating notifications may cover nodes at the bottom of the graph
    page.locator('svg g.pipeline-node[data-node-fullname="iqa_scores"]').dispatch_event("click")
    page.wait_for_selector(".pipeline-metadata .preview-table")
    headers = page.eval_on_selector_all(
        ".pipeline-metadata .preview-table__header", "els => els.map(e => e.textContent.trim())"
    )
    assert {"entropy", "piqe", "musiq"} <= set(headers)
    assert page.locator(".pipeline-metadata .preview-table__row").count() == 6
    page.locator('svg g.pipeline-node[data-node-fullname="iqa_histograms"]').dispatch_event("click")
    image = page.wait_for_selector(".pipeline-metadata img.pipeline-metadata__plot-image")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    page.wait_for_function(
        "() => { const i = document.querySelector('.pipeline-metadata__plot-image'); "
        "return i && i.complete && i.naturalWidth > 0; }"
    )
    page.screenshot(path=str(ARTIFACTS / "fluxgen_iqa_histograms_preview.png"))
