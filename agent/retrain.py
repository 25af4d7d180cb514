"""Fine-tuning the surrogate (and then the generators, `agent.generator_retrain`) on a
campaign's DFT results, behind validation gates.

Retraining runs in its own process (`python -m agent.retrain`) so that the daemon keeps
harvesting finished calculations meanwhile, and so that a daemon killed mid-training leaves a
model document in state 'training' with a pid: on restart a dead trainer is started again
under the same version, a live one is waited for. What is trained and how it is judged is
`policies.finetune`: replay of the original data, k-fold CV on the campaign's results and a
fixed anchor slice, a verdict per head; a version is deployed only when every head passed.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.config import CampaignConfig
from agent.generator_retrain import describe_generator, retrain_generators
from agent.store import Store, crystalloop_home
from agent.store.lock import pid_alive
from policies.finetune import Labelled

KIND = "surrogate"


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
        for line in describe(doc):
            self.report(line)

    def recover(self) -> None:
        """Restart trainers that died with a previous daemon (same version, from scratch)."""
        for doc in self._training_docs():
            if not pid_alive(int(doc.get("pid") or 0)):
                self.store.log_event(self.name, "retrain_restarted", version=doc["version"])
                self.start(doc["version"], int(doc.get("training_size", 0)))


def dft_training_set(store: Store, campaign: str) -> Labelled:
    """The campaign's relaxed crystals with the one target DFT measures on the surrogate's own
    scale: the formation energy (MP2020-corrected PBE, like the Materials Project data the
    head learnt). pw.x total energies per atom are not trained: they depend on the
    pseudopotentials and sit hundreds of eV/atom from the energy head's Materials Project
    scale, so fitting them would break that head while the gate looks elsewhere."""
    calcs = store.find_calculations(campaign, "completed", sort=[("_id", 1)])
    from pymatgen.core import Structure

    return Labelled(
        [Structure.from_dict(c["structure"]) for c in calcs],
        {"formation_energy_per_atom": np.array([c["formation_energy_per_atom"] for c in calcs])},
        [c["_id"] for c in calcs],
    )


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


def retrain(
    store: Store, campaign: str, version: str, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Fine-tune on every DFT result + replay, judge each head (`policies.finetune`), record
    both versions' figures and the verdict, deploy when every head passed."""
    import torch

    from policies.finetune import gated_fine_tune, original_slices

    doc = store.get_campaign(campaign)
    if doc is None:
        raise KeyError(f"no campaign {campaign!r}")
    cfg = CampaignConfig.model_validate(doc["config"]).retraining
    data = dft_training_set(store, campaign)
    heads = list(data.targets)
    key = f"{campaign}:{version}"
    replay = anchor = None
    if cfg.replay_source and (cfg.replay_size or cfg.anchor_size):
        replay, anchor = original_slices(
            cfg.replay_source, heads, cfg.replay_size, cfg.anchor_size, key
        )
    old, old_doc = load_deployed(store, campaign)
    new, verdicts = gated_fine_tune(
        old, data, cfg.gate_settings(), replay, anchor, key=key, progress=progress
    )
    deploy = all(v.passed for v in verdicts.values())

    # the generators first: the surrogate's verdict ends the retraining the daemon waits for
    generators = retrain_generators(
        store, campaign, version, data, CampaignConfig.model_validate(doc["config"])
    )

    buffer = io.BytesIO()
    torch.save(new.state(), buffer)
    weights_id = store.put_model_weights(buffer.getvalue(), filename=f"{version}.pt")
    n_replay, n_anchor = len(replay or []), len(anchor or [])
    store.register_model(
        campaign,
        version,
        kind=KIND,
        training_size=len(data) + n_replay,
        holdout_metrics={h: v.to_dict() for h, v in verdicts.items()},
        weights_id=weights_id,
        deployed=deploy,
        state="deployed" if deploy else "rejected",
        previous=(old_doc or {}).get("version", "shipped-default"),
        campaign_results=len(data),
        replay={"source": cfg.replay_source, "n": n_replay},
        anchor={
            "source": cfg.replay_source,
            "n": n_anchor,
            "ids": list(anchor.ids) if anchor else [],
        },
        folds=min(cfg.folds, len(data)),
        # one document tells what this retraining did to every model
        **({"generators": generators} if generators else {}),
    )
    store.log_event(
        campaign,
        "retrain_finished",
        version=version,
        deployed=deploy,
        heads={h: {"passed": v.passed, "reason": v.reason} for h, v in verdicts.items()},
    )
    return {
        "version": version,
        "deployed": deploy,
        "generators": generators,
        "heads": {h: v.to_dict() for h, v in verdicts.items()},
        "campaign_results": len(data),
        "replay": n_replay,
        "anchor": n_anchor,
    }


def describe(doc: dict) -> list[str]:
    """A model document's retraining outcome as lines a user reads: the verdict, then per
    head both versions' campaign CV and anchor MAEs and the reason."""
    if not doc:
        return []
    state = doc.get("state")
    verdict = {"deployed": "deployed", "rejected": "refused by the gate"}.get(state, state)
    n = doc.get("campaign_results", doc.get("training_size"))
    replay = (doc.get("replay") or {}).get("n", 0)
    lines = [
        f"retrained {doc.get('version')}: {verdict} (fine-tuned on {n} DFT result(s) + "
        f"{replay} replayed; {doc.get('folds', '-')}-fold CV)"
    ]
    fmt = lambda m: "n/a" if not m or m.get("mae") is None else f"{m['mae']:.3f}"  # noqa: E731
    for head, v in (doc.get("holdout_metrics") or {}).items():
        if not isinstance(v, dict) or "campaign_new" not in v:
            continue
        anchor = (
            f", anchor ({v['anchor_old'].get('n', 0)}) {fmt(v['anchor_old'])} -> "
            f"{fmt(v['anchor_new'])}"
            if v.get("anchor_old")
            else ""
        )
        lines.append(
            f"  {head} MAE, deployed -> new: campaign CV {fmt(v['campaign_old'])} -> "
            f"{fmt(v['campaign_new'])}{anchor} eV/atom: {v.get('reason', '')}"
        )
    # "generator": one fingerprint verdict, as documents written before the voxel VAE learnt
    for generator in doc.get("generators") or ([doc["generator"]] if doc.get("generator") else []):
        lines += describe_generator(generator)
    if doc.get("error"):
        lines.append(f"  failed: {doc['error']}")
    return lines


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
