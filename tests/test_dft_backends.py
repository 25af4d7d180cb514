"""Execution backends end to end with real pw.x: local worker processes on a MontyStore, and
FireWorks in one process on mongomock (or a real MongoDB when CRYSTALLOOP_TEST_MONGO_URI is set)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from dft.backends import FireWorksBackend, LocalBackend, NotFinished, make_monty_jobstore
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
    assert doc["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-6)  # Al vs Al
    assert doc["prerelax_steps"] is not None and doc["ionic_steps"] >= 1
    si_doc = backend.result(h_si)
    assert si_doc["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-6)
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
        assert backend.poll(hb).state == "queued"  # fizzled -> rerun
        rapidfire(lp, FWorker(), m_dir=str(tmp_path))
    finally:
        os.chdir(cwd)
    failed = backend.poll(hb)
    assert failed.state == "failed" and "MissingPseudoError" in failed.detail
    assert failed.reruns == 1
    assert backend.rerun(hb).state == "queued"
    doc = backend.result(h)
    assert doc["candidate_id"] == "al-fw" and doc["reduced_formula"] == "Al"
    assert doc["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-6)


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
    _fireworks_roundtrip(lp, make_monty_jobstore(tmp_path / "db"), tmp_path)


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
