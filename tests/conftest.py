"""Shared test set-up: offline, single-threaded torch (tiny CPU runs are faster and steadier so)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
# MLflow 3 starts a usage-telemetry client at import (a thread that fetches config.mlflow-telemetry.io): a run in
# this process under no_network would meet it at a random moment
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_FLUX = REPO / "data" / "01_raw" / "tiny" / "flux"


@pytest.fixture
def tiny_flux_dir() -> Path:
    """The committed tiny random-weight Flux pipeline folder."""
    return TINY_FLUX


@pytest.fixture(scope="session")
def full_format_model(tmp_path_factory):
    """``full_format_model(kind) -> folder``: a hub-format tiny pipeline folder (``scripts/tiny_models.py``) with
    real tokenizers and text encoders, built once per test session (a few seconds each)."""
    from tiny_models import write_tiny_pipeline

    root = tmp_path_factory.mktemp("full_format_models")
    return lambda kind: write_tiny_pipeline(kind, root / kind)  # idempotent: built on first use only


@pytest.fixture(scope="session")
def full_flux_dir(full_format_model) -> Path:
    """The FLUX.1-dev-format tiny folder: CLIPTokenizer, CLIPTextModel, T5TokenizerFast, T5EncoderModel, ..."""
    return full_format_model("flux")


def make_project_copy(project: Path, demo_benchmarks: bool = True) -> Path:
    """A throw-away copy of this Kedro project (pyproject, conf, tiny models; src linked) at ``project``; with
    ``demo_benchmarks``, the tiny environment's demo benchmark folders written as `make demo` writes them."""
    import shutil

    project.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    shutil.copy(REPO / ".telemetry", project / ".telemetry")
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    # mlflow keys its stores by URI text: a relative sqlite:///mlflow.db would send an in-process run of this copy
    # to the database of the first project this worker ran
    mlflow_yml = project / "conf" / "base" / "mlflow.yml"
    text = mlflow_yml.read_text()
    assert "mlflow_tracking_uri: sqlite:///mlflow.db" in text
    absolute = f"mlflow_tracking_uri: sqlite:///{project.resolve() / 'mlflow.db'}"
    mlflow_yml.write_text(text.replace("mlflow_tracking_uri: sqlite:///mlflow.db", absolute))
    for committed in ("tiny", "reference"):  # the committed inputs under data/01_raw
        shutil.copytree(REPO / "data" / "01_raw" / committed, project / "data" / "01_raw" / committed)
    (project / "src").mkdir()  # kedro checks the source dir exists; fluxir itself is installed (editable)
    if demo_benchmarks:
        from demo_data import write_env_demo

        write_env_demo("tiny", project)
    return project


@pytest.fixture
def kedro_project(tmp_path: Path) -> Path:
    """A throw-away copy of this Kedro project: runs write there, not in the repo."""
    return make_project_copy(tmp_path / "project")


