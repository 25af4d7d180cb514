"""The dashboard over a store that a real campaign wrote: `crystalloop run` with real pw.x
(two Al/Si cells at test settings, about a minute), then every page in headless Chromium,
its numbers checked against the store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure
from test_dashboard_browser import CHROMIUM, DRIVER, browser, field, free_port, open_page, rows

from agent.store import Store

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the page tests

pytestmark = [
    pytest.mark.slow,
    pytest.mark.dft,
    pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed (make qe)"),
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="needs chromium + driver"),
]


@pytest.fixture()
def campaign_store(tmp_path: Path, crystalloop_home: Path, monkeypatch) -> str:
    from dft.pseudos import install
    from dft.settings import DFTSettings

    pseudos = install("pseudodojo-pbe-standard", DFTSettings(pseudo_dir=None))
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(pseudos))
    cells = tmp_path / "cells"
    cells.mkdir()
    fcc = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]])
    fcc.get_primitive_structure().to(filename=str(cells / "al.cif"))
    dia = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    dia.get_primitive_structure().to(filename=str(cells / "si.cif"))
    config = {
        "name": "dash-real",
        "generators": [
            {
                "name": "dataset",
                "candidates_per_cycle": 2,
                "options": {"source": str(cells), "cubic": False},
            }
        ],
        "filters": {"charge_balance": False, "stoichiometry": False, "property_window": None},
        "acquisition": {"policy": "greedy", "params": {}, "diversity": False},
        "batch_size": 2,
        "dft": {"ecutwfc": 20, "kpoint_density": 60, "chgnet_prerelax": False},
        "budgets": {"max_dft_calculations": 2},
        "retraining": {"enabled": False},
        "stopping": {"max_cycles": 1},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", str(path)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return config["name"]


def test_campaign_page_over_a_real_campaign(campaign_store, browser, tmp_path):
    import uvicorn

    from agent.dashboard.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(refresh=1.0), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    base, name = f"http://127.0.0.1:{port}", campaign_store
    try:
        with Store.connect() as store:
            counts = store.count_by_status(name)
            done = store.find_calculations(name, "completed")
            candidates = store.find_candidates(name)
        assert len(done) == 2 and counts["completed"] == 2

        open_page(browser, base + "/")
        (row,) = rows(browser, "campaigns")
        assert row[0] == name and row[12] == "2 / 2"

        open_page(browser, f"{base}/campaign/{name}", ["parity"])
        assert field(browser, "dft_completed") == "2"
        assert field(browser, "candidates") == str(sum(counts.values()))
        energies = browser.execute_script("return document.getElementById('g-parity').data[0].y")
        expected = sorted(c["formation_energy_per_atom"] for c in done)
        assert sorted(energies) == pytest.approx(expected, abs=1e-12)
        assert browser.save_screenshot(str(tmp_path / "real-campaign.png"))

        open_page(browser, f"{base}/campaign/{name}/candidates")
        assert field(browser, "total") == str(len(candidates))
        assert sorted(r[4] for r in rows(browser, "candidates")) == sorted(
            c["formula"] for c in candidates
        )

        calc = done[0]
        open_page(browser, f"{base}/candidate/{calc['candidate_id']}", ["generated", "relaxed"])
        assert field(browser, "formula") == calc["formula"]
        assert field(browser, "dft") == f"{calc['formation_energy_per_atom']:.3f}"
        assert rows(browser, "attempts")  # the real pw.x attempt, read from its task folder

        open_page(browser, f"{base}/campaign/{name}/queue")
        assert rows(browser, "running") == [] and field(browser, "running") == "0"
        open_page(browser, f"{base}/campaign/{name}/models", ["models"])
        assert rows(browser, "models") == []  # retraining is off in this campaign
        open_page(browser, f"{base}/campaign/{name}/policies", ["selection"])
        assert field(browser, "policy") == "greedy"
    finally:
        server.should_exit = True
        thread.join(10)
