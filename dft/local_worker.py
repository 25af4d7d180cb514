"""Worker process of the local backend: `python -m dft.local_worker ROOT CANDIDATE_ID`.

Runs one flow with jobflow's run_locally into the backend's one-file-per-document store (other
workers write beside it, never into the same file) and records the outcome in the submission
file. Started detached, so it finishes its calculation even if the daemon dies."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def main(root: str, candidate_id: str) -> int:
    from jobflow import Flow, run_locally
    from monty.json import MontyDecoder

    from dft.backends import LocalBackend, local_jobstore, write_record

    root_p = Path(root)
    key = LocalBackend.key(candidate_id)
    flow = MontyDecoder().process_decoded(
        json.loads((root_p / "flows" / f"{key}.json").read_text())
    )
    if not isinstance(flow, Flow):
        flow = Flow(flow)
    listed_order(flow)
    store = local_jobstore(root_p)
    error = ""
    try:
        run_locally(
            flow,
            store=store,
            root_dir=root_p / "runs" / key,
            create_folders=True,
            ensure_success=True,
            raise_immediately=True,
        )
    except Exception as exc:  # noqa: BLE001 - recorded for poll(); the worker must not crash silently
        error = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc()
    import fcntl

    with open(root_p / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        rec = json.loads((root_p / "submissions" / f"{key}.json").read_text())
        if rec.get("pid") is None or rec["pid"] == _pid():
            rec.update(state="failed" if error else "completed", error=error)
            rec["finished_at"] = time.time()
            write_record(root_p, rec)
    return 1 if error else 0


def listed_order(flow) -> bool:
    """Run a flow's jobs in the order it lists them, where that order respects every data
    dependency; returns whether it does.

    A worker runs one flow's jobs one after another anyway. jobflow's automatic order runs all
    root jobs first, and in a candidate's flow the roots are the elemental references, which
    the other workers need too: each worker then queued behind the others on the references'
    lock before starting its own relaxation. `relax_candidate` lists the relaxation first, so
    the workers relax side by side and the references are done by whichever gets there first.
    """
    from jobflow import JobOrder

    if flow.order != JobOrder.AUTO:
        return False
    position = {job.uuid: i for i, job in enumerate(flow.jobs)}
    if len(position) != len(flow.jobs):
        return False
    for parent, child in flow.graph.edges():
        if parent in position and child in position and position[parent] >= position[child]:
            return False
    flow.order = JobOrder.LINEAR
    return True


def _pid() -> int:
    import os

    return os.getpid()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
