"""The campaign's fingerprint generator fine-tuned on its DFT results, after the surrogate.

Why here: retraining already runs in its own process when enough results have come in; the
generator's turn comes in the same process, on the same results, so both models learn from one
snapshot of the campaign. What is trained and how it is judged is
`generators.fingerprint.finetune`; this module only moves data between the store and it:
the relaxed crystals and their formation energies out, the verdict and (when it passed) the
new checkpoint in, as a model document of kind `generator-fingerprint`. The daemon loads the
deployed version at the next cycle (`Components.refresh_generators`).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from agent.config import CampaignConfig
from agent.store import Store

KIND = "generator-fingerprint"


def load_generator_state(store: Store, campaign: str, checkpoint: str | None) -> tuple[dict, str]:
    """The deployed fine-tuned checkpoint of the campaign, else the configured (or shipped)
    one; and the version it is."""
    import torch

    from generators.fingerprint.sample import default_checkpoint
    from generators.fingerprint.train import load

    doc = store.deployed_model(campaign, KIND)
    if doc and doc.get("weights_id"):
        state = torch.load(
            io.BytesIO(store.get_model_weights(doc["weights_id"])), weights_only=False
        )
        return state, doc["version"]
    state = load(checkpoint or default_checkpoint())
    return state, "configured" if checkpoint else "shipped-default"


def conventional(structure: Any, symprec: float = 0.1) -> Any:
    """The conventional standard cell: a relaxed cubic crystal is often stored as its
    primitive (rhombohedral-looking) cell, which the cubic-only fingerprint would refuse."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(structure, symprec=symprec).get_conventional_standard_structure()
    except Exception:  # noqa: BLE001 - spglib fails on some cells; keep the cell as relaxed
        return structure


def _write_results(folder: Path, structures, energies, ids) -> None:
    with (folder / "properties.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "formation_energy_per_atom"])
        for structure, energy, ident in zip(structures, energies, ids, strict=True):
            name = f"{ident}.cif"
            conventional(structure).to(filename=str(folder / name))
            writer.writerow([name, float(energy)])


def retrain_generator(
    store: Store, campaign: str, version: str, data: Any, config: CampaignConfig
) -> dict[str, Any] | None:
    """Fine-tune the campaign's fingerprint generator on `data` (the surrogate's
    `Labelled` DFT results) and record the verdict; returns what was recorded, or None when
    the campaign has no fingerprint generator (or `retraining.generators` is off)."""
    from generators.fingerprint.finetune import fine_tune

    slots = [g for g in config.generators if g.name == "fingerprint"]
    if not slots or not config.retraining.generators:
        return None
    state, previous = load_generator_state(store, campaign, slots[0].checkpoint)
    energies = data.targets["formation_energy_per_atom"]
    with tempfile.TemporaryDirectory(prefix="crystalloop-results-") as tmp:
        _write_results(Path(tmp), data.structures, energies, data.ids)
        try:
            result = fine_tune(state, tmp, sources=config.retraining.generator_sources)
        except (FileNotFoundError, ValueError) as exc:
            summary = {"deployed": False, "reason": f"cannot fine-tune: {exc}"[:300], "used": 0}
        else:
            summary = result.summary()
    weights_id = None
    if summary["deployed"]:
        import torch

        buffer = io.BytesIO()
        torch.save(result.state, buffer)
        weights_id = store.put_model_weights(buffer.getvalue(), filename=f"{KIND}-{version}.pt")
    fields = {
        "state": "deployed" if summary["deployed"] else "rejected",
        "previous": previous,
        "reason": summary["reason"],
        "used": int(summary.get("used", 0)),
        "skipped": summary.get("skipped", {}),
        "model_version": summary.get("model_version"),
    }
    metrics = summary.get("metrics", {})
    store.register_model(
        campaign,
        version,
        kind=KIND,
        training_size=fields["used"],
        holdout_metrics=metrics,
        weights_id=weights_id,
        deployed=summary["deployed"],
        **fields,
    )
    return fields | {
        "version": version,
        "deployed": summary["deployed"],
        "holdout_metrics": metrics,
    }


def describe_generator(doc: dict) -> list[str]:
    """Lines for the daemon, the run summary and `crystalloop retrain`."""
    verdict = "deployed" if doc.get("state") == "deployed" else "refused"
    lines = [
        f"generator fingerprint {doc['version']}: {verdict} ({doc.get('reason', '')}); "
        f"fine-tuned on {doc.get('used', 0)} DFT crystal(s)"
    ]
    skipped = {k: v for k, v in (doc.get("skipped") or {}).items() if v}
    if skipped:
        lines[0] += ", skipped " + ", ".join(
            f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()
        )
    metrics = doc.get("holdout_metrics") or {}
    if "held_out_before" in metrics and "held_out_after" in metrics:
        b, a = metrics["held_out_before"], metrics["held_out_after"]
        lines.append(
            f"  held-out fingerprint MSE {b['mse']:.4f} -> {a['mse']:.4f}, exact composition "
            f"{b['composition_exact']:.3f} -> {a['composition_exact']:.3f}"
        )
    if "new_before" in metrics and "new_after" in metrics:
        b, a = metrics["new_before"], metrics["new_after"]
        lines.append(
            f"  its DFT crystals: MSE {b['mse']:.4f} -> {a['mse']:.4f}, exact composition "
            f"{b['composition_exact']:.3f} -> {a['composition_exact']:.3f}"
        )
    return lines
