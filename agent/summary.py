"""What a campaign has found, read back from the store: the run's closing summary.

One reading for the CLI's summary table and `crystalloop run`'s return value, so that the
best results, the generator behind each, its novelty against the known crystals and what
every retraining did are reported the same way wherever they are shown.
"""

from __future__ import annotations

from typing import Any

from pymatgen.core import Structure

from agent.components import Components
from agent.retrain import describe
from agent.store import Store


def campaign_summary(store: Store, name: str, components: Components) -> dict[str, Any]:
    doc = store.get_campaign(name) or {}
    return {
        "campaign": name,
        "state": doc.get("state"),
        "cycle": doc.get("cycle"),
        "counts": store.count_by_status(name),
        "best": [
            {
                "formula": b.get("formula"),
                "formation_energy_per_atom": b.get("formation_energy_per_atom"),
                "e_above_hull": b.get("e_above_hull"),
                "predicted": (b.get("predicted_formation_energy") or b.get("predicted") or {}).get(
                    "mean"
                ),
                "generator": _generator_of(store, b.get("candidate_id")),
                "novelty": _novelty_of(components, b),
                "discovery": bool(b.get("discovery")),
            }
            for b in store.best_materials(name, limit=10)
        ],
        "model": (store.deployed_model(name) or {}).get("version"),
        "retraining": [
            {
                "version": m.get("version"),
                "state": m.get("state"),
                "heads": m.get("holdout_metrics") or {},
                "lines": describe(m),
            }
            for m in store.list_models(name, "surrogate")
        ],
    }


def known_match(components: Components, structure: Any) -> str | None:
    """The id of the known crystal `structure` matches, or None (also when the campaign
    names no known sources)."""
    if components.known is None:
        return None
    if isinstance(structure, dict):
        structure = Structure.from_dict(structure)
    return components.known.find(structure)


def _novelty_of(components: Components, material: dict) -> str | None:
    """'new' / 'known <match>' for the DFT-relaxed crystal (stored when it completed), or
    None when the campaign names no known sources."""
    if components.known is None:
        return None
    if "known_match" not in material and material.get("structure"):
        material["known_match"] = known_match(components, material["structure"])
    match = material.get("known_match")
    return "new" if match is None else f"known {match}"


def _generator_of(store: Store, candidate_id: str | None) -> str | None:
    doc = store.get_candidate(candidate_id) if candidate_id else None
    return ((doc or {}).get("provenance") or {}).get("generator")
