"""The live view: what it shows for a snapshot, and - end to end, through pseudo-terminals -
that `crystalloop run` and `crystalloop status --watch` show a pw.x job's step and energy
while the job runs."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure
from rich.console import Console

from agent.live import Snapshot, clock, plain_lines, render
from dft.live_jobs import JobView
from dft.progress import read_progress

RECORDED = Path(__file__).parent / "data" / "pw_si_vc_relax.out"
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9])")


def recorded_progress(tmp_path: Path, lines: int):
    attempt = tmp_path / "attempt_0"
    attempt.mkdir()
    (attempt / "pw.in").write_text("&CONTROL\n   calculation = 'vc-relax'\n/\n")
    text = "\n".join(RECORDED.read_text().split("\n")[:lines]) + "\n"
    (attempt / "pw.out").write_text(text)
    return read_progress(attempt / "pw.out")


def snapshot(progress) -> Snapshot:
    campaign = {
        "state": "running",
        "cycle": 2,
        "phase": "done",
        "config": {"stopping": {"max_cycles": 2}, "budgets": {"max_dft_calculations": 4}},
    }
    return Snapshot(
        name="perovskite-demo",
        campaign=campaign,
        counts={"pooled": 9, "submitted": 1, "running": 1, "completed": 2, "failed": 0},
        cycle={"cycle": 2, "generated": 66, "duplicates": 3, "rejected": 55, "pooled": 8},
        jobs=[
            JobView("1f3a9c2e", "1f3a9c2e" + "0" * 24, "pw.x vc-relax", progress, 0, 754, 900),
            JobView("77b0d4aa", "77b0d4aa" + "0" * 24, "CHGNet pre-relax", elapsed_s=31),
            JobView("ref O", None, "pw.x reference", progress, 1, 12, 900),
        ],
        formulas={"1f3a9c2e" + "0" * 24: "Ba2SrTi3O9", "77b0d4aa" + "0" * 24: "SrTiO3"},
        daemon="host:1:abc",
    )


def test_view_shows_each_job_in_80_columns(tmp_path):
    snap = snapshot(recorded_progress(tmp_path, 300))
    console = Console(record=True, width=80, color_system=None)
    console.print(render(snap))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("perovskite-demo  cycle 2 of 2 · waiting for DFT")
    assert "generated 66 (3 dup) → 55 rejected → 8 pooled" in lines[1]
    assert "DFT 4 of 4: 1 queued, 1 running, 2 done, 0 failed · pool 9" in lines[2]
    (job,) = [line for line in lines if line.startswith("1f3a9c2e")]
    # -16.74044031 Ry, 0.001543 Ry/bohr, 12:34 of the 15:00 wall-time limit
    assert job.split() == "1f3a9c2e Ba2SrTi3O9 ionic 2 · SCF 2 -227.765 0.040 12:34/15:00".split()
    (chgnet,) = [line for line in lines if line.startswith("77b0d4aa")]
    assert chgnet.split() == "77b0d4aa SrTiO3 CHGNet pre-relax 0:31".split()
    (ref,) = [line for line in lines if line.startswith("ref O")]
    assert "ionic 2 · SCF 2 (retry 1)" in ref and ref.split()[2] == "O"
    plain = plain_lines(snap)
    assert plain[0] == (
        "1f3a9c2e Ba2SrTi3O9: ionic 2 · SCF 2, E -227.765 eV, |F| 0.040 eV/Å, 12:34/15:00"
    )
    assert "77b0d4aa SrTiO3: CHGNet pre-relax, 0:31" in plain  # no pw.x yet: its stage
    assert [line for line in plain if line.startswith("ref O")][0].startswith("ref O: ionic 2")


def test_clock():
    assert [clock(s) for s in (0, 59.9, 61, 3600, 7322)] == [
        "0:00",
        "0:59",
        "1:01",
        "1:00:00",
        "2:02:02",
    ]


# ------------------------------------------------------------------------------ end to end
class PtyProcess:
    """A command on a pseudo-terminal (80 columns), its output collected with the time each
    piece arrived."""

    def __init__(self, args: list[str], env: dict[str, str]):
        master, slave = pty.openpty()
        env = dict(env, COLUMNS="80", LINES="40", TERM="xterm-256color")
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.master = master
        self.chunks: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not data:
                    return
                self.chunks.append((time.time(), data.decode("utf-8", "replace")))
            elif self.proc.poll() is not None:
                return

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        os.close(self.master)
        return rc

    def text(self) -> str:
        return ANSI.sub("", "".join(chunk for _, chunk in self.chunks))


@pytest.mark.dft
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed (make qe)")
def test_run_and_watch_show_the_running_pw_x_step_and_energy(
    tmp_path, crystalloop_home, monkeypatch
):
    from dft.pseudos import install
    from dft.settings import DFTSettings

    pseudos = install("pseudodojo-pbe-standard", DFTSettings(pseudo_dir=None))
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(pseudos))
    cells = tmp_path / "cells"
    cells.mkdir()
    # a distorted Si cell: pw.x takes a few ionic steps (about 20 s at these settings)
    Structure(
        Lattice([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]),
        ["Si", "Si"],
        [[0, 0, 0], [0.27, 0.25, 0.23]],
    ).to(filename=str(cells / "si.cif"))
    config = {
        "name": "live-test",
        "generators": [
            {
                "name": "dataset",
                "candidates_per_cycle": 1,
                "options": {"source": str(cells), "cubic": False},
            }
        ],
        "filters": {"charge_balance": False, "stoichiometry": False, "property_window": None},
        "acquisition": {"policy": "greedy", "params": {}, "diversity": False},
        "batch_size": 1,
        "dft": {
            "ecutwfc": 20,
            "kpoint_density": 200,
            "max_concurrent": 1,
            "chgnet_prerelax": False,
            "max_seconds": 300,
            "symprec": None,  # keep the distortion: the view must follow several ionic steps
        },
        "budgets": {"max_dft_calculations": 1},
        "retraining": {"enabled": False},
        "stopping": {"max_cycles": 1},
    }
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(config))
    from agent.store import Store

    env = dict(os.environ)
    run = PtyProcess([sys.executable, "-m", "agent.cli", "run", str(path)], env)
    deadline = time.time() + 200  # the run checks its generator and surrogate first
    while time.time() < deadline and run.proc.poll() is None:
        if (crystalloop_home / "store").exists():
            with Store.connect() as store:
                if store.get_campaign("live-test"):
                    break
        time.sleep(1)
    watch = PtyProcess([sys.executable, "-m", "agent.cli", "status", "live-test", "--watch"], env)
    assert run.wait(timeout=400) == 0, run.text()[-3000:]
    assert watch.wait(timeout=60) == 0, watch.text()[-3000:]

    with Store.connect() as store:
        (doc,) = store.find_candidates("live-test", "completed")
    job_line = re.compile(
        rf"^{doc['_id'][:8]}\s+Si\s+ionic (\d+) · SCF (\d+)\s+(-\d+\.\d{{3}})\s", re.M
    )
    for view in (run, watch):
        text = view.text()
        done_at = text.index("DFT done") if view is run else len(text)
        seen = job_line.findall(text[:done_at])
        assert seen, text[-3000:]  # the job's step and energy, before its result came in
        steps = {int(ionic) for ionic, _, _ in seen}
        energies = [float(e) for _, _, e in seen]
        assert len(steps) >= 2  # redrawn as pw.x moved on
        assert all(-232 < e < -228 for e in energies)  # two Si atoms at 20 Ry: about -230 eV
    assert not re.search(r"\w+\.py:\d+", run.text())  # no source-file tags on log lines
    assert re.search(r"selected Si \(score -?\d+\.\d{3}\)", run.text())  # rounded
    assert "live-test  (cycle 1, completed)" in watch.text()


@pytest.mark.dft
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed (make qe)")
def test_the_demo_campaign_shows_its_running_relaxation(
    tmp_path, crystalloop_home, matminer_dir, monkeypatch
):
    """The main job's own file (examples/perovskite-demo.yaml: its generators, filters, policy
    and seed) on a pseudo-terminal, with only its cost cut to a test's: one relaxation at a low
    cutoff, no retraining. The generated crystal's pw.x step and energy appear while it runs."""
    from dft.pseudos import install
    from dft.settings import DFTSettings

    pseudos = install("pseudodojo-pbe-standard", DFTSettings(pseudo_dir=None))
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(pseudos))
    demo = Path(__file__).resolve().parents[1] / "examples" / "perovskite-demo.yaml"
    config = yaml.safe_load(demo.read_text())
    config["filters"]["known_sources"] = [
        str(matminer_dir / f"{name}.csv.gz")
        for name in ("flla_2015", "elastic_tensor", "dielectric_constant")
    ]
    config["dft"] |= {"ecutwfc": 30, "kpoint_density": 100, "max_seconds": 600}
    config["budgets"] = {"max_dft_calculations": 1}
    config["retraining"] = {"enabled": False}
    config["stopping"] = {"max_cycles": 1}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))

    run = PtyProcess([sys.executable, "-m", "agent.cli", "run", str(path)], dict(os.environ))
    assert run.wait(timeout=900) == 0, run.text()[-3000:]
    text = run.text()
    from agent.store import Store

    with Store.connect() as store:
        (doc,) = store.find_candidates(config["name"], "completed")
    assert doc["provenance"]["generator"] in ("fingerprint", "voxel-vae")
    job_line = re.compile(
        rf"^{doc['_id'][:8]}\s+\S+\s+ionic (\d+) · SCF (\d+)\s+(-\d+\.\d{{3}})\s", re.M
    )
    seen = job_line.findall(text[: text.index("DFT done")])
    assert seen, text[-3000:]  # the relaxation's step and energy before its result came in
    assert all(float(e) < 0 for _, _, e in seen)
