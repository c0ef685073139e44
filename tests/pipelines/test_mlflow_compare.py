"""Comparing runs in MLflow: an evaluate run names the adapter it evaluated (version, fingerprint, the MLflow run
that trained it), and its ``fluxir.command`` tag reruns it.

One project copy, runs in this process (``support.kedro_session_run``, MLflow on the copy's SQLite store): fluxgen
once, two trainings (adapters A and B, different ranks), then evaluate pinned to each with ``--load-versions``.
Tiny random-weight models: this proves the bookkeeping, never the quality of either adapter.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from fluxir.cli import run as kedro_run_command
from fluxir.parameters.config import parse_overrides
from fluxir.runtime.tracking import params_value, rerun_command

from conftest import make_project_copy
from support import kedro_session_run

# its module-scoped runs are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_mlflow_compare")

# the subject is what each run records of its adapter: FluxIR and the method that needs no model
EVALUATE_PARAMS = {"evaluate": {"restore": {"steps": 2}, "methods": ["fluxir", "bicubic"]}, "restore": {"seed": 3}}


def client(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def runs_of(project: Path, experiment: str) -> list:
    mlc = client(project)
    found = mlc.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    return mlc.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    """Two adapters and an evaluate run of each; returns the project and the MLflow runs."""
    project = make_project_copy(tmp_path_factory.mktemp("mlflow_compare") / "project")
    kedro_session_run(project, "tiny", "fluxgen", {"fluxgen": {"num_images": 6, "steps": 2}})
    for rank in (4, 8):
        train = {"max_steps": 2, "validate_every": 2, "checkpoint_every": 2, "adapter": {"rank": rank}}
        kedro_session_run(project, "tiny", "train", {"train": train})
    trainings = runs_of(project, "fluxir-train")
    versions = [r.data.tags["kedro.run_id"] for r in trainings]
    for version in versions:
        kedro_session_run(project, "tiny", "evaluate", EVALUATE_PARAMS, load_versions={"fluxir_adapter": version})
    return {
        "project": project,
        "trainings": trainings,
        "versions": versions,
        "evaluations": runs_of(project, "fluxir-evaluate"),
    }


def test_each_evaluate_run_names_the_adapter_it_evaluated(compared):
    from fluxir.evaluation.restore import adapter_fingerprint
    from fluxir.models.adapter import load_adapter

    project, evaluations = compared["project"], compared["evaluations"]
    assert len(evaluations) == 2
    fingerprints = set()
    for evaluation, training, version in zip(evaluations, compared["trainings"], compared["versions"]):
        params = evaluation.data.params
        folder = project / "data" / "06_models" / "fluxir_adapter" / version / "fluxir_adapter"
        assert params["fluxir_adapter.version"] == version
        assert Path(params["fluxir_adapter.path"]).resolve() == folder.resolve()
        assert params["fluxir_adapter.fingerprint"] == adapter_fingerprint(load_adapter(folder))
        assert params["fluxir_adapter.training_run_id"] == training.info.run_id  # the run that trained it
        assert params["fluxir_adapter.training_steps"] == "2"
        assert params["fluxir_adapter.training_run_key"] == training.data.params["train_run.run_key"]
        fingerprints.add(params["fluxir_adapter.fingerprint"])
    assert len(fingerprints) == 2  # two adapters, told apart in the run table


def test_the_command_tag_parses_as_the_run_it_came_from(compared):
    version = compared["versions"][0]
    tags = compared["evaluations"][0].data.tags
    command = tags["fluxir.command"]
    assert tags["kedro_command"] == command
    args = shlex.split(command)
    assert args[:2] == ["kedro", "run"]
    options = kedro_run_command.make_context("run", args[2:]).params
    assert options["env"] == "tiny"
    assert list(options["pipelines"]) == ["evaluate"]
    assert options["load_versions"] == {"fluxir_adapter": version}
    assert parse_overrides(options["cli_params"]) == EVALUATE_PARAMS


def test_the_command_tag_reruns_the_run(compared):
    """Run the tag's options again: the same adapter, the same scores, the same command."""
    project, first = compared["project"], compared["evaluations"][0]
    options = kedro_run_command.make_context("run", shlex.split(first.data.tags["fluxir.command"])[2:]).params
    kedro_session_run(
        project,
        options["env"],
        options["pipelines"][0],
        parse_overrides(options["cli_params"]),
        load_versions=options["load_versions"],
    )
    again = runs_of(project, "fluxir-evaluate")[-1]
    assert again.info.run_id != first.info.run_id
    assert again.data.tags["fluxir.command"] == first.data.tags["fluxir.command"]
    scores = {k: v for k, v in first.data.metrics.items() if k.startswith("eval.")}
    assert scores and {k: again.data.metrics[k] for k in scores} == pytest.approx(scores)
    for key in ("fluxir_adapter.version", "fluxir_adapter.fingerprint", "fluxir_adapter.training_run_id"):
        assert again.data.params[key] == first.data.params[key]


