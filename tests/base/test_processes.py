"""Children die with their parent: a SIGKILLed owner leaves no worker behind (prctl on Linux, or the watchdog)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

# A child must die with its killed owner: the processes are the subject.
pytestmark = pytest.mark.e2e

# The owner starts a child that ties itself to the owner and sleeps; ``via_shell`` starts it through a shell
# that exits at once, so the child's parent is not the owner (as a forkserver's workers) and only the
# watchdog can notice.
OWNER = textwrap.dedent("""
    import os, subprocess, sys, time
    child = ("from fluxir.runtime.launch import die_with_parent; die_with_parent(%d); "
             "print('ready', flush=True); import time; time.sleep(600)" % os.getpid())
    if sys.argv[1] == "via_shell":
        subprocess.Popen(["sh", "-c", f"{sys.executable} -c \\"{child}\\" &"])
    else:
        subprocess.Popen([sys.executable, "-c", child])
    time.sleep(600)
""")


def _child_of(owner: psutil.Process, timeout: float = 60) -> psutil.Process:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            if f"die_with_parent({owner.pid})" in " ".join(p.info["cmdline"] or []) and p.pid != owner.pid:
                if p.name() != "sh":
                    return p
        time.sleep(0.1)
    raise AssertionError("the child did not start")


@pytest.mark.parametrize("how", ["direct", "via_shell"])
def test_a_child_dies_when_its_owner_is_killed(how):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, how], stdout=subprocess.PIPE, text=True)
    try:
        child = _child_of(psutil.Process(owner.pid))
        assert owner.stdout.readline().strip() == "ready"  # the child printed it past die_with_parent
        assert child.is_running()
        owner.kill()
        owner.wait()
        _, alive = psutil.wait_procs([child], timeout=120)  # a safety net: it returns as soon as the child is gone
        for p in alive:
            p.kill()
        assert not alive, f"the {how} child outlived its killed owner"
    finally:
        owner.kill()
