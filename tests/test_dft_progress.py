"""Following pw.x while it runs: the parser on a recorded output, then on a live pw.x run.

tests/data/pw_si_vc_relax.out is the unedited stdout of Debian's pw.x 6.7MaX for a vc-relax
of a distorted two-atom Si cell at the test settings of test_dft_pw.py (20 Ry, 2x2x2 k-points,
PseudoDojo PBE standard): 7 ionic steps, then the final SCF at the relaxed cell.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from dft.live_jobs import LocalJobs, PwProcess, running_pw_processes
from dft.progress import PwOutputFollower, read_progress

RECORDED = Path(__file__).parent / "data" / "pw_si_vc_relax.out"
RY = 13.6056931  # eV (ASE and CODATA differ in the 8th digit)


def _attempt(tmp_path: Path, text: str, calculation: str = "vc-relax") -> Path:
    directory = tmp_path / "attempt_0"
    directory.mkdir(parents=True)
    (directory / "pw.in").write_text(f"&CONTROL\n   calculation      = '{calculation}'\n/\n")
    (directory / "pw.out").write_text(text)
    return directory / "pw.out"


@pytest.mark.parametrize(
    ("lines", "step", "energy_ry", "force_ry_bohr"),
    [
        (150, "ionic 1 · SCF 4", -16.73409424, None),  # iteration 4 begun, 3 has an energy
        (300, "ionic 2 · SCF 2", -16.74044031, 0.001543),  # second geometry, first step's force
        (1290, "ionic 7 · SCF 7", -16.74225260, 0.000750),  # last geometry converged
        (1400, "final SCF 1", -16.74225260, 0.000750),  # the closing SCF at the relaxed cell
        (None, "done", -16.74341472, 0.000969),  # JOB DONE
    ],
)
def test_recorded_output_at_points_of_the_run(tmp_path, lines, step, energy_ry, force_ry_bohr):
    text = RECORDED.read_text()
    if lines is not None:
        text = "\n".join(text.split("\n")[:lines]) + "\n"
    progress = read_progress(_attempt(tmp_path, text))
    assert progress.step_text() == step
    assert progress.energy_ev == pytest.approx(energy_ry * RY, abs=1e-4)
    if force_ry_bohr is None:
        assert progress.total_force_ev_a is None
    else:
        assert progress.total_force_ev_a == pytest.approx(force_ry_bohr * 25.71104309541616)
    assert progress.max_ionic_steps == 50 and progress.calculation == "vc-relax"


def test_following_a_growing_file_matches_reading_it_whole(tmp_path):
    """Appended in odd-sized pieces (lines cut in half), the follower's state after each
    piece is what a fresh read of the same prefix gives, and the ionic step only grows."""
    data = RECORDED.read_bytes()
    out = _attempt(tmp_path, "")
    follower = PwOutputFollower(out)
    steps = []
    for end in range(0, len(data) + 1777, 1777):
        with out.open("ab") as handle:
            handle.write(data[end : end + 1777])
        followed = follower.poll()
        prefix = data[: end + 1777]
        complete = prefix[: prefix.rfind(b"\n") + 1]  # the follower waits for whole lines
        fresh_dir = tmp_path / f"fresh{end}"
        assert followed == read_progress(_attempt(fresh_dir, complete.decode()))
        steps.append(followed.ionic_step)
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 7
    assert follower.poll().finished


def test_scf_calculation_shows_only_scf_iterations(tmp_path):
    text = "\n".join(RECORDED.read_text().split("\n")[:150]) + "\n"
    progress = read_progress(_attempt(tmp_path, text, calculation="scf"))
    assert progress.step_text() == "SCF 4"


def local_backend_files(tmp_path, jobs: list[tuple[str, str]], states: dict[str, str]):
    """The local backend's folders with one stored flow of `jobs` (name, uuid) per candidate
    of `states` (candidate id -> backend state); returns (root, runs)."""
    import json

    from dft.backends import LocalBackend

    root, runs = tmp_path / "local", tmp_path / "runs"
    for sub in ("submissions", "flows"):
        (root / sub).mkdir(parents=True)
    flow = {
        "@class": "Flow",
        "jobs": [{"@class": "Job", "name": n, "uuid": u, "index": 1} for n, u in jobs],
    }
    for cid, state in states.items():
        key = LocalBackend.key(cid)
        (root / "flows" / f"{key}.json").write_text(json.dumps(flow))
        record = {"candidate_id": cid, "key": key, "state": state, "started_at": time.time()}
        (root / "submissions" / f"{key}.json").write_text(json.dumps(record))
    return root, runs


def test_candidate_and_reference_views_from_the_backend_files(tmp_path):
    """A candidate's pw.x run is found through the job uuids in its stored flow; a pw.x
    process in a references folder becomes its own line; nothing runs for a queued one."""
    root, runs = local_backend_files(
        tmp_path,
        [("qe relax", "u-relax"), ("formation energy", "u-form")],
        {"cand-running": "running", "cand-queued": "queued"},
    )
    text = "\n".join(RECORDED.read_text().split("\n")[:300]) + "\n"
    relax = _attempt(runs / "qe_relax-u-relax-1", text).parent
    ref = _attempt(runs / "references" / "O-abc123", text).parent
    now = time.time()
    procs = [PwProcess(relax, now - 65), PwProcess(ref, now - 5)]
    jobs = LocalJobs(root=root, runs_dir=runs, walltime_s=900, processes=lambda: procs)
    running, queued, reference = jobs.views(["cand-running", "cand-queued"])
    assert running.stage == "pw.x vc-relax" and running.step_text() == "ionic 2 · SCF 2"
    assert running.limit_s == 900 and 64 <= running.elapsed_s <= 70
    assert queued.stage == "queued" and queued.progress is None
    assert reference.label == "ref O" and reference.progress.ionic_step == 2
    # once its pw.x has exited (and finished), the candidate waits for its references
    procs.clear()
    (relax / "pw.out").write_text(RECORDED.read_text())
    (after,) = jobs.views(["cand-running"])
    assert after.stage == "references" and after.progress is None


def test_a_candidate_is_in_chgnet_until_its_output_is_stored(tmp_path):
    """Jobs of a flow that run no pw.x of their own: CHGNet until the worker's store holds
    its output, then (the relaxation not started yet) the references the worker runs first."""
    root, runs = local_backend_files(
        tmp_path, [("chgnet prerelax", "u-ff"), ("qe relax", "u-relax")], {"cand": "running"}
    )
    jobs = LocalJobs(root=root, runs_dir=runs, walltime_s=900, processes=lambda: [])
    assert jobs.views(["cand"])[0].stage == "CHGNet pre-relax"
    (root / "store" / "outputs" / "u-ff").mkdir(parents=True)
    assert jobs.views(["cand"])[0].stage == "references"


@pytest.mark.dft
@pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed (make qe)")
def test_follows_a_live_pw_x_run(tmp_path, crystalloop_home, monkeypatch):
    """While a real pw.x vc-relax runs: its process is found by working directory, the
    follower sees it move through ionic steps, and ends on the energy the run reports."""
    from dft.inputs import make_input
    from dft.pseudos import install
    from dft.runner import run_pw
    from dft.settings import DFTSettings

    pseudos = install("pseudodojo-pbe-standard", DFTSettings(pseudo_dir=None))
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(pseudos))
    settings = DFTSettings()
    si = Structure(
        Lattice([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]),
        ["Si", "Si"],
        [[0, 0, 0], [0.27, 0.25, 0.23]],
    )
    pw_input = make_input(si, "vc-relax", settings, ecutwfc=20.0, kpts=(2, 2, 2))
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(doc=run_pw(si, pw_input, tmp_path, settings))
    )
    thread.start()
    attempt = tmp_path / "attempt_0"
    follower = PwOutputFollower(attempt / "pw.out")
    seen, found_process = set(), False
    while thread.is_alive():
        progress = follower.poll()
        if progress.energy_ev is not None and not progress.finished:
            seen.add(progress.ionic_step)
        found_process |= attempt.resolve() in {p.directory for p in running_pw_processes()}
        time.sleep(0.2)
    thread.join()
    final = follower.poll()
    assert found_process
    assert len(seen) >= 2  # at least two geometries watched while pw.x was running
    assert final.finished and final.energy_ev == pytest.approx(result["doc"].energy, abs=1e-4)
