"""One Kedro node, many processes: a stage's ``accelerate launch -m fluxir...`` entry point as a child job, and the
child processes that die with their parent. With ``<stage>.num_processes`` > 1, ``run_stage``
1. launches ``accelerate launch --multi_gpu --num_processes N -m <module> [<stage>]`` with the parent run's ``--env``
   and ``--params`` (published by ``LaunchContextHook``), so the child reads the same configuration and catalog
   (``--multi_gpu`` also on a CPU-only machine: ``--cpu`` with ``--num_processes`` would silently run one);
2. hands the child the parent's MLflow run (``MLFLOW_RUN_ID``): one ``kedro run`` stays one MLflow run;
3. starts it under a guard (``python -m fluxir.runtime --parent <pid> -- <command>``), a child subreaper: torchrun
   starts each rank in a session of its own, but every descendant orphaned below the guard is reparented to it.
   When the parent dies (even by SIGKILL), on Ctrl-C or SIGTERM, and when the launcher ends, the guard SIGTERMs
   every descendant left and SIGKILLs those still there after ``GRACE_SECONDS``. No orphan keeps a GPU;
4. streams the child's output into the Kedro log line by line and raises if it fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A stage's ``num_processes`` parameter: an int or "auto", typed Any because Kedro 1.7's parameter validator warns
# about a union hint (int | str) on a params input.
NumProcesses = Any

# Set by LaunchContextHook for the duration of a `kedro run` (environment variables: ParallelRunner's nodes see them).
ENV_VAR, PARAMS_VAR, PROJECT_VAR = "FLUXIR_KEDRO_ENV", "FLUXIR_KEDRO_PARAMS", "FLUXIR_KEDRO_PROJECT"
GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36


def visible_gpus() -> int:
    """CUDA devices this process can see (``CUDA_VISIBLE_DEVICES`` applied), 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_num_processes(setting: Any, name: str, gpus: int | None = None) -> int:
    """``auto``: one process per visible GPU (1 on a CPU-only machine); otherwise a positive integer. ``name`` is
    the parameter (``fluxgen.num_processes``) the error message names."""
    if setting == "auto":
        return max(1, visible_gpus() if gpus is None else gpus)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"{name} must be 'auto' or a positive integer, got {setting!r}")
    return setting


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


@contextlib.contextmanager
def scratch_dir(stage: str) -> Iterator[Path]:
    """A temporary folder for what a node hands its child job (tables, an adapter) and gets back (train's)."""
    with tempfile.TemporaryDirectory(prefix=f"fluxir-{stage}-") as folder:
        yield Path(folder)


