"""Whether a process recorded earlier (a daemon, a local DFT worker, a trainer) still runs.

One answer for the whole project: a pid that was never set (0 or negative) is not alive; a
zombie (what `kill -9` of a child leaves until it is reaped) is not alive; and when the
process's start time was recorded with its pid, a different process that has since been given
the same pid is not mistaken for it.
"""

from __future__ import annotations


def pid_alive(pid: int | None, create_time: float | None = None) -> bool:
    """True if `pid` runs on this host, is not a zombie and, given `create_time` (psutil's
    `Process.create_time()` when it was recorded), is the same process."""
    import psutil

    if not pid or pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return create_time is None or abs(process.create_time() - create_time) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True
    except psutil.Error:
        return False


def create_time(pid: int) -> float | None:
    """The start time to record beside a pid (None if the process is already gone)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
