"""Fine-tuning the surrogate on a campaign's DFT results, behind a validation gate.

Retraining runs in its own process (`python -m agent.retrain`) so that the daemon keeps
harvesting finished calculations meanwhile, and so that a daemon killed mid-training leaves a
model document in state 'training' with a pid: on restart a dead trainer is started again
under the same version, a live one is waited for. A new version is deployed only if its
hold-out error is not worse than the deployed model's on the same hold-out.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.config import CampaignConfig
from agent.store import Store, crystalloop_home
from agent.store.lock import pid_alive

KIND = "surrogate"


def gate(old_mae: float | None, new_mae: float, min_improvement: float = 0.0) -> bool:
    """Deploy the new model only if it is not worse (by `min_improvement` eV/atom) than the old
    on the same hold-out. No old figure (first version): deploy when the new one is finite."""
    if not np.isfinite(new_mae):
        return False
    if old_mae is None or not np.isfinite(old_mae):
        return True
    return new_mae <= old_mae - min_improvement


class RetrainManager:
    """The daemon's side: decide when to retrain, start the trainer, notice it finishing."""

    def __init__(self, config: CampaignConfig, store: Store, report: Callable[[str], None] = print):
        self.config = config
        self.store = store
        self.name = config.name
        self.report = report
        self._process: subprocess.Popen | None = None
        self._version: str | None = None

    def _training_docs(self) -> list[dict]:
        return [d for d in self.store.list_models(self.name, KIND) if d.get("state") == "training"]

    def busy(self) -> bool:
        return any(pid_alive(int(d.get("pid") or 0)) for d in self._training_docs())

    def results_count(self) -> int:
        return self.store.count_calculations(self.name, "completed")

    def maybe_start(self) -> str | None:
        cfg = self.config.retraining
        if not cfg.enabled or self.busy():
            return None
        n = self.results_count()
        last = int((self.store.get_campaign(self.name) or {}).get("retrained_at_results", 0))
        if n - last < cfg.every_n_results:
            return None
        return self.start(f"ft-{n:05d}", n)

    def start(self, version: str, n_results: int) -> str:
        self.store.register_model(
            self.name,
            version,
            kind=KIND,
            training_size=n_results,
            holdout_metrics={},
            state="training",
        )
        cmd = [sys.executable, "-m", "agent.retrain", self.name, version]
        if self.store.backend == "mongodb" and self.config.store.uri:
            cmd += ["--uri", self.config.store.uri]
        cmd += ["--database", self.store.database]
        log = crystalloop_home() / "logs" / f"{self.name}-retrain.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self._process = subprocess.Popen(
                cmd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
            )
        self._version = version
        self.report(
            f"retraining the surrogate on {n_results} DFT results as {version} (log: {log})"
        )
        self.store.update_model(f"{self.name}:{KIND}:{version}", pid=self._process.pid)
        self.store.update_campaign(self.name, retrained_at_results=n_results)
        self.store.log_event(self.name, "retrain_started", version=version, n_results=n_results)
        from agent.faults import checkpoint

        checkpoint("retrain_started")
        return version

    def poll(self) -> None:
        if self._process is None or self._process.poll() is None:
            return
        self._process = None
        doc = self.store.get_model(f"{self.name}:{KIND}:{self._version}") or {}
        m = doc.get("holdout_metrics") or {}
        verdict = {"deployed": "deployed", "rejected": "refused by the validation gate"}
        self.report(
            f"retrained {self._version}: {verdict.get(doc.get('state'), doc.get('state'))} "
            f"(hold-out MAE {m.get('old_mae', float('nan')):.3f} -> "
            f"{m.get('new_mae', float('nan')):.3f} eV/atom)"
        )

    def recover(self) -> None:
        """Restart trainers that died with a previous daemon (same version, from scratch)."""
        for doc in self._training_docs():
            if not pid_alive(int(doc.get("pid") or 0)):
                self.store.log_event(self.name, "retrain_restarted", version=doc["version"])
                self.start(doc["version"], int(doc.get("training_size", 0)))


