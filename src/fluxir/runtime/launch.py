"""One Kedro node, many processes: a stage's ``accelerate launch -m fluxir...`` entry point as a child job.

Kedro runs a node in one process; a stage that can use every GPU (generate, score, train, evaluate's and
restore's restoration) reads ``<stage>.num_processes`` (``auto``: one process per visible GPU, 1 on a
CPU-only machine). Every such node calls ``run_stage``: on one process it runs the stage function in-process;
with more than one it

1. builds ``accelerate launch --multi_gpu --num_processes N -m <module> [<stage>] --env <env> --params ...``: the
   parent run's ``--env`` and ``--params`` (a ``-c`` config file's values included: Kedro merges them into
   the run parameters) come from ``LaunchContextHook`` (``fluxir.runtime.hooks``), so the child reads the same
   configuration and catalog. On a CPU-only machine the same form runs N gloo processes (``--cpu`` with
   ``--num_processes`` would silently run one);
2. hands the child the parent's MLflow run (``MLFLOW_RUN_ID``, ``MLFLOW_TRACKING_URI``): rank 0 logs into
   it, so one ``kedro run`` stays one MLflow run;
3. starts it under a guard (``python -m fluxir.runtime --parent <pid> -- <command>``), a child subreaper
   (``fluxir.runtime.processes.become_subreaper``): torchrun starts each rank in a session of its own, so the
   guard's process group does not hold the ranks, but every descendant orphaned below the guard is
   reparented to it. When the parent dies (even by SIGKILL), on Ctrl-C or SIGTERM of the parent, and when
   the launcher ends, the guard SIGTERMs every descendant left (launcher, ranks, DataLoader workers) and
   SIGKILLs those still there after ``GRACE_SECONDS``. No orphan keeps a GPU;
4. streams the child's output into the Kedro log line by line and raises if it fails.

The child runs the stage's own ``python -m`` command (``fluxir.runtime.entry``), the same function on every
process. Either way the node then lists what the stage wrote where the catalog expects it (training, the
evaluation's timings and a restoration's summary: what rank 0 of the job wrote into a ``scratch_dir``) and
returns it through the catalog. Reruns resume as the stages always do (finished images, score parts,
pairs and checkpoints are skipped).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A stage's ``num_processes`` parameter: an int or "auto". Nodes take it typed Any: Kedro 1.7's parameter
# validator warns about a union hint (int | str) on a params input, and it validates only dataclasses and
# pydantic models anyway (fluxir.parameters.validation checks the value).
NumProcesses = Any

# Set by fluxir.runtime.hooks.LaunchContextHook for the duration of a `kedro run` (environment variables, so a
# node run by Kedro's ParallelRunner sees them too).
ENV_VAR, PARAMS_VAR, PROJECT_VAR = "FLUXIR_KEDRO_ENV", "FLUXIR_KEDRO_PARAMS", "FLUXIR_KEDRO_PROJECT"
GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long


def visible_gpus() -> int:
    """CUDA devices this process can see (``CUDA_VISIBLE_DEVICES`` applied), 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_num_processes(setting: Any, name: str, gpus: int | None = None) -> int:
    """``auto``: one process per visible GPU (``gpus``, default: counted here; 1 on a CPU-only machine);
    otherwise a positive integer. ``name`` is the parameter (``fluxgen.num_processes``) the error message names.
    """
    if setting == "auto":
        return max(1, visible_gpus() if gpus is None else gpus)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"{name} must be 'auto' or a positive integer, got {setting!r}")
    return setting


# ------------------------------------------------------------------------------------------------
# What the child needs from the parent run


def set_run_context(
    env: str | None, params: Mapping[str, Any] | None, project: str | os.PathLike
) -> dict[str, str | None]:
    """Publish the running ``kedro run``'s env, ``--params`` and project root; returns the previous values."""
    from fluxir.parameters.config import (
        default_env,
    )  # imported here: the process guard (python -m fluxir.runtime) stays free of Kedro

    previous = {var: os.environ.get(var) for var in (ENV_VAR, PARAMS_VAR, PROJECT_VAR)}
    os.environ[ENV_VAR] = env or default_env()
    os.environ[PARAMS_VAR] = json.dumps(dict(params or {}), default=str)
    os.environ[PROJECT_VAR] = str(Path(project).resolve())
    return previous