def test_a_restore_with_a_public_method_names_no_adapter(compared, tmp_path):
    project = compared["project"]
    photos = project / "data" / "01_raw" / "benchmarks_demo"
    folder = next(p for p in photos.rglob("*") if p.is_dir() and any(f.suffix == ".png" for f in p.iterdir()))
    params = {"restore": {"method": "realesrgan", "input_dir": str(folder), "output_dir": str(tmp_path / "out")}}
    kedro_session_run(project, "tiny", "restore", params)
    run = runs_of(project, "fluxir-restore")[-1]
    assert not any(k.startswith("fluxir_adapter.") for k in run.data.params)
    assert "--pipelines=restore" in run.data.tags["fluxir.command"]


def test_kedro_outputs_names_what_the_runs_made(compared):
    """`kedro outputs` (``make demo``'s last command) reads the catalog: the latest adapter, the report, the store."""
    from conftest import kedro_run

    printed = kedro_run(compared["project"], "outputs", "--env", "tiny").stdout
    rows = {line.split("  ")[1].strip(): line for line in printed.splitlines() if line.startswith("  ")}
    assert "none yet" not in rows["pairs (HQ/LQ)"], printed
    latest = sorted(compared["versions"])[-1]
    assert f"version {latest}" in rows["FluxIR adapter"] and f"/{latest}/" in rows["FluxIR adapter"], printed
    assert rows["evaluation report"].endswith("evaluation_report.html"), printed
    assert "mlflow.db: make mlflow" in rows["MLflow runs"] and "every run" in rows["MLflow runs"], printed


@pytest.mark.parametrize(
    "value", ["data/photos", "1", "true", "a,b", "x=y", 0.5, 1e-5, 3, None, True, [[512, 512]], []]
)
def test_params_values_round_trip(value):
    assert parse_overrides([f"k={params_value(value)}"])["k"] == value


def test_typed_options_and_run_file_are_kept_as_given():
    run_params = {
        "env": None,
        "pipeline_names": ["fluxgen", "train"],
        "tags": ["a", "b"],
        "to_nodes": ["fluxgen.select_by_iqa"],
        "runtime_params": {"fluxgen": {"num_images": 9}},
    }
    cli = {"config": "conf/run_small.yml", "cli_params": ("fluxgen.num_images=9",), "runner": "ThreadRunner"}
    command = rerun_command(run_params, cli)
    options = kedro_run_command.make_context("run", shlex.split(command)[2:]).params
    assert options["env"] == "local"  # resolved: what a run without --env read
    assert "--config=conf/run_small.yml" in shlex.split(command)
    assert options["config"]  # Kedro's option read the run file
    assert list(options["pipelines"]) == ["fluxgen", "train"]
    assert options["tags"] in ("a,b", ["a", "b"], ("a", "b"))
    assert options["to_nodes"] in ("fluxgen.select_by_iqa", ["fluxgen.select_by_iqa"])
    assert options["runner"] == "ThreadRunner"
    assert options["cli_params"] == ("fluxgen.num_images=9",)


def test_the_cli_accepts_the_command_it_is_given():
    """A syntax check of the tag's form through Kedro's own command (--help after the options parses them all)."""
    command = rerun_command({"env": "tiny", "pipeline_names": ["evaluate"], "runtime_params": {"a": {"b": [1, 2]}}})
    result = CliRunner().invoke(kedro_run_command, [*shlex.split(command)[2:], "--help"])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------------------
# The UI: `make mlflow`'s address lands on the runs table; the compare view of the two evaluate runs


