"""MLflow tracking against a real `mlflow server` (SQLite backend, 127.0.0.1, random port), read over REST.

A tiny fluxgen run is pointed at the server through a conf override in a project copy; the run is then
read back with plain HTTP calls to /api/2.0/mlflow/... : experiment per pipeline, run name and tags
(Kedro run id, pipeline, env, git commit), flattened parameters, metrics and the reporting artifacts.
A second test saves a tiny FluxIR adapter through a real Kedro runner and checks it reaches the run
with its config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, kedro_run, make_project_copy
from support import adapter_params

# Every test logs to a real mlflow server process (HTTP tracking), started once for the module.
# its module fixtures (the server, the tracked run) are made once: every test of the file on one worker
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_mlflow_tracking")]


# ------------------------------------------------------------------------------------------------ REST


def _get(base: str, endpoint: str, **query) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}" if query else f"{base}{endpoint}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(base: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{endpoint}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get_bytes(base: str, endpoint: str, **query) -> bytes:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return response.read()


def _experiment_id(base: str, name: str) -> str | None:
    try:
        return _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=name)["experiment"][
            "experiment_id"
        ]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def _runs(base: str, experiment_id: str) -> list[dict]:
    return _post(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 100}).get(
        "runs", []
    )


def _as_dict(entries: list[dict] | None) -> dict:
    return {entry["key"]: entry["value"] for entry in entries or []}


def _artifacts(base: str, run_id: str, path: str = "") -> list[dict]:
    query = {"run_id": run_id, **({"path": path} if path else {})}
    return _get(base, "/api/2.0/mlflow/artifacts/list", **query).get("files", [])


# ------------------------------------------------------------------------------------------------ server


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it spawns workers), then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the leader is gone; workers of its group may linger
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a SQLite store in a temp folder; its process group is stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(mlflow_cli),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not ready in 180 s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        _stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def tracked_fluxgen(mlflow_server, tmp_path_factory):
    """A tiny fluxgen run in a project copy whose conf points kedro-mlflow at the server; the copy a git checkout."""
    project = make_project_copy(tmp_path_factory.mktemp("mlflow_run") / "project")
    # The env's mlflow.yml replaces base's top-level `server` key: the run logs to the server, not mlflow.db.
    (project / "conf" / "tiny" / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: {mlflow_server}\n")
    # A checkout with one commit and no tracked file: the hook asks git for the commit and whether it is dirty.
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "run"], cwd=project, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, check=True, capture_output=True, text=True)
    env_backup = os.environ.pop("FLUXIR_GIT_COMMIT", None)
    try:
        kedro_run(project, "run", "--env=tiny", "--pipeline=fluxgen", "--params=fluxgen.num_images=6,fluxgen.steps=2")
    finally:
        if env_backup is not None:
            os.environ["FLUXIR_GIT_COMMIT"] = env_backup
    # The Kedro run id is the save version of every versioned dataset of the run.
    versions = sorted(p.name for p in (project / "data/08_reporting/iqa_histograms.png").iterdir())
    assert len(versions) == 1
    experiment_id = _experiment_id(mlflow_server, "fluxir-fluxgen")
    assert experiment_id is not None, "a run of pipeline fluxgen logs to experiment fluxir-fluxgen"
    runs = _runs(mlflow_server, experiment_id)
    assert len(runs) == 1
    return {"project": project, "base": mlflow_server, "run_id": versions[0], "run": runs[0], "sha": sha.stdout.strip()}


# ------------------------------------------------------------------------------------------------ tests


def test_run_lands_in_its_pipeline_experiment_named_and_tagged(tracked_fluxgen):
    run, kedro_run_id, base = tracked_fluxgen["run"], tracked_fluxgen["run_id"], tracked_fluxgen["base"]
    info = run["info"]
    assert info["status"] == "FINISHED"
    assert info["run_name"] == f"fluxgen-{kedro_run_id}"
    tags = _as_dict(run["data"].get("tags"))
    assert tags["kedro.run_id"] == kedro_run_id
    assert tags["kedro.session_id"] == kedro_run_id
    assert tags["kedro.pipeline"] == "fluxgen"
    assert tags["kedro.env"] == "tiny"
    assert tags["git.commit"] == tracked_fluxgen["sha"]
    assert tags["mlflow.source.git.commit"] == tracked_fluxgen["sha"]
    assert tags["git.dirty"] == "false"
    # Nothing went to the default pipeline's experiment (kedro-mlflow creates it, empty).
    default_id = _experiment_id(base, "fluxir")
    assert default_id is None or _runs(base, default_id) == []


def test_params_are_flattened_and_metrics_logged(tracked_fluxgen):
    data = tracked_fluxgen["run"]["data"]
    params = _as_dict(data.get("params"))
    assert params["fluxgen.num_images"] == "6"  # the --params override
    assert params["fluxgen.steps"] == "2"
    assert params["fluxgen.height"] == "48"  # tiny env value
    assert params["select.percentile"] == "5"
    assert params["degrade.seed"] == "0"
    assert "iqa.metrics" in params and "fluxgen" not in params  # dicts flattened, not logged whole
    metrics = _as_dict(data.get("metrics"))
    assert metrics["select.n_scored"] == 6
    assert 0 < metrics["select.n_kept"] <= 6
    assert metrics["select.kept_fraction"] == pytest.approx(metrics["select.n_kept"] / 6)


def test_reporting_artifacts_are_uploaded(tracked_fluxgen):
    base, run_id, project = (
        tracked_fluxgen["base"],
        tracked_fluxgen["run"]["info"]["run_id"],
        tracked_fluxgen["project"],
    )
    files = {Path(f["path"]).name: f for f in _artifacts(base, run_id, "reporting")}
    assert "iqa_histograms.png" in files
    remote = _get_bytes(base, "/get-artifact", run_id=run_id, path="reporting/iqa_histograms.png")
    local = project / "data/08_reporting/iqa_histograms.png" / tracked_fluxgen["run_id"] / "iqa_histograms.png"
    assert remote == local.read_bytes() and remote.startswith(b"\x89PNG")


def test_adapter_is_logged_with_its_config(mlflow_server, tmp_path, monkeypatch):
    """A real Kedro runner saves a tiny adapter to a `models` dataset; the hook logs folder + config."""
    import mlflow
    from kedro.framework.hooks.manager import _create_hook_manager
    from kedro.io import DataCatalog
    from kedro.io.core import Version
    from kedro.pipeline import Node, Pipeline
    from kedro.runner import SequentialRunner

    from fluxir.datasets import FluxIRAdapterDataset
    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.adapter_config import FluxIRConfig
    from fluxir.runtime.hooks import MlflowDatasetsHook

    config = FluxIRConfig(
        **adapter_params(rank=4),
        text_seq_len=8,
        num_layers=2,
        num_single_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
    )
    monkeypatch.chdir(tmp_path)
    catalog = DataCatalog(
        {
            "fluxir_adapter": FluxIRAdapterDataset(
                filepath=str(tmp_path / "06_models" / "fluxir_adapter"),
                version=Version(None, None),
                metadata={"kedro-viz": {"layer": "models"}},
            ),
        }
    )
    hooks = _create_hook_manager()
    hook = MlflowDatasetsHook()
    hooks.register(hook)
    hook.after_catalog_created(catalog)
    pipeline = Pipeline([Node(lambda: FluxIRAdapter(config), None, "fluxir_adapter", name="make_adapter")])

    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server)
    try:
        experiment = mlflow.set_experiment("fluxir-hook-test")
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            SequentialRunner().run(pipeline, catalog, hooks)
        run_id = run.info.run_id
    finally:
        mlflow.set_tracking_uri(previous_uri)

    saved = next((tmp_path / "06_models" / "fluxir_adapter").glob("*/fluxir_adapter"))
    files = {Path(f["path"]).name for f in _artifacts(mlflow_server, run_id, "models/fluxir_adapter")}
    assert {"config.json", "adapter.safetensors"} <= files
    remote_config = json.loads(
        _get_bytes(mlflow_server, "/get-artifact", run_id=run_id, path="models/fluxir_adapter/config.json")
    )
    assert remote_config == json.loads((saved / "config.json").read_text())
    remote_weights = _get_bytes(
        mlflow_server, "/get-artifact", run_id=run_id, path="models/fluxir_adapter/adapter.safetensors"
    )
    assert remote_weights == (saved / "adapter.safetensors").read_bytes()
    data = _get(mlflow_server, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]["data"]
    params, tags = _as_dict(data.get("params")), _as_dict(data.get("tags"))
    assert params["fluxir_adapter.rank"] == "4"
    assert params["fluxir_adapter.num_layers"] == "2"
    assert tags["fluxir_adapter.path"] == str(saved)