def run_stage(
    command: Sequence[str],
    num_processes: int,
    what: str,
    in_process: Callable[[], Any],
    args: Sequence[str] = (),
    tables: Mapping[str, Any] | None = None,
    adapter: Any = None,
) -> Any:
    """The one way a node runs its stage: ``in_process()`` here on one process, else ``accelerate launch -m
    <command>`` (a module and its subcommand, ``["fluxir.fluxgen", "generate"]``) on ``num_processes`` with this
    ``kedro run``'s env and ``--params`` plus ``args``, ``tables`` (``{"--manifest": DataFrame}``, as parquet files)
    and ``adapter`` (``--adapter <folder>``). Returns what ``in_process()`` returned, None after a launch."""
    if num_processes == 1:
        return in_process()
    if ENV_VAR not in os.environ:
        raise RuntimeError(
            "a stage with num_processes > 1 launches a child job with the parameters of its `kedro run`; run it "
            "through `kedro run`, or launch the stage's `accelerate launch -m fluxir...` command yourself"
        )
    kedro_env, project = os.environ[ENV_VAR], os.environ[PROJECT_VAR]
    params = json.loads(os.environ.get(PARAMS_VAR) or "{}")
    # The children get the GPU memory this process's caching allocator holds (earlier nodes' models are gone by now).
    torch = sys.modules.get("torch")  # never imported here: a parent that did no torch work has nothing to free
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()  # tensors only a reference cycle still holds
        torch.cuda.empty_cache()
    # NCCL on GPUs, gloo on a CPU-only machine; mixed precision is each stage's own parameter, so the launcher adds none
    options = f"--multi_gpu --num_processes {num_processes} --num_machines 1 --mixed_precision no --dynamo_backend no"
    module, *subcommand = command
    command = [sys.executable, "-m", "accelerate.commands.launch", *options.split(), "--main_process_port"]
    command += [str(free_port()), "-m", module, *subcommand, "--env", kedro_env, "--project", project]
    command += [*override_args(params), *args]
    env = dict(os.environ)  # plus the active MLflow run and its tracking URI: rank 0 logs into that run
    mlflow = sys.modules.get("mlflow")  # imported by kedro-mlflow when tracking is on; never imported here
    if (run := mlflow.active_run() if mlflow is not None else None) is not None:
        env.update(MLFLOW_RUN_ID=run.info.run_id, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    else:
        env.pop("MLFLOW_RUN_ID", None)
    with scratch_dir(what) as scratch:
        for flag, table in (tables or {}).items():
            table.to_parquet(scratch / f"{flag.lstrip('-')}.parquet")
            command += [flag, str(scratch / f"{flag.lstrip('-')}.parquet")]
        if adapter is not None:
            from fluxir.models.adapter import save_adapter  # diffusers: only a stage with an adapter pays for it

            save_adapter(adapter, scratch / "adapter")
            command += ["--adapter", str(scratch / "adapter")]
        logger.info("%s on %d processes: %s", what, num_processes, " ".join(command[2:]))
        start = time.perf_counter()
        code, tail = run_guarded(command, cwd=project, env=env, log_prefix=f"[{what}] ")
    if code != 0:
        raise RuntimeError(
            f"{what} on {num_processes} processes failed (exit status {code}); last output:\n" + "\n".join(tail)
        )
    logger.info("%s on %d processes done in %.1f s", what, num_processes, time.perf_counter() - start)


def run_guarded(
    command: Sequence[str], cwd: str | os.PathLike, env: Mapping[str, str], log_prefix: str = "", keep: int = 40
) -> tuple[int, list[str]]:
    """Run ``command`` under the guard, every output line into the log; returns (exit status, last lines)."""
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        # SIGKILL the group if the guard still runs after its own clean-up had time (GRACE_SECONDS, and as long again)
        deadline = time.monotonic() + 2 * GRACE_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a guard that hangs, and what is left of its group
        proc.wait()
        raise


def guard(parent: int, command: Sequence[str], poll_seconds: float = 0.2) -> int:
    """``python -m fluxir.runtime --parent PID -- command...``: run ``command``; end it and everything it started
    when ``parent`` is gone or this guard is signalled (also what the command leaves behind when it ends by itself).

    It polls its parent pid: ``PR_SET_PDEATHSIG`` would reach only the launcher, not the ranks and their workers.
    """
    reaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphaned descendants (ranks in their own sessions) come to us
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


# ------------------------------------------------------------------------------------------------
# Children that die with their parent: a parent killed with SIGKILL (the OOM killer, ``scancel -s KILL``) runs no
# clean-up, so its DataLoader workers would stay, blocked forever. ``die_with_parent`` is called first thing in the
# child (a ``worker_init_fn`` or pool initializer): on Linux the kernel SIGKILLs the child when its parent ends
# (``PR_SET_PDEATHSIG``); elsewhere, or for a process that is not the direct parent (a forkserver's client), a
# daemon thread checks once a second.


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: the pid was reused by someone else's process
        return False
    return True


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants() -> list[int]:
    """Live (not zombie) descendants of this process, from ``/proc``; [] without ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:  # ended while listed
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.split(" ", 1)[0]))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_descendants(grace: float, poll: float = 0.05) -> None:
    """SIGTERM every live descendant of this process, SIGKILL those left after ``grace`` seconds; again until
    none is left (a process whose parent ended meanwhile is reparented here when this is a subreaper)."""
    while pids := descendants():
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and set(pids) & set(descendants()):
            time.sleep(poll)
        _signal_all(descendants(), signal.SIGKILL)
        time.sleep(poll)


def _watch(pid: int, interval: float) -> None:
    while _alive(pid):
        time.sleep(interval)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """In a child: end this process (SIGKILL) as soon as process ``parent_pid`` (the one that owns the work, its
    ``os.getpid()`` passed before the children start) ends."""
    direct = os.getppid() == parent_pid
    signalled = _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # on the direct parent, whichever process that is
    if not _alive(parent_pid) or (direct and os.getppid() != parent_pid):  # it died before we got here
        os.kill(os.getpid(), signal.SIGKILL)
    if direct and signalled:
        return
    threading.Thread(target=_watch, args=(parent_pid, interval), name="fluxir-parent-watch", daemon=True).start()


def worker_init() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that ties each worker to this process."""
    return functools.partial(_init_worker, os.getpid())


def _init_worker(parent_pid: int, _worker_id: int) -> None:
    die_with_parent(parent_pid)
