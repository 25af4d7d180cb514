"""`crystalloop init | status | candidates` against an embedded store filled with real
perovskites moved through the lifecycle."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from pymatgen.core import Structure
from typer.testing import CliRunner

from agent import store_cli
from agent.config import CampaignConfig
from agent.store import Store
from generators.candidate import Candidate, Provenance

runner = CliRunner()


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    store_cli.register(app)
    return app


@pytest.fixture()
def filled(crystalloop_home: Path, perov_csv: Path) -> dict:
    """A campaign with 12 real perovskites: 2 rejected, 5 pooled, 1 running, 3 completed with
    a 'DFT' value taken from the data set's heat of formation, 1 failed; a deployed model."""
    df = pd.read_csv(perov_csv, comment="#").drop_duplicates("formula").head(12)
    cands = [
        Candidate(
            structure=Structure.from_str(row.cif, fmt="cif"),
            provenance=Provenance(generator="voxel-vae", seed=i),
        )
        for i, row in enumerate(df.itertuples())
    ]
    heat = dict(zip([c.id for c in cands], df["heat_ref"], strict=True))
    ids = [c.id for c in cands]
    config = CampaignConfig.from_dict({"name": "demo", "budgets": {"max_dft_calculations": 10}})
    with Store.connect() as store:
        store.ensure_campaign("demo", config.to_document())
        store.insert_candidates("demo", 1, cands)
        store.advance_cycle("demo")
        preds = {
            cid: {
                "predictions": {"formation_energy_per_atom": {"mean": heat[cid] + 0.1, "std": 0.1}}
            }
            for cid in ids
        }
        store.transition_many(ids[:2], "generated", "rejected", fields={"filters": {"x": "no"}})
        store.transition_many(ids[2:], "generated", "pooled", per_candidate=preds)
        # generated in cycle 1, selected in cycle 2 (what `candidates` must tell apart)
        store.transition_many(
            ids[7:], "pooled", "selected", per_candidate={c: {"selected_cycle": 2} for c in ids[7:]}
        )
        store.transition_many(ids[7:], "selected", "submitted")
        store.transition(ids[7], "submitted", "running")
        for cid in ids[8:11]:
            store.save_calculation(
                cid,
                "demo",
                state="completed",
                formation_energy_per_atom=float(heat[cid]),
                e_above_hull=0.05,
            )
            store.transition(cid, "submitted", "completed")
        store.transition(ids[11], "submitted", "failed")
        store.register_model(
            "demo", "ft-001", training_size=3003, holdout_metrics={"mae": 0.1}, deployed=True
        )
    completed = sorted(ids[8:11], key=lambda c: heat[c])
    return {"ids": ids, "cands": cands, "best": completed[0], "heat": heat}


def test_init_writes_a_valid_commented_file_and_refuses_to_overwrite(app, tmp_path):
    path = tmp_path / "c.yaml"
    result = runner.invoke(app, ["init", str(path), "--name", "perovskites-1"])
    assert result.exit_code == 0, result.output
    assert "# " in path.read_text()  # commented
    assert CampaignConfig.from_yaml(path).name == "perovskites-1"
    again = runner.invoke(app, ["init", str(path)])
    assert again.exit_code == 1 and "--force" in again.output
    forced = runner.invoke(app, ["init", str(path), "--force"])
    assert forced.exit_code == 0 and CampaignConfig.from_yaml(path).name == "my-campaign"
    bad = runner.invoke(app, ["init", str(tmp_path / "d.yaml"), "--name", "no spaces"])
    assert bad.exit_code == 1 and "name" in bad.output


def test_status_without_a_store_creates_nothing(app, crystalloop_home):
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0 and "no store yet" in result.output
    assert list(crystalloop_home.iterdir()) == []


def test_status_reports_counts_dft_best_and_model(app, filled):
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.output)
    assert summary["cycle"] == 1
    assert summary["counts"] == {
        "generated": 0,
        "rejected": 2,
        "pooled": 5,
        "selected": 0,
        "submitted": 0,
        "running": 1,
        "completed": 3,
        "failed": 1,
    }
    assert summary["dft"] == {"queued": 0, "running": 1, "completed": 3, "failed": 1, "budget": 10}
    assert summary["model"] == "ft-001"
    best = summary["best"][0]
    assert best["candidate_id"] == filled["best"]
    assert best["formation_energy_per_atom"] == pytest.approx(filled["heat"][filled["best"]])
    assert best["predicted"] == pytest.approx(filled["heat"][filled["best"]] + 0.1)
    table = runner.invoke(app, ["status", "demo"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "ft-001" in table.output and best["formula"] in table.output
    assert "1 running, 3 completed of 10" in table.output
    missing = runner.invoke(app, ["status", "nope"])
    assert missing.exit_code == 1 and "known: demo" in missing.output


def test_candidates_filter_and_export(app, filled, tmp_path):
    result = runner.invoke(
        app,
        ["candidates", "demo", "--status", "completed", "--status", "failed"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "4 candidate(s)" in result.output
    csv = tmp_path / "out" / "c.csv"
    cifs = tmp_path / "cifs"
    result = runner.invoke(
        app,
        [
            "candidates",
            "demo",
            "--limit",
            "0",
            "--sort",
            "cycle",
            "--export-csv",
            str(csv),
            "--export-cif",
            str(cifs),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(csv)
    assert len(table) == 12
    assert table["status"].value_counts().to_dict() == {
        "pooled": 5,
        "completed": 3,
        "rejected": 2,
        "running": 1,
        "failed": 1,
    }
    row = table.set_index("id").loc[filled["best"]]
    assert row["dft_formation_energy_per_atom"] == pytest.approx(filled["heat"][filled["best"]])
    files = sorted(cifs.glob("*.cif"))
    assert len(files) == 12
    cand = filled["cands"][0]
    (written,) = [f for f in files if cand.id[:12] in f.name]
    back = Structure.from_file(written)
    assert back.composition.reduced_formula == cand.structure.composition.reduced_formula
    assert back.lattice.a == pytest.approx(cand.structure.lattice.a, abs=1e-4)
    bad = runner.invoke(app, ["candidates", "demo", "--status", "done"])
    assert bad.exit_code != 0 and "unknown status" in bad.output
    none = runner.invoke(app, ["candidates", "nope"])
    assert none.exit_code == 1


def test_tables_fit_80_columns_with_generator_and_selection_cycle(app, filled):
    status = runner.invoke(app, ["status", "demo"], env={"COLUMNS": "80"})
    listing = runner.invoke(app, ["candidates", "demo", "--limit", "0"], env={"COLUMNS": "80"})
    for result in (status, listing):
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80
        assert "…" not in result.output and "..." not in result.output
    lines = status.output.splitlines()
    header = next(line for line in lines if "queued" in line and "gen" in line)
    assert header.split() == ["gen", "rej", "pool", "sel", "queued", "run", "done", "fail"]
    assert lines[lines.index(header) + 2].split() == ["0", "2", "5", "0", "0", "1", "3", "1"]
    legend = " ".join(status.output.split())
    assert "gen = generated" in legend and "queued = submitted" in legend
    rows = {line.split()[0]: line.split() for line in listing.output.splitlines() if line.strip()}
    head = next(r for r in rows.values() if r[0] == "id")
    assert head == ["id", "gen", "cyc", "sel", "status", "formula", "score", "pred", "DFT"]
    best = rows[filled["best"][:8]]
    assert best[1:5] == ["vae", "1", "2", "completed"]
    assert rows[filled["ids"][0][:8]][1:5] == ["vae", "1", "-", "rejected"]
    assert "vae = voxel-vae" in " ".join(listing.output.split())
