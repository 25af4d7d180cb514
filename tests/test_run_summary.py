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