@pytest.fixture(scope="session")
def tiny_fluxgen_project(tmp_path_factory) -> Path:
    """A project copy with one tiny fluxgen run (6 images, 2 steps) in it, made once per session (per worker
    under pytest-xdist) for the tests that only read its outputs (test_viz, test_notebook)."""
    project = make_project_copy(tmp_path_factory.mktemp("tiny_fluxgen") / "project")
    kedro_run(project, "run", "--env=tiny", "--pipeline=fluxgen", "--params=fluxgen.num_images=6,fluxgen.steps=2")
    return project


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for accelerate's rendezvous, mlflow server)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kedro_run(project: Path, *args: str, check: bool = True, timeout: int = 600):
    """``kedro <args>`` in ``project``, in this process (Kedro's own CLI object, so ``--params``, ``-c`` and
    ``--env`` are parsed as on the command line); returns a CompletedProcess with what it printed.

    A failure (an exception out of the run) is returncode 1 with its traceback in stderr. The working
    directory and the MLFLOW_* variables (mlflow exports the tracking URI and experiment) are put back
    afterwards. ``timeout`` is unused: an in-process run has no process to bound.
    """
    import contextlib
    import io
    import logging
    import subprocess
    import traceback

    from kedro.framework.cli.cli import KedroCLI
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)  # Kedro's first configuration of logging, before the handler below is added
    out, err = io.StringIO(), io.StringIO()
    cwd, mlflow_environ = Path.cwd(), {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    returncode = 0
    records = logging.StreamHandler(out)  # every log line whole: the console wraps them at its width
    records.setLevel(logging.INFO)
    logging.getLogger().addHandler(records)
    os.chdir(project)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                KedroCLI(project).main(args=list(args), prog_name="kedro", standalone_mode=False)
            except SystemExit as exit_:
                returncode = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # what `kedro run` would print before exiting with 1
                traceback.print_exc(file=err)
                returncode = 1
    finally:
        logging.getLogger().removeHandler(records)
        os.chdir(cwd)
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            os.environ.pop(key)
        os.environ.update(mlflow_environ)
    proc = subprocess.CompletedProcess(["kedro", *args], returncode, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kedro {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def kedro_process(project: Path, *args: str, check: bool = True, timeout: int = 600):
    """Run ``kedro <args>`` in ``project`` in a subprocess; returns the CompletedProcess. Only for tests whose
    subject is the process (exit codes, signals, child jobs, what the command prints): others use ``kedro_run``."""
    import subprocess
    import sys

    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run([str(kedro), *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kedro {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


# The heaviest work units of `make test-all` first, by `--durations`: xdist hands a worker its next unit when it is
# nearly idle, so a long unit handed out last would run alone at the end. Longest first keeps both workers busy to
# the end (the Makefile passes --no-loadscope-reorder, which would otherwise order units by their number of tests).
# An xdist_group name or a node id prefix; everything else keeps its collection order.
HEAVIEST_FIRST = (
    "test_base_end_to_end",
    "multiprocess_fluxgen",
    "tests/pipelines/test_multiprocess.py::test_evaluate_on_two_processes",
    "tests/pipelines/test_multiprocess.py::test_kill_9",
    "tests/pipelines/test_multiprocess.py::test_train_on_two_processes",
    "tests/pipelines/test_multiprocess.py::test_restore_on_two_processes",
    "test_evaluate",
    "tests/benchmarks/test_benchmarks_smoke.py::test_benchmark_with_processes_prints_its_json",
    "test_mlflow_compare",
    "test_iqa_offline",
    "test_quiet_log",
    "test_fluxgen_pipeline",
    "tests/fluxgen/test_fluxgen_scale.py",
    "tests/models/test_compile.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        groups = {str(m.args[0]) if m.args else m.kwargs.get("name", "") for m in item.iter_markers("xdist_group")}
        for index, key in enumerate(HEAVIEST_FIRST):
            if key in groups or item.nodeid.startswith(key):
                return index
        return len(HEAVIEST_FIRST)

    items.sort(key=rank)  # stable: the collection order within a rank


PROGRAMS = ("python", "kedro", "accelerate", "mlflow", "sbatch", "srun", "chromium")  # what costs a start-up


@pytest.fixture(autouse=True)
def _process_starts_are_declared(request, monkeypatch):
    """The fast tier starts no Python program unless the test says why (``@pytest.mark.starts_process(reason)``);
    tests whose subject is a process are ``@pytest.mark.e2e`` (``make test-all``). A start-up costs seconds here."""
    import subprocess

    if request.node.get_closest_marker("e2e") or request.node.get_closest_marker("starts_process"):
        yield
        return
    started: list[str] = []
    real_init = subprocess.Popen.__init__

    def recording_init(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        program = Path(os.fsdecode(argv[0]).split(" ")[0]).name if argv else ""
        if program.startswith(PROGRAMS):
            started.append(" ".join(os.fsdecode(a) for a in argv)[:160])
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)
    yield
    assert not started, (
        f"a fast-tier test started {started}: mark it e2e (its subject is the process) or "
        "starts_process('why it must') (docs: tests/conftest.py)"
    )


@pytest.fixture(autouse=True)
def _restore_process_state():
    """Put back what a test changed in this worker process: the SIGINT/SIGTERM handlers (a web server or a run
    guard installs its own, and a later test that interrupts something must find Python's), the working
    directory, the environment (mlflow exports MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID) and torch's
    thread count; and end an MLflow run a test left active (kedro-mlflow would log the next run into it)."""
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cwd, environ, threads = os.getcwd(), dict(os.environ), torch.get_num_threads()
    yield
    _end_mlflow_runs_left_open()
    for sig, handler in handlers.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _end_mlflow_runs_left_open() -> None:
    import sys

    mlflow = sys.modules.get("mlflow")
    while mlflow is not None and mlflow.active_run() is not None:
        try:
            mlflow.end_run()
        except Exception:  # its store may be a deleted temporary folder: forget the run all the same
            mlflow.tracking.fluent._active_run_stack.get().pop()


NETGUARD = REPO / "tests" / "netguard"


@pytest.fixture
def no_network(tmp_path_factory, monkeypatch):
    """Fail the test on any non-loopback connection, here and in subprocesses started from it.

    Subprocesses inherit PYTHONPATH with tests/netguard first, whose sitecustomize installs the same
    guard; every attempt is logged, so one swallowed by a library still fails the test.
    """
    import sys

    log = tmp_path_factory.mktemp("netguard") / "attempts.log"
    log.touch()
    monkeypatch.setenv("FLUXIR_NETGUARD_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")])))
    sys.path.insert(0, str(NETGUARD))
    import socket

    import netguard

    netguard.install(log)
    try:
        yield log
    finally:
        socket._fluxir_netguard_restore()
        sys.path.remove(str(NETGUARD))
    attempts = log.read_text()
    assert not attempts, f"network access attempted (blocked):\n{attempts[:4000]}"


@pytest.fixture
def opened_images(monkeypatch):
    """Every image file (``*.png``) opened through ``open`` from now on."""
    opened: list[str] = []
    import builtins

    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(".png"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened
