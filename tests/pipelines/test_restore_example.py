"""The tiny restore example (``make demo``'s last run, the README's "restore your photos" on a laptop): the command
is read from the Makefile and its options run in this process on a project copy with the demo's photos and a
saved adapter. Tiny random-weight models: this proves the files and the bookkeeping, not the restoration.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from fluxir.cli import run as kedro_run_command
from fluxir.parameters.config import parse_overrides

from conftest import REPO, make_project_copy
from support import kedro_session_run, save_identity_adapter

# its module fixtures are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_restore_example")


def restore_example() -> list[str]:
    """The ``RESTORE_EXAMPLE`` command of the Makefile, split as the shell splits it."""
    line = re.search(r"^RESTORE_EXAMPLE := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert line, "the Makefile defines no RESTORE_EXAMPLE"
    args = shlex.split(line.group(1).replace("$(VENV)/bin/", ""))
    assert args[:2] == ["kedro", "run"], args
    return args


@pytest.fixture(scope="module")
def restored(tmp_path_factory) -> dict:
    project = make_project_copy(tmp_path_factory.mktemp("restore_example") / "project")
    save_identity_adapter(project)
    options = kedro_run_command.make_context("run", restore_example()[2:]).params
    params = parse_overrides(options["cli_params"])
    (pipeline,) = options["pipelines"]  # Kedro's option splits at commas
    kedro_session_run(project, options["env"], pipeline, params)
    return {"project": project, "options": options, "params": params}


def test_the_example_is_the_tiny_restore_pipeline_on_the_demo_photos(restored):
    options, params = restored["options"], restored["params"]
    assert options["env"] == "tiny" and list(options["pipelines"]) == ["restore"]
    assert Path(params["restore"]["input_dir"]) == Path("data/01_raw/benchmarks_demo/RealLQ250")


def test_every_demo_photo_is_restored_at_four_times_its_size(restored):
    project = restored["project"]
    photos = project / restored["params"]["restore"]["input_dir"]
    output = project / (restored["params"]["restore"].get("output_dir") or "data/07_model_output/restored")
    inputs = sorted(p.relative_to(photos) for p in photos.rglob("*.png"))
    assert inputs, "make_project_copy wrote no demo photos"
    outputs = sorted(p.relative_to(output) for p in output.rglob("*.png"))
    assert outputs == inputs
    for name in inputs:
        with Image.open(photos / name) as lq, Image.open(output / name) as out:
            assert out.size == (lq.width * 4, lq.height * 4)


def test_the_restore_run_names_its_adapter(restored):
    project = restored["project"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fluxir-restore").experiment_id])
    versions = [p.name for p in (project / "data/06_models/fluxir_adapter").iterdir()]
    assert run.data.params["fluxir_adapter.version"] in versions
    assert run.data.params["fluxir_adapter.training_run_id"] == "not recorded"  # an adapter saved outside training
    assert run.data.tags["fluxir.command"].startswith("kedro run --env=tiny --pipelines=restore")
