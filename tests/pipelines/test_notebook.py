"""notebooks/explore_fluxgen.ipynb runs top to bottom (nbclient, a real ipykernel) on a tiny fluxgen run.

The notebook is executed with its working directory in a project copy that holds one tiny fluxgen run,
so `%reload_kedro --env=tiny` finds that project and its catalog. The executed notebook is written to
test-artifacts/notebooks/ (git-ignored) for a look at its figures.
"""

from __future__ import annotations

import base64
import json
import re
import sys

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from conftest import REPO

# its module fixtures are made once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("test_notebook")

NOTEBOOK = REPO / "notebooks" / "explore_fluxgen.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "notebooks"


@pytest.fixture(scope="module")
def executed(tiny_fluxgen_project, tmp_path_factory):
    project = tiny_fluxgen_project
    # A kernel spec for this interpreter: the notebook must run in the project's venv, whatever else is installed.
    kernels = tmp_path_factory.mktemp("jupyter") / "kernels" / "fluxir-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "fluxir test",
                "language": "python",
            }
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(kernels.parent.parent))
    mp.setenv("FLUXIR_NOTEBOOK_ENV", "tiny")
    mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(
            nb,
            kernel_name="fluxir-test",
            timeout=300,
            allow_errors=False,
            resources={"metadata": {"path": str(project)}},
        )
        client.execute()
    finally:
        mp.undo()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, ARTIFACTS / NOTEBOOK.name)
    return nb, project


def _outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _text(nb) -> str:
    return "".join(out.get("text", "") for out in _outputs(nb) if out.get("output_type") == "stream")


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None for cell in nb.cells if cell.cell_type == "code"
    ), "clear the outputs before committing"
    source = "\n".join(cell.source for cell in nb.cells)
    assert "%load_ext kedro.ipython" in source and "%reload_kedro" in source


@pytest.mark.starts_process("the notebook runs in a real Jupyter kernel, a process of its own")
def test_notebook_runs_on_the_tiny_run_and_reports_its_numbers(executed):
    nb, project = executed
    assert all(out.get("output_type") != "error" for out in _outputs(nb))
    selection = pd.read_parquet(max((project / "data/04_feature/iqa_selection.parquet").glob("*/*")))
    pairs = pd.read_parquet(max((project / "data/05_model_input/pairs_manifest.parquet").glob("*/*")))
    match = re.search(r"scored (\d+) images, kept (\d+), rejected (\d+), (\d+) pairs \(env tiny", _text(nb))
    assert match, _text(nb)[-2000:]
    scored, kept, rejected, n_pairs = map(int, match.groups())
    assert (scored, kept, rejected, n_pairs) == (
        len(selection),
        int(selection["keep"].sum()),
        int((~selection["keep"]).sum()),
        len(pairs),
    )
    assert "HQ/LQ size ratios (w, h): [(4.0, 4.0)]" in _text(nb)


def test_notebook_draws_distributions_extremes_and_pairs(executed):
    nb, _ = executed
    pngs = [
        base64.b64decode(out["data"]["image/png"])
        for out in _outputs(nb)
        if out.get("output_type") in {"display_data", "execute_result"} and "image/png" in out.get("data", {})
    ]
    assert len(pngs) == 3, "histograms, kept/rejected extremes, HQ/LQ pairs"
    assert all(png.startswith(b"\x89PNG") and len(png) > 5_000 for png in pngs)
    tables = [out["data"]["text/html"] for out in _outputs(nb) if "<table" in out.get("data", {}).get("text/html", "")]
    assert len(tables) == 2  # the selection's first rows and the per-metric summary
    assert "lower is better" in tables[-1] and all(f"<th>{m}</th>" in tables[-1] for m in ("entropy", "piqe", "musiq"))
