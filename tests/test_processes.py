"""One `pid_alive` for the daemon lock, the trainer and the local DFT workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dft.processes import create_time, pid_alive


def test_unset_pids_are_not_alive() -> None:
    assert not pid_alive(None) and not pid_alive(0) and not pid_alive(-1)


def test_a_running_process_is_alive_only_as_itself() -> None:
    me = os.getpid()
    assert pid_alive(me) and pid_alive(me, create_time(me))
    assert not pid_alive(me, create_time(me) - 3600)  # a recycled pid: a different process


def test_a_dead_child_is_not_alive_before_or_after_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while pid_alive(child.pid) and time.time() < deadline:
        time.sleep(0.05)  # exits, then lingers as a zombie until waited for
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)


def test_the_agent_uses_the_same_implementation() -> None:
    from agent.store import lock

    assert lock.pid_alive is pid_alive
