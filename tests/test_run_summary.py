"""What `crystalloop run` prints when a campaign ends."""

from __future__ import annotations

from rich.console import Console

from agent import daemon_cli


def summary(e_above_hull: list[float | None]) -> dict:
    formulas = ["BaTiO3", "SrTiO3", "TiO2"]
    return {
        "campaign": "demo",
        "state": "completed",
        "cycle": 2,
        "counts": {"completed": 3},
        "model": None,
        "best": [
            {"formula": f, "formation_energy_per_atom": -3.0 + i, "predicted": -2.9 + i,
             "e_above_hull": e}
            for i, (f, e) in enumerate(zip(formulas, e_above_hull, strict=False))
        ],
    }  # fmt: skip


def printed(monkeypatch, data: dict) -> str:
    console = Console(record=True, width=80, color_system=None)
    monkeypatch.setattr(daemon_cli, "console", console)
    daemon_cli._print_summary(data)
    return console.export_text()


def test_results_exactly_on_the_hull_are_named(monkeypatch):
    text = printed(monkeypatch, summary([0.0, 0.0002, 0.031]))
    assert "on the convex hull of this campaign: BaTiO3, SrTiO3" in text


def test_no_result_on_the_hull_is_said_so(monkeypatch):
    text = printed(monkeypatch, summary([0.012, None]))
    assert "none of these lies on the campaign's convex hull" in text
    assert "on the convex hull of this campaign" not in text


def test_summary_names_generator_novelty_and_retraining_in_80_columns(monkeypatch):
    data = summary([0.0, 0.0002, 0.031])
    for b, generator, novelty in zip(
        data["best"],
        ["fingerprint", "fingerprint", "dataset"],
        ["new", "known matminer:flla_2015:mp-5777", "known matminer:flla_2015:mp-2657"],
        strict=True,
    ):
        b.update(generator=generator, novelty=novelty)
    from agent.retrain import describe

    doc = {  # a model document as agent.retrain stores it
        "version": "v1", "state": "rejected", "campaign_results": 3, "folds": 3,
        "replay": {"source": "matminer:flla_2015", "n": 200},
        "holdout_metrics": {"formation_energy_per_atom": {
            "campaign_old": {"n": 3, "mae": 0.412}, "campaign_new": {"n": 3, "mae": 0.538},
            "anchor_old": {"n": 200, "mae": 0.074}, "anchor_new": {"n": 200, "mae": 0.075},
            "passed": False, "reason": "campaign CV worse",
        }},
    }  # fmt: skip
    data["retraining"] = [{"version": "v1", "state": "rejected", "lines": describe(doc)}]
    text = printed(monkeypatch, data)
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│ ")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["BaTiO3", "fingerprint", "-3.000", "-2.900", "0.000", "new"],
        ["SrTiO3", "fingerprint", "-2.000", "-1.900", "0.000", "known mp-5777"],
        ["TiO2", "dataset", "-1.000", "-0.900", "0.031", "known mp-2657"],
    ]
    flat = " ".join(text.split())
    assert (
        "retrained v1: refused by the gate (fine-tuned on 3 DFT result(s) + 200 replayed; "
        "3-fold CV)"
    ) in flat
    assert (
        "formation_energy_per_atom MAE, deployed -> new: campaign CV 0.412 -> 0.538, "
        "anchor (200) 0.074 -> 0.075 eV/atom: campaign CV worse"
    ) in flat


def test_summary_without_known_sources_has_no_novelty_column(monkeypatch):
    text = printed(monkeypatch, summary([0.0]))
    assert "relaxed crystal" not in text
    assert "retraining: none ran" in text
