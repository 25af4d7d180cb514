"""Named crash points, so the crash-safety tests can SIGKILL the daemon at an exact step.

Set CRYSTALLOOP_KILL_AT=name (or name:N for the N-th time the point is reached) and the process
kills itself with SIGKILL there - the same signal an OOM killer or `kill -9` sends, with no
chance to clean up. Unset, a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter[str] = Counter()


def checkpoint(name: str) -> None:
    target = os.environ.get("CRYSTALLOOP_KILL_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _seen[name] += 1
    if _seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
