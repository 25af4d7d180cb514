"""The campaign's generators fine-tuned on its DFT results, after the surrogate.

Why here: retraining already runs in its own process when enough results have come in; the
generators' turn comes in the same process, on the same results, so every model learns from
one snapshot of the campaign. What is trained and how it is judged is
`generators.fingerprint.finetune` and `generators.voxel.finetune`; this module only moves
data between the store and them: the relaxed crystals and their formation energies out, the
verdict and (when it passed) the new checkpoint in, as a model document of kind
`generator-<name>`. The daemon loads deployed versions at the next cycle
(`Components.refresh_generators`).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from agent.config import CampaignConfig
from agent.store import Store

KINDS = {"fingerprint": "generator-fingerprint", "voxel-vae": "generator-voxel-vae"}
KIND = KINDS["fingerprint"]
# the scale a campaign's formation energies are on: pw.x PBE against elemental references
# computed at the same settings, which the fingerprint generator's Materials Project source
# approximates (both PBE vs elements) and perov_5's heat_ref (GPAW RPBE) does not
RESULTS_SCALE = "Materials Project"


def _configured_state(name: str, checkpoint: str | None) -> dict:
    if name == "fingerprint":
        from generators.fingerprint.sample import default_checkpoint
        from generators.fingerprint.train import load

        return load(checkpoint or default_checkpoint())
    from generators.voxel.checkpoints import load_checkpoint
    from generators.voxel.sample import checkpoint_paths

    return load_checkpoint(checkpoint_paths(checkpoint)[0], "vae")


def load_generator_state(
    store: Store, campaign: str, checkpoint: str | None, name: str = "fingerprint"
) -> tuple[dict, str]:
    """The campaign's deployed fine-tuned checkpoint of generator `name` (the VAE's, for the
    voxel generator: its UNet is not fine-tuned), else the configured (or shipped) one; and
    the version it is."""
    import torch

    doc = store.deployed_model(campaign, KINDS[name])
    if doc and doc.get("weights_id"):
        state = torch.load(
            io.BytesIO(store.get_model_weights(doc["weights_id"])), weights_only=False
        )
        return state, doc["version"]
    return _configured_state(name, checkpoint), "configured" if checkpoint else "shipped-default"


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


def _fingerprint(state: dict, data: Any, config: CampaignConfig) -> tuple[dict, Any]:
    from generators.fingerprint.finetune import fine_tune

    energies = data.targets["formation_energy_per_atom"]
    with tempfile.TemporaryDirectory(prefix="crystalloop-results-") as tmp:
        _write_results(Path(tmp), data.structures, energies, data.ids)
        try:
            result = fine_tune(
                state,
                tmp,
                sources=(config.retraining.generator_sources or {}).get("fingerprint"),
                scale=RESULTS_SCALE,
            )
        except (FileNotFoundError, ValueError) as exc:
            return {"deployed": False, "reason": f"cannot fine-tune: {exc}"[:300], "used": 0}, None
    return result.summary(), result.state


def _voxel(
    state: dict, data: Any, checkpoint: str | None, config: CampaignConfig
) -> tuple[dict, Any]:
    from generators.voxel.checkpoints import load_checkpoint
    from generators.voxel.finetune import fine_tune
    from generators.voxel.sample import checkpoint_paths

    try:
        unet = load_checkpoint(checkpoint_paths(checkpoint)[1], "unet")
        result = fine_tune(
            state,
            unet,
            [conventional(s) for s in data.structures],
            energies=list(data.targets["formation_energy_per_atom"]),
            scale=RESULTS_SCALE,
            sources=(config.retraining.generator_sources or {}).get("voxel-vae"),
        )
    except (FileNotFoundError, ValueError) as exc:
        return {"deployed": False, "reason": f"cannot fine-tune: {exc}"[:300], "used": 0}, None
    return result.summary(), result.state


def retrain_generators(
    store: Store, campaign: str, version: str, data: Any, config: CampaignConfig
) -> list[dict[str, Any]]:
    """Fine-tune each of the campaign's learning generators (fingerprint, voxel-vae) on `data`
    (the surrogate's `Labelled` DFT results) and record each verdict; returns what was
    recorded, one entry per generator (none when `retraining.generators` is off)."""
    if not config.retraining.generators:
        return []
    out = []
    for name in KINDS:
        slots = [g for g in config.generators if g.name == name]
        if not slots:
            continue
        checkpoint = slots[0].checkpoint
        state, previous = load_generator_state(store, campaign, checkpoint, name)
        if name == "fingerprint":
            summary, new_state = _fingerprint(state, data, config)
        else:
            summary, new_state = _voxel(state, data, checkpoint, config)
        out.append(_record(store, campaign, version, name, previous, summary, new_state))
    return out


def _record(
    store: Store, campaign: str, version: str, name: str, previous: str, summary: dict, state: Any
) -> dict[str, Any]:
    weights_id = None
    if summary["deployed"]:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        weights_id = store.put_model_weights(
            buffer.getvalue(), filename=f"{KINDS[name]}-{version}.pt"
        )
    fields = {
        "generator": name,
        "state": "deployed" if summary["deployed"] else "rejected",
        "previous": previous,
        "reason": summary["reason"],
        "used": int(summary.get("used", 0)),
        "skipped": summary.get("skipped", {}),
        "model_version": summary.get("model_version"),
        "condition": summary.get("condition", ""),
    }
    metrics = summary.get("metrics", {})
    store.register_model(
        campaign,
        version,
        kind=KINDS[name],
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
    name = doc.get("generator", "fingerprint")
    lines = [
        f"generator {name} {doc['version']}: {verdict} ({doc.get('reason', '')}); "
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
    if "before" in metrics and "after" in metrics:  # the voxel VAE's gate
        b, a = metrics["before"], metrics["after"]
        line = (
            f"  held-out reconstruction MSE {b['held_out_mse']:.2f} -> {a['held_out_mse']:.2f}"
            f", its DFT crystals {b['new_mse']:.2f} -> {a['new_mse']:.2f}"
        )
        if "sample_validity" in b and "sample_validity" in a:
            line += f", sample validity {b['sample_validity']:.3f} -> {a['sample_validity']:.3f}"
        lines.append(line)
    return lines