def revert_run_context(previous: Mapping[str, str | None]) -> None:
    for var, value in previous.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def run_context() -> tuple[str, dict[str, Any], Path]:
    """(env, --params overrides, project root) of the running ``kedro run``; raises outside one."""
    if ENV_VAR not in os.environ:
        raise RuntimeError(
            "a stage with num_processes > 1 launches a child job with the parameters of its "
            "`kedro run`; run it through `kedro run`, or launch the stage's `accelerate launch -m "
            "fluxir...` command yourself"
        )
    return os.environ[ENV_VAR], json.loads(os.environ.get(PARAMS_VAR) or "{}"), Path(os.environ[PROJECT_VAR])


def override_args(params: Mapping[str, Any]) -> list[str]:
    """``--params key.sub=value`` arguments that rebuild ``params`` (nested, as Kedro parses ``--params``)."""
    from fluxir.parameters.config import flatten_dict

    args: list[str] = []
    for key, value in flatten_dict(params).items():
        args += ["--params", f"{key}={json.dumps(value)}"]  # JSON is YAML: the child parses it back exactly
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(module: str, args: Sequence[str], num_processes: int) -> list[str]:
    """``accelerate launch`` of ``python -m module args`` on ``num_processes`` local processes.

    ``--multi_gpu`` gives N processes with NCCL on GPUs and gloo on a CPU-only machine (the entry points
    build their accelerate state with ``cpu=`` from ``fluxir.models.loading.accelerate_cpu``). Mixed precision
    is each stage's own parameter, so the launcher adds none.
    """
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        module,
        *args,
    ]


def child_environment() -> dict[str, str]:
    """This process's environment plus its active MLflow run and tracking URI (rank 0 logs into that run)."""
    env = dict(os.environ)
    mlflow = sys.modules.get("mlflow")  # imported by kedro-mlflow when tracking is on; never imported here
    run = mlflow.active_run() if mlflow is not None else None
    if run is not None:
        env["MLFLOW_RUN_ID"] = run.info.run_id
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    else:
        env.pop("MLFLOW_RUN_ID", None)
    return env


@contextlib.contextmanager
def scratch_dir(stage: str) -> Iterator[Path]:
    """A temporary folder for what a node hands its child job (tables, an adapter) and gets back (train's)."""
    with tempfile.TemporaryDirectory(prefix=f"fluxir-{stage}-") as folder:
        yield Path(folder)


def release_gpu_memory() -> None:
    """Hand the GPU memory this process's caching allocator holds back to the device, so the children get
    all of it (models of an earlier node of this run are gone by now). Nothing when CUDA was never used."""
    torch = sys.modules.get("torch")  # never imported here: a parent that did no torch work has nothing to free
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()  # tensors only a reference cycle still holds
        torch.cuda.empty_cache()


def run_stage(
    command: Sequence[str],
    num_processes: int,
    what: str,
    in_process: Callable[[], Any],
    args: Sequence[str] = (),
    tables: Mapping[str, Any] | None = None,
    adapter: Any = None,
) -> Any:
    """The one way a node runs its stage: ``in_process()`` here on one process, else the stage's command
    (``python -m <command>``, the same stage function on every process) launched on ``num_processes``, handed
    ``args``, ``tables`` (``{"--manifest": DataFrame}``: written as parquet files) and ``adapter`` (``--adapter
    <folder>``). Either way the stage's outputs are then on disk where the catalog expects them. Returns what
    ``in_process()`` returned, None after a launch."""
    if num_processes == 1:
        return in_process()
    from fluxir.models.adapter import save_adapter

    with scratch_dir(what) as scratch:
        args = list(args)
        for flag, table in (tables or {}).items():
            table.to_parquet(scratch / f"{flag.lstrip('-')}.parquet")
            args += [flag, str(scratch / f"{flag.lstrip('-')}.parquet")]
        if adapter is not None:
            save_adapter(adapter, scratch / "adapter")
            args += ["--adapter", str(scratch / "adapter")]
        launch(command, args, num_processes, what)
    return None


