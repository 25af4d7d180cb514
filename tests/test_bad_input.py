"""Bad input is one clear error: a non-zero exit, one message naming the problem, and nothing
left behind (no campaign stored for a campaign that cannot run, none left "running" after a
cycle fails, no empty dataset file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from agent.cli import app

runner = CliRunner()


def words(text: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(text.split())


def one_error(result) -> str:
    out = words(result.output)
    assert result.exit_code != 0, out
    assert out.count("error:") == 1 and "Traceback" not in out, out
    return out


def campaign_file(tmp_path: Path, cells: dict[str, Structure], **generator_options) -> Path:
    folder = tmp_path / "cells"
    folder.mkdir()
    for name, structure in cells.items():
        structure.to(filename=str(folder / f"{name}.cif"))
    config = {
        "name": "bad-input",
        "generators": [
            {
                "name": "dataset",
                "candidates_per_cycle": 2,
                "options": {"source": str(folder), "cubic": False, **generator_options},
            }
        ],
        "filters": {"charge_balance": False, "stoichiometry": False, "property_window": None},
        "acquisition": {"policy": "greedy", "params": {}, "diversity": False},
        "batch_size": 1,
        "dft": {"ecutwfc": 20, "kpoint_density": 60, "chgnet_prerelax": False},
        "budgets": {"max_dft_calculations": 1},
        "retraining": {"enabled": False},
        "stopping": {"max_cycles": 1},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def al_fcc() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]]
    ).get_primitive_structure()


def test_a_generator_that_can_produce_nothing_stops_the_run_before_the_store(
    tmp_path, crystalloop_home
):
    path = campaign_file(tmp_path, {"al": al_fcc()}, elements=["Ba", "O"])
    out = one_error(runner.invoke(app, ["run", str(path)]))
    assert "generator 'dataset'" in out and "match" in out
    assert list(crystalloop_home.iterdir()) == []  # no store, no lock, no log


def test_a_failure_inside_a_cycle_marks_the_campaign_failed(
    tmp_path, crystalloop_home, monkeypatch
):
    """A pseudopotential directory without Al: nothing before the run can know which
    elements the generator will propose, so submitting the Al candidate fails in cycle 1."""
    from agent.store import Store
    from dft.pseudos import install
    from dft.settings import DFTSettings

    installed = install("pseudodojo-pbe-standard", DFTSettings(pseudo_dir=None))
    only_si = tmp_path / "pseudos"
    only_si.mkdir()
    shutil.copy(installed / "Si.upf", only_si / "Si.upf")
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(only_si))
    path = campaign_file(tmp_path, {"al": al_fcc()})
    result = runner.invoke(app, ["run", str(path)])
    out = one_error(result)
    assert result.exit_code == 5
    assert "failed in cycle 1 (submit)" in out and "Al" in out
    with Store.connect() as store:
        doc = store.get_campaign("bad-input")
        assert doc["state"] == "failed" and "Al" in doc["error"]
        (event,) = store.events("bad-input", kind="failed")
        assert event["cycle"] == 1 and event["phase"] == "submit" and "Al" in event["reason"]
    status = runner.invoke(app, ["status", "--json"])
    (summary,) = json.loads(status.output)
    assert summary["state"] == "failed" and "Al" in summary["error"]


def test_data_summary_reads_a_single_cif(tmp_path):
    cif = tmp_path / "al.cif"
    al_fcc().to(filename=str(cif))
    result = runner.invoke(app, ["data", "summary", str(cif)])
    assert result.exit_code == 0, result.output
    out = words(result.output)
    assert "1 structures" in out and "crystal system: cubic │ 1" in out and "Al(1)" in out


def test_data_summary_says_what_it_accepts(tmp_path):
    ragged = tmp_path / "notes.txt"
    ragged.write_text("a,b\n1,2\n1,2,3,4\n")
    out = one_error(runner.invoke(app, ["data", "summary", str(ragged)]))
    assert "not a readable CSV table" in out and "a .cif file" in out
    no_cif = tmp_path / "table.csv"
    no_cif.write_text("a,b\n1,2\n")
    out = one_error(runner.invoke(app, ["data", "summary", str(no_cif)]))
    assert "no 'cif' column" in out and "a .cif file" in out


def test_a_folder_of_broken_cifs_is_an_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.cif").write_text("not a cif")
    (folder / "b.cif").write_text("data_x\n_cell_length_a 3\n")
    out = one_error(runner.invoke(app, ["data", "summary", str(folder)]))
    assert "none of the 2 structure(s) could be read" in out
    h5 = tmp_path / "broken.h5"
    out = one_error(runner.invoke(app, ["voxel", "build", str(folder), "-o", str(h5)]))
    assert "none of the 2 structure(s) could be read" in out
    assert not h5.exists()


@pytest.fixture()
def tetragonal(tmp_path) -> Path:
    cif = tmp_path / "tet.cif"
    Structure(Lattice.tetragonal(4.0, 5.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]).to(
        filename=str(cif)
    )
    return cif


def test_roundtrip_as_given_with_nothing_encodable_is_an_error(tetragonal):
    out = one_error(runner.invoke(app, ["voxel", "roundtrip", str(tetragonal), "--as-given"]))
    assert "the encoder rejected all 1 structure(s)" in out and "not cubic" in out
    assert "nan" not in out and "JSON" not in out


def test_build_as_given_with_nothing_encodable_writes_no_file(tetragonal, tmp_path):
    h5 = tmp_path / "out" / "tet.h5"
    args = ["voxel", "build", str(tetragonal), "--as-given", "-o", str(h5)]
    out = one_error(runner.invoke(app, args))
    assert "none of the 1 structure(s) could be encoded" in out and "not cubic" in out
    assert not h5.exists() and not list(h5.parent.glob("*.partial"))
    out = one_error(runner.invoke(app, ["voxel", "build", str(tetragonal), "-o", str(h5)]))
    assert "none of the 1 structure(s) is cubic" in out and not h5.exists()


def test_a_spent_wall_time_budget_stops_new_cycles_and_says_so(tmp_path, crystalloop_home):
    from agent.store import Store

    path = campaign_file(tmp_path, {"al": al_fcc()})
    config = yaml.safe_load(path.read_text())
    config["budgets"]["max_wall_time"] = 0.001  # spent before the first cycle can start
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["run", str(path)])
    out = words(result.output)
    assert result.exit_code == 0, out
    assert "wall-time budget of 0 s reached: no new cycles" in out
    with Store.connect() as store:
        assert store.get_campaign("bad-input")["state"] == "completed"
        assert store.find_candidates("bad-input") == []  # nothing generated, nothing submitted