@pytest.fixture(scope="module")
def mlflow_ui(compared):
    """``kedro mlflow-ui`` (what ``make mlflow`` runs) on the compared project's store: the addresses
    it printed and the server's root."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import free_port

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("kedro")), "mlflow-ui", "--port", str(port)],
        cwd=compared["project"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # mlflow ui starts workers: the whole group is stopped at the end
    )
    printed: list[str] = []
    root = f"http://127.0.0.1:{port}"
    try:
        while not any("fluxir-evaluate" in line for line in printed):
            line = server.stdout.readline()
            assert line, f"kedro mlflow-ui ended before printing the addresses: {printed}"
            printed.append(line.rstrip())
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{root}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "mlflow ui did not come up"
            time.sleep(1)
        yield {"printed": printed, "root": root}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_page(mlflow_ui):
    from support import CHROMIUM_ARGS, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed: scripts/setup.sh (make setup) installs it, or set FLUXIR_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
        page.set_default_timeout(90_000)
        yield page
        browser.close()


@pytest.mark.e2e  # starts a server (mlflow ui) and a browser: its subject is what a user sees
def test_make_mlflow_prints_the_runs_table_of_each_experiment(compared, mlflow_ui, mlflow_page):
    experiment = client(compared["project"]).get_experiment_by_name("fluxir-evaluate")
    address = f"{mlflow_ui['root']}/#/experiments/{experiment.experiment_id}/runs"
    assert any(line.split()[-1] == address for line in mlflow_ui["printed"]), mlflow_ui["printed"]
    page = mlflow_page
    page.goto(address)
    for run in compared["evaluations"]:
        page.get_by_text(run.info.run_name, exact=False).first.wait_for()
    route = page.url.partition("#")[2].partition("?")[0]
    assert route == f"/experiments/{experiment.experiment_id}/runs"  # still the runs table, not the overview
    body = page.inner_text("body")
    assert "Token usage" not in body and "No traces" not in body  # not the GenAI overview


@pytest.mark.e2e  # a browser on the server: the compare view a user opens from the runs table
def test_the_compare_view_shows_both_adapters(compared, mlflow_ui, mlflow_page, tmp_path):
    import json
    import os
    import urllib.parse

    from conftest import REPO

    evaluations = compared["evaluations"][:2]
    runs = json.dumps([r.info.run_id for r in evaluations])
    experiments = json.dumps([evaluations[0].info.experiment_id])
    query = urllib.parse.urlencode({"runs": runs, "experiments": experiments}, quote_via=urllib.parse.quote)
    page = mlflow_page
    page.set_viewport_size({"width": 1500, "height": 2000})
    page.goto(f"{mlflow_ui['root']}/#/compare-runs?{query}")
    page.get_by_text("fluxir_adapter.fingerprint").first.wait_for()
    close = page.get_by_role("button", name="Close", exact=True)  # MLflow's assistant panel, open by default
    if close.count():
        close.first.click()
    for table in ("Parameters", "Metrics", "Tags"):  # the rows in which the two runs differ
        page.get_by_role("switch", name=f"{table} - Show diff only").click()
    page.locator(".js-plotly-plot").first.wait_for()
    page.get_by_text("Comparing 2 Runs").scroll_into_view_if_needed()
    page.wait_for_timeout(1500)  # the plot's transition
    body = page.inner_text("body")
    for run in evaluations:
        assert run.data.params["fluxir_adapter.fingerprint"] in body
        assert run.data.params["fluxir_adapter.version"] in body
    # docs/img/mlflow_compare.png is this screenshot: FLUXIR_DOC_IMAGES=1 writes it there (else the run leaves the
    # checkout as it found it)
    folder = REPO / "docs" / "img" if os.environ.get("FLUXIR_DOC_IMAGES") == "1" else tmp_path
    screenshot = folder / "mlflow_compare.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_a_kedro_run_keeps_its_run_file_path_and_typed_params():
    """Inside ``kedro run -c FILE --params ...`` (click's context, as the hooks see it)."""
    from fluxir.runtime.tracking import kedro_run_options

    from conftest import REPO

    run_file = str(REPO / "conf" / "run_small.yml")
    context = kedro_run_command.make_context("run", ["-c", run_file, "--env", "tiny", "--params", "fluxgen.steps=3"])
    with context:
        options = kedro_run_options()
    assert options["config"] == run_file
    assert options["cli_params"] == ("fluxgen.steps=3",)
    args = shlex.split(rerun_command({"env": "tiny", "runtime_params": {"fluxgen": {"steps": 3}}}, options))
    assert args == ["kedro", "run", "--env=tiny", f"--config={run_file}", "--params=fluxgen.steps=3"]
    assert kedro_run_options() == {}  # outside a kedro run command