def launch(command: Sequence[str], args: Sequence[str], num_processes: int, what: str) -> None:
    """Run ``accelerate launch -m <command>`` (a module and its subcommand, ``["fluxir.fluxgen", "generate"]``) on
    ``num_processes`` processes with this ``kedro run``'s env and ``--params`` plus ``args``; stream its output
    into the log; raise RuntimeError if it fails. What the stage wrote is on disk where the catalog expects it."""
    env, params, project = run_context()
    release_gpu_memory()
    module, *subcommand = command
    command = accelerate_command(
        module, [*subcommand, "--env", env, "--project", str(project), *override_args(params), *args], num_processes
    )
    logger.info("%s on %d processes: %s", what, num_processes, " ".join(command[2:]))
    start = time.perf_counter()
    code, tail = run_guarded(command, cwd=project, env=child_environment(), log_prefix=f"[{what}] ")
    if code != 0:
        raise RuntimeError(
            f"{what} on {num_processes} processes failed (exit status {code}); last output:\n" + "\n".join(tail)
        )
    logger.info("%s on %d processes done in %.1f s", what, num_processes, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------
# Parent side: start the guard, stream, end it on any interruption


def run_guarded(
    command: Sequence[str], cwd: str | os.PathLike, env: Mapping[str, str], log_prefix: str = "", keep: int = 40
) -> tuple[int, list[str]]:
    """Run ``command`` under the guard; every output line goes to the log. Returns (exit status, last lines)."""
    guard = [sys.executable, "-m", "fluxir.runtime", "--parent", str(os.getpid()), "--", *command]
    proc = subprocess.Popen(
        guard, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )  # its own process group: the guard ends all of it
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:  # progress bars redraw with \r: log each state as a line
            for line in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                if line.strip():
                    logger.info("%s%s", log_prefix, line)
                    tail = [*tail[-(keep - 1) :], line]
        return proc.wait(), tail
    except BaseException:  # Ctrl-C, a SIGTERM turned into an exception, a logging failure: no orphans
        end_group(proc.pid, proc)
        raise


def end_group(pgid: int, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group ``pgid`` (the guard's), SIGKILL it if its leader still runs after the guard's
    own clean-up had time (``GRACE_SECONDS`` for what it started, and as long again)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 2 * GRACE_SECONDS
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # a guard that hangs, and what is left of its group
    if proc is not None:
        proc.wait()


# ------------------------------------------------------------------------------------------------
# Guard side: `python -m fluxir.runtime --parent PID -- command...`


def guard(parent: int, command: Sequence[str], poll_seconds: float = 0.2) -> int:
    """Run ``command``; end it and everything it started when ``parent`` is gone or this guard is signalled.

    The guard polls its parent pid rather than using ``PR_SET_PDEATHSIG``: that signal reaches only the
    direct child (the launcher), not the ranks and DataLoader workers it starts. As a subreaper it also
    ends what the command leaves behind when it ends by itself (a rank that outlived its launcher).
    """
    from fluxir.runtime.processes import become_subreaper, end_descendants

    reaper = become_subreaper()
    stop: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    proc = subprocess.Popen(list(command))
    while proc.poll() is None and not stop and os.getppid() == parent:
        time.sleep(poll_seconds)
    if not reaper:  # no subreaper (not Linux): the process group (led by the guard) is all it can reach
        if proc.poll() is None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgrp(), signal.SIGTERM)
            deadline = time.monotonic() + GRACE_SECONDS
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(os.getpgrp(), signal.SIGKILL)  # ends this guard too
        return proc.returncode
    end_descendants(GRACE_SECONDS)
    code = proc.wait()
    return 128 + stop[0] if stop else code