def holdout_split(n: int, fraction: float, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(hold-out, train) indices; reproducible from `key` so a restarted trainer agrees."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    n_hold = min(n - 1, max(1, round(fraction * n))) if n > 1 else 0
    order = rng.permutation(n)
    return order[:n_hold], order[n_hold:]


def dft_training_set(store: Store, campaign: str) -> tuple[list, dict[str, np.ndarray], list[str]]:
    """The campaign's relaxed crystals with the one target DFT measures on the surrogate's own
    scale: the formation energy (MP2020-corrected PBE, like the Materials Project data the
    head learnt). pw.x total energies per atom are not trained: they depend on the
    pseudopotentials and sit hundreds of eV/atom from the energy head's Materials Project
    scale, so fitting them would break that head while the gate looks elsewhere."""
    calcs = store.find_calculations(campaign, "completed", sort=[("_id", 1)])
    from pymatgen.core import Structure

    structures = [Structure.from_dict(c["structure"]) for c in calcs]
    targets = {
        "formation_energy_per_atom": np.array([c["formation_energy_per_atom"] for c in calcs]),
    }
    return structures, targets, [c["_id"] for c in calcs]


def load_deployed(store: Store, campaign: str) -> tuple[Any, dict | None]:
    """The campaign's deployed surrogate, or the shipped default before the first deployment."""
    import torch

    from policies.surrogate import Surrogate, load_default

    doc = store.deployed_model(campaign, KIND)
    if doc and doc.get("weights_id"):
        state = torch.load(
            io.BytesIO(store.get_model_weights(doc["weights_id"])), weights_only=True
        )
        return Surrogate.from_state(state), doc
    return load_default(), None


def retrain(store: Store, campaign: str, version: str) -> dict[str, Any]:
    """Fine-tune on all DFT results but a hold-out, gate against the deployed model, record."""
    import torch

    doc = store.get_campaign(campaign)
    if doc is None:
        raise KeyError(f"no campaign {campaign!r}")
    config = CampaignConfig.model_validate(doc["config"])
    cfg = config.retraining
    structures, targets, ids = dft_training_set(store, campaign)
    n = len(structures)
    hold, train = holdout_split(n, cfg.holdout_fraction, f"{campaign}:{version}")
    n_hold = len(hold)
    key = "formation_energy_per_atom"

    old, old_doc = load_deployed(store, campaign)
    new = old.copy()
    if len(train) >= 2:
        new.fine_tune([structures[i] for i in train], {k: v[train] for k, v in targets.items()})
    hold_structures = [structures[i] for i in hold]
    hold_targets = {key: targets[key][hold]}
    old_metrics = old.evaluate(hold_structures, hold_targets)[key] if n_hold else {}
    new_metrics = new.evaluate(hold_structures, hold_targets)[key] if n_hold else {}
    deploy = gate(old_metrics.get("mae"), new_metrics.get("mae", float("nan")), cfg.min_improvement)

    buffer = io.BytesIO()
    torch.save(new.state(), buffer)
    weights_id = store.put_model_weights(buffer.getvalue(), filename=f"{version}.pt")
    store.register_model(
        campaign,
        version,
        kind=KIND,
        training_size=len(train),
        holdout_metrics={f"new_{k}": v for k, v in new_metrics.items()}
        | {f"old_{k}": v for k, v in old_metrics.items()},
        weights_id=weights_id,
        deployed=deploy,
        state="deployed" if deploy else "rejected",
        previous=(old_doc or {}).get("version", "shipped-default"),
        holdout_ids=[ids[i] for i in hold],
    )
    store.log_event(
        campaign,
        "retrain_finished",
        version=version,
        deployed=deploy,
        old_mae=old_metrics.get("mae"),
        new_mae=new_metrics.get("mae"),
    )
    return {"version": version, "deployed": deploy, "old": old_metrics, "new": new_metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Fine-tune a campaign's surrogate (run by the daemon)."
    )
    parser.add_argument("campaign")
    parser.add_argument("version")
    parser.add_argument("--uri", default=None)
    parser.add_argument("--database", default="crystalloop")
    args = parser.parse_args(argv)
    from agent.faults import checkpoint

    checkpoint("retrain_start")
    with Store.connect(args.uri, database=args.database) as store:
        try:
            result = retrain(store, args.campaign, args.version)
        except Exception as exc:
            store.update_model(
                f"{args.campaign}:{KIND}:{args.version}",
                state="failed",
                error=f"{type(exc).__name__}: {exc}",
            )
            store.log_event(args.campaign, "retrain_failed", version=args.version, error=str(exc))
            raise
    print(result)


if __name__ == "__main__":
    main()
