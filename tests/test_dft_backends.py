"""Execution backends end to end with real pw.x: local worker processes on the one-file-per-
document store, and FireWorks in one process on mongomock (or a real MongoDB when
CRYSTALLOOP_TEST_MONGO_URI is set)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from dft.backends import FireWorksBackend, LocalBackend, NotFinished
from dft.file_store import make_file_jobstore
from dft.inputs import make_input
from dft.makers import relax_candidate
from dft.pseudos import install
from dft.settings import DFTSettings

pytestmark = [
    pytest.mark.dft,
    pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed (make qe)"),
]

# test-scale settings; a k density (not a fixed grid) so elemental references use the same rule
FAST = {"ecutwfc": 20.0, "kpoint_density": 60.0}


def al() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]]
    ).get_primitive_structure()


def si() -> Structure:
    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    return conv.get_primitive_structure()


@pytest.fixture(scope="session")
def installed_pseudos() -> Path:
    return install("pseudodojo-pbe-standard", DFTSettings())


@pytest.fixture()
def dft_env(installed_pseudos: Path, crystalloop_home: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(installed_pseudos))
    return crystalloop_home


def test_local_backend_end_to_end_and_restart(dft_env: Path, tmp_path: Path) -> None:
    root = tmp_path / "local"
    backend = LocalBackend(root, concurrency=2)
    h_al = backend.submit(
        "al-1", relax_candidate(al(), "al-1", prerelax=True, settings_overrides=FAST)
    )
    h_si = backend.submit(
        "si-1", relax_candidate(si(), "si-1", prerelax=False, settings_overrides=FAST)
    )
    with pytest.raises(NotFinished):
        backend.result(h_si)
    # a "restarted daemon": new object, same directory -> same handle, nothing resubmitted
    again = LocalBackend(root, concurrency=2)
    assert again.submit("si-1", relax_candidate(si(), "si-1", settings_overrides=FAST)) == h_si
    assert again.handle_for("al-1") == h_al
    assert len(list((root / "submissions").glob("*.json"))) == 2
    states = again.wait([h_al, "si-1"], timeout=600)
    assert {s.state for s in states.values()} == {"completed"}, states
    doc = again.result("al-1")
    assert doc["candidate_id"] == "al-1"
    # Al vs Al: zero up to two relaxations from different starts (reference: CHGNet volume)
    assert doc["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-4)
    assert doc["prerelax_steps"] is not None and doc["ionic_steps"] >= 1
    si_doc = backend.result(h_si)
    assert si_doc["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-4)
    assert Structure.from_dict(si_doc["structure"]).composition.reduced_formula == "Si"


def _kill_worker(root: Path) -> None:
    rec_path = next((root / "submissions").glob("*.json"))
    os.kill(json.loads(rec_path.read_text())["pid"], signal.SIGKILL)  # dies without reporting


def test_local_backend_detects_a_killed_worker(dft_env: Path, tmp_path: Path) -> None:
    root = tmp_path / "strict"
    backend = LocalBackend(root, concurrency=1, lost_retries=0)
    flow = relax_candidate(al(), "al-lost", prerelax=False, settings_overrides=FAST)
    h = backend.submit("al-lost", flow)
    _kill_worker(root)
    status = backend.wait([h], timeout=60)["al-lost"]
    assert status.state == "failed" and status.detail.startswith("lost")
    # after a restart, the agent may queue it again explicitly
    assert LocalBackend(root, concurrency=1).rerun("al-lost").state in ("queued", "running")
    assert backend.wait([h], timeout=300)["al-lost"].state == "completed"


def test_local_backend_requeues_a_lost_run(dft_env: Path, tmp_path: Path) -> None:
    root = tmp_path / "lenient"
    backend = LocalBackend(root, concurrency=1, lost_retries=1)
    flow = relax_candidate(al(), "al-requeue", prerelax=False, settings_overrides=FAST)
    h = backend.submit("al-requeue", flow)
    _kill_worker(root)
    status = backend.wait([h], timeout=300)["al-requeue"]
    assert status.state == "completed" and status.lost_count == 1
    assert backend.result(h)["candidate_id"] == "al-requeue"


def _record(root: Path, candidate_id: str) -> dict:
    return json.loads((root / "submissions" / f"{LocalBackend.key(candidate_id)}.json").read_text())


def test_reading_status_never_starts_work(dft_env: Path, tmp_path: Path) -> None:
    """`crystalloop dft status` and poll only read: with a worker slot free and a candidate
    queued, and a dead worker on record, nothing starts or is requeued until dispatch."""
    from typer.testing import CliRunner

    from agent.cli import app

    root = tmp_path / "status"
    backend = LocalBackend(root, concurrency=1, lost_retries=1)
    first = backend.submit(
        "al-a", relax_candidate(al(), "al-a", prerelax=False, settings_overrides=FAST)
    )
    second = backend.submit(
        "al-b", relax_candidate(al(), "al-b", prerelax=False, settings_overrides=FAST)
    )
    assert _record(root, "al-b")["state"] == "queued"  # concurrency 1: al-a runs, al-b waits
    os.kill(_record(root, "al-a")["pid"], signal.SIGKILL)  # frees the slot, reports nothing
    records = sorted((root / "submissions").glob("*.json"))
    before = [p.read_bytes() for p in records]
    for _ in range(3):
        shown = CliRunner().invoke(app, ["dft", "status", "--root", str(root)])
        assert shown.exit_code == 0, shown.output
        assert backend.poll(first).state == "queued" and backend.poll(second).state == "queued"
    assert [p.read_bytes() for p in records] == before  # nothing written, nothing started
    assert _record(root, "al-a")["state"] == "running" and _record(root, "al-b")["pid"] is None
    lost = backend.poll(first)
    assert lost.lost_count == 1 and "next dispatch" in lost.detail
    states = backend.wait([first, second], timeout=600)  # wait dispatches: now work starts
    assert {s.state for s in states.values()} == {"completed"}, states
    assert states["al-a"].lost_count == 1


def test_concurrent_local_workers_keep_every_output(tmp_path: Path) -> None:
    """Eight flows of 25 jobs, four workers writing outputs at once: every output is there,
    whole and unchanged, and no write is left half-done."""
    from jobflow import Flow
    from jobflow.core.job import store_inputs

    root = tmp_path / "many"
    backend = LocalBackend(root, concurrency=4)
    expected: dict[str, dict] = {}
    handles, last = [], {}
    for f in range(8):
        jobs = []
        for j in range(25):
            payload = {"flow": f, "job": j, "values": list(range(j, j + 400))}
            jobs.append(store_inputs(payload))
            expected[jobs[-1].uuid] = payload
        handles.append(backend.submit(f"many-{f}", Flow(jobs, output=jobs[-1].output)))
        last[f"many-{f}"] = expected[jobs[-1].uuid]
    states = backend.wait(handles, timeout=600, every=0.2)
    assert {s.state for s in states.values()} == {"completed"}, states
    backend.store.connect()
    stored = {d["uuid"]: d["output"] for d in backend.store.query({}, ["uuid", "output"])}
    assert len(stored) == 8 * 25 and stored == expected
    assert all(backend.result(h) == last[h.candidate_id] for h in handles)
    assert not [p for p in (root / "store").rglob("*") if p.name.endswith(".tmp")]


def test_elemental_references_are_jobs_shared_across_campaigns(
    dft_env: Path, tmp_path: Path
) -> None:
    """Each element's reference is a job of its own whose uuid is fixed by element and
    settings; a second campaign's flow finds its output in the JobStore and runs no pw.x."""
    from jobflow import run_locally

    settings = DFTSettings()
    store = make_file_jobstore(tmp_path / "jobstore")
    flow_a = relax_candidate(si(), "campaign-a:si", prerelax=False, settings_overrides=FAST)
    flow_b = relax_candidate(si(), "campaign-b:si", prerelax=False, settings_overrides=FAST)
    finer = relax_candidate(
        si(), "c:si", prerelax=False, settings_overrides={**FAST, "ecutwfc": 22.0}
    )
    (ref_a,) = [j for j in flow_a.jobs if j.name == "reference Si"]
    (ref_b,) = [j for j in flow_b.jobs if j.name == "reference Si"]
    (ref_finer,) = [j for j in finer.jobs if j.name == "reference Si"]
    assert ref_a.uuid == ref_b.uuid != ref_finer.uuid
    run_locally(flow_a, store=store, ensure_success=True)
    first = store.get_output(ref_a.uuid)
    assert first["source"] == "computed" and first["energy_per_atom"] < -100
    # as on another machine: no reference in its cache, none in its runs folder
    shutil.rmtree(settings.home / "dft" / "references")
    shutil.rmtree(settings.runs_dir / "references")
    run_locally(flow_b, store=store, ensure_success=True)
    second = store.get_output(ref_b.uuid)
    assert second["source"] == "job store" and second["energy_per_atom"] == first["energy_per_atom"]
    assert not (settings.runs_dir / "references").exists()  # pw.x never ran for it
    formation = store.get_output(flow_b.output.uuid)
    assert formation["references"] == {"Si": first["energy_per_atom"]}
    # Si against itself: zero, up to where two vc-relaxations from different starting cells
    # (the reference starts at CHGNet's volume) stop inside the thresholds (measured 4e-6)
    assert formation["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-4)


def _fireworks_roundtrip(lp, store, tmp_path: Path) -> None:
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    backend = FireWorksBackend(lp, store=store, embed_store=True, max_reruns=1)
    flow = relax_candidate(al(), "al-fw", prerelax=False, settings_overrides=FAST)
    h = backend.submit("al-fw", flow)
    assert backend.submit("al-fw", relax_candidate(al(), "al-fw", settings_overrides=FAST)) == h
    assert FireWorksBackend(lp, store=store).handle_for("al-fw") == h
    assert backend.poll(h).state == "queued"
    # a candidate whose job fails (no pseudo for Xe at this pseudo_dir) fizzles, is rerun once
    bad_dir = tmp_path / "upf"
    bad_dir.mkdir()
    xe = Structure(Lattice.cubic(6.0), ["Xe"], [[0, 0, 0]])
    bad = relax_candidate(
        xe,
        "xe-bad",
        prerelax=False,
        check_pseudos=False,
        settings_overrides={**FAST, "pseudo_dir": str(bad_dir)},
    )
    hb = backend.submit("xe-bad", bad)
    cwd = os.getcwd()
    try:
        rapidfire(lp, FWorker(), m_dir=str(tmp_path))
        assert backend.poll(h).state == "completed"
        # the elemental reference ran as a firework of its own
        ref = lp.fireworks.find_one({"fw_id": {"$in": h.fw_ids}, "name": "reference Al"})
        assert ref is not None and ref["state"] == "COMPLETED"
        assert backend.poll(hb).state == "queued"  # fizzled, reruns left: reported queued...
        fizzled = {"fw_id": {"$in": hb.fw_ids}, "state": "FIZZLED"}
        assert lp.fireworks.count_documents(fizzled) >= 1  # ...but reading reran nothing
        backend.dispatch()
        assert lp.fireworks.count_documents(fizzled) == 0
        rapidfire(lp, FWorker(), m_dir=str(tmp_path))
    finally:
        os.chdir(cwd)
    failed = backend.poll(hb)
    assert failed.state == "failed" and "MissingPseudoError" in failed.detail
    assert failed.reruns == 1
    assert backend.rerun(hb).state == "queued"
    doc = backend.result(h)
    assert doc["candidate_id"] == "al-fw" and doc["reduced_formula"] == "Al"
    assert doc["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-4)


def test_fireworks_backend_mongomock(dft_env: Path, tmp_path: Path, monkeypatch) -> None:
    server = tmp_path / "mongomock.json"
    server.write_text("{}")
    monkeypatch.setenv("MONGOMOCK_SERVERSTORE_FILE", str(server))
    import fireworks.core.launchpad as lpmod
    import mongomock_persistence  # noqa: F401 - makes mongomock read/write the serverstore file
    from fireworks import LaunchPad

    monkeypatch.setattr(lpmod, "MongoClient", mongomock_persistence.MongoClient)
    lp = LaunchPad()
    lp.reset("", require_password=False)
    _fireworks_roundtrip(lp, make_file_jobstore(tmp_path / "db"), tmp_path)


@pytest.mark.skipif(
    not os.environ.get("CRYSTALLOOP_TEST_MONGO_URI"), reason="CRYSTALLOOP_TEST_MONGO_URI not set"
)
def test_fireworks_backend_real_mongodb(dft_env: Path, tmp_path: Path) -> None:
    from fireworks import LaunchPad
    from jobflow import JobStore
    from maggma.stores import MongoURIStore

    uri = os.environ["CRYSTALLOOP_TEST_MONGO_URI"]
    name = f"crystalloop_test_{uuid.uuid4().hex[:8]}"
    lp = LaunchPad(host=uri, name=name, uri_mode=True)
    lp.reset("", require_password=False)
    store = JobStore(
        MongoURIStore(uri, "outputs", database=name),
        additional_stores={"data": MongoURIStore(uri, "outputs_data", database=name)},
    )
    try:
        _fireworks_roundtrip(lp, store, tmp_path)
    finally:
        lp.connection.drop_database(name)


def test_a_reference_locked_elsewhere_computes_its_siblings_first(dft_env: Path) -> None:
    """Two workers on compounds of one chemistry: while another holds Al's lock, the Al job
    computes Si (the compound's other element) instead of idling, then waits for Al."""
    import fcntl
    import threading

    from dft.reference_jobs import run_reference
    from dft.references import basis_of, cache_dir, fingerprint, reference_input

    settings = DFTSettings(**FAST)
    basis = basis_of(make_input(si(), "vc-relax", settings))
    paths = {
        el: cache_dir(settings)
        / f"{el}-{fingerprint(el, reference_input(el, basis, settings), settings)}"
        for el in ("Al", "Si")
    }
    held = open(paths["Al"].with_suffix(".lock"), "w")  # noqa: SIM115 - the other worker
    fcntl.flock(held, fcntl.LOCK_EX)
    out: dict = {}
    job = threading.Thread(
        target=lambda: out.update(doc=run_reference("Al", basis, FAST, ["Al", "Si"]))
    )
    job.start()
    deadline = time.time() + 120
    while not paths["Si"].with_suffix(".json").is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert paths["Si"].with_suffix(".json").is_file()  # computed while Al was locked
    assert job.is_alive() and not paths["Al"].with_suffix(".json").is_file()
    fcntl.flock(held, fcntl.LOCK_UN)  # the other worker gave up: this job computes Al itself
    held.close()
    job.join(timeout=120)
    assert out["doc"].element == "Al" and out["doc"].source == "computed"


def test_a_worker_relaxes_before_computing_shared_references() -> None:
    """jobflow's automatic order would run the references (the flow's roots) first, so every
    worker queued on the others' reference locks before its own relaxation."""
    from jobflow import Flow, JobOrder, job
    from jobflow.utils.graph import itergraph

    from dft.local_worker import listed_order

    flow = relax_candidate(si(), "si-1", prerelax=False, settings_overrides=FAST)

    def labels(f: Flow) -> list[str]:
        return [f.graph.nodes[n]["label"] for n in itergraph(f.graph)]

    assert labels(flow).index("reference Si") < labels(flow).index("qe relax")
    assert listed_order(flow) and flow.order == JobOrder.LINEAR
    assert labels(flow) == ["symmetrize", "qe relax", "reference Si", "formation energy"]

    @job
    def add(a: int, b: int) -> int:
        return a + b

    first = add(1, 2)
    second = add(first.output, 3)
    backwards = Flow([second, first])  # listed against its dependency: keep jobflow's order
    assert not listed_order(backwards) and backwards.order == JobOrder.AUTO
