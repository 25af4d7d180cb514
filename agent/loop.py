"""The discovery loop: generate -> screen -> select -> submit, with harvesting between steps.

All state lives in the store: the campaign document holds the cycle number and the phase the
cycle has reached, candidates hold their status, the DFT backend holds the jobs. Each phase is
written so that re-running it after a crash (SIGKILL anywhere) converges to the same store
contents: generation is seeded per cycle and de-duplicated by fingerprint, status changes are
conditional updates, and submission goes through the backend's candidate-id idempotency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Composition

from agent.components import Components
from agent.config import CampaignConfig
from agent.faults import checkpoint
from agent.hull import update_hull
from agent.retrain import RetrainManager
from agent.store import Store
from agent.summary import campaign_summary, known_match

PHASES = ("generate", "screen", "select", "submit", "done")
ACTIVE = ("submitted", "running")


class CampaignFailed(RuntimeError):
    """A cycle raised; the campaign is stored as failed with this reason."""

    def __init__(self, campaign: str, cycle: int, phase: str, reason: str):
        self.campaign, self.cycle, self.phase, self.reason = campaign, cycle, phase, reason
        super().__init__(f"campaign {campaign!r} failed in cycle {cycle} ({phase}): {reason}")


@dataclass
class CycleStats:
    cycle: int
    generated: int = 0
    duplicates: int = 0
    undecoded: int = 0  # samples that decoded to no crystal
    rejected: int = 0
    pooled: int = 0
    selected: int = 0
    submitted: int = 0
    rejections: dict[str, int] = field(default_factory=dict)


class CampaignRunner:
    """Drives one campaign until its budget, cycle limit or patience is spent, or a stop."""

    def __init__(
        self,
        config: CampaignConfig,
        store: Store,
        components: Components,
        should_stop: Callable[[], bool] = lambda: False,
        report: Callable[[str], None] = print,
        poll_interval: float = 2.0,
    ):
        self.config = config
        self.name = config.name
        self.store = store
        self.components = components
        self._external_stop = should_stop
        self.report = report
        self.poll_interval = poll_interval
        self.retrain = RetrainManager(config, store, report)

    # ----------------------------------------------------------------- control
    def should_stop(self) -> bool:
        return self._external_stop() or self.store.stop_requested(self.name)

    def _campaign(self) -> dict:
        doc = self.store.get_campaign(self.name)
        assert doc is not None
        return doc

    def _set_phase(self, cycle: int, phase: str) -> None:
        self.store.update_campaign(self.name, cycle=cycle, phase=phase)
        self.store.log_event(self.name, "phase", cycle=cycle, phase=phase)

    def dft_used(self) -> int:
        """Calculations submitted so far (any state past selection counts against the budget)."""
        return sum(
            n
            for status, n in self.store.count_by_status(self.name).items()
            if status in ("submitted", "running", "completed", "failed")
        )

    def budget_left(self) -> int:
        return max(0, self.config.budgets.max_dft_calculations - self.dft_used())

    def _out_of_time(self, started: float) -> bool:
        limit = self.config.budgets.max_wall_time
        return limit is not None and time.time() - started > limit

    def _cycles_exhausted(self, cycle: int) -> bool:
        stopping = self.config.stopping
        if stopping.max_cycles is not None and cycle >= stopping.max_cycles:
            return True
        if stopping.patience is not None:
            recent = [c for c in self.store.cycles(self.name) if c.get("phase") == "done"]
            tail = recent[-stopping.patience :]
            if len(tail) == stopping.patience and not any(c.get("discoveries") for c in tail):
                return True
        return False

    # ----------------------------------------------------------------- main loop
    def run(self) -> dict[str, Any]:
        """Run until finished or stopped; returns the campaign summary. An error inside a
        cycle stores the campaign as failed, with the reason, and raises ``CampaignFailed``;
        a lost store or lease is not the campaign's failure and propagates as it is."""
        from agent.store import LockLost, StoreUnavailable

        self.store.ensure_campaign(self.name, self.config.model_dump(mode="json"))
        self.store.update_campaign(self.name, state="running", stop_requested=False, error=None)
        try:
            return self._run()
        except (StoreUnavailable, LockLost):
            raise
        except Exception as exc:
            doc = self.store.get_campaign(self.name) or {}
            cycle, phase = int(doc.get("cycle", 0)), str(doc.get("phase", "?"))
            reason = f"{type(exc).__name__}: {exc}".strip()[:500]
            self.store.update_campaign(self.name, state="failed", error=reason)
            self.store.log_event(self.name, "failed", cycle=cycle, phase=phase, reason=reason)
            raise CampaignFailed(self.name, cycle, phase, reason) from exc

    def _run(self) -> dict[str, Any]:
        started = time.time()
        repaired = self.store.repair_events(self.name)
        if repaired:
            self.report(f"repaired {repaired} audit events left by an interrupted run")
        self.reconcile_submissions()
        self.retrain.recover()

        while not self.should_stop():
            doc = self._campaign()
            cycle, phase = int(doc.get("cycle", 0)), doc.get("phase", "done")
            self.harvest()
            if phase == "done":
                finished = (
                    self.budget_left() == 0
                    or self._cycles_exhausted(cycle)
                    or self._out_of_time(started)
                )
                if finished:
                    if self._out_of_time(started):
                        active = self.store.find_candidates(
                            self.name, ACTIVE, projection={"_id": 1}
                        )
                        self.report(
                            f"wall-time budget of {self.config.budgets.max_wall_time:.0f} s "
                            "reached: no new cycles"
                            + (
                                f"; waiting for the {len(active)} calculation(s) already running"
                                if active
                                else ""
                            )
                        )
                    if self.drain(started):
                        self.store.update_campaign(self.name, state="completed")
                        self.report("campaign complete")
                    break
                cycle = self.store.advance_cycle(self.name)
                self._set_phase(cycle, "generate")
                continue
            step = getattr(self, f"phase_{phase}")
            next_phase = step(cycle)
            checkpoint(f"after_{phase}")
            self._set_phase(cycle, next_phase)
        else:
            self.store.update_campaign(self.name, state="stopped")
            self.report("stopped on request; state saved, `crystalloop run` resumes")
        return self.summary()

    def drain(self, started: float) -> bool:
        """Wait for outstanding calculations and retraining; False if stopped meanwhile."""
        while True:
            self.harvest()
            active = self.store.find_candidates(self.name, ACTIVE, projection={"_id": 1})
            if not active and not self.retrain.busy():
                return True
            if self.should_stop():
                return False
            if self._out_of_time(started) and not active:
                return True
            time.sleep(self.poll_interval)

    # ----------------------------------------------------------------- phases
    def phase_generate(self, cycle: int) -> str:
        stats = CycleStats(cycle)
        seed = self.config.seed * 100_003 + cycle
        # models a retraining deployed since the last cycle
        self.components.refresh_surrogate(self.store, self.name)
        self.components.refresh_generators(self.store, self.name)
        candidates = self.components.generate(seed)
        # a sample the generator could not turn into a crystal (e.g. an empty voxel grid) has
        # no sites: nothing to screen or compute, so it is counted, not stored
        decoded = [c for c in candidates if len(c.structure) > 0]
        stats.undecoded = len(candidates) - len(decoded)
        inserted = self.store.insert_candidates(self.name, cycle, decoded)
        stats.generated = len(inserted.inserted)
        stats.duplicates = len(inserted.duplicates)
        self.store.record_cycle(
            self.name,
            cycle,
            generated=stats.generated,
            duplicates=stats.duplicates,
            undecoded=stats.undecoded,
        )
        self.report(
            f"cycle {cycle}: generated {stats.generated} ({stats.duplicates} duplicates"
            + (f", {stats.undecoded} not decodable)" if stats.undecoded else ")")
        )
        return "screen"

    def phase_screen(self, cycle: int) -> str:
        docs = self.store.find_candidates(self.name, "generated", cycle=cycle)
        if not docs:
            return "select"
        structures = [Store.structure_of(d) for d in docs]
        results = self.hull_points()
        self.components.hull_points = results + self.known_phases(results)
        predictions = self.components.predict(structures)
        known = self.components.known_structures(self.store, self.name, exclude_cycle=cycle)
        verdicts = self.components.screen(docs, structures, predictions, known)
        updates = {
            d["_id"]: {"predictions": self.components.prediction_summary(predictions, i)}
            for i, d in enumerate(docs)
        }
        self.store.update_candidates(updates)
        kept = [d["_id"] for d in docs if not verdicts[d["_id"]]]
        rejected = {d["_id"]: {"filters": verdicts[d["_id"]]} for d in docs if verdicts[d["_id"]]}
        self.store.transition_many(kept, "generated", "pooled")
        self.store.transition_many(
            list(rejected), "generated", "rejected", reason="filters", per_candidate=rejected
        )
        counts: dict[str, int] = {}
        for reasons in verdicts.values():
            for step in reasons:
                counts[step] = counts.get(step, 0) + 1
        self.store.record_cycle(
            self.name, cycle, pooled=len(kept), rejected=len(rejected), rejections=counts
        )
        why = ", ".join(f"{step} {n}" for step, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        self.report(
            f"cycle {cycle}: {len(kept)} pass the filters, {len(rejected)} rejected"
            + (f" ({why})" if why else "")
        )
        return "select"

    def phase_select(self, cycle: int) -> str:
        n = min(self.config.batch_size, self.budget_left())
        already = self.store.find_candidates(
            self.name, "selected", cycle=cycle, projection={"_id": 1}
        )
        n -= len(already)
        pool = self.store.find_candidates(self.name, "pooled")
        if n <= 0 or not pool:
            return "submit"
        structures = [Store.structure_of(d) for d in pool]
        best = self.best_dft_value()
        spent = self.store.find_candidates(
            self.name, ("selected", "submitted", "running", "completed"), projection=["formula"]
        )
        taken = {Composition(d["formula"]).reduced_formula for d in spent if d.get("formula")}
        results = self.hull_points()
        self.components.hull_points = results + self.known_phases(results)
        scores, picks = self.components.select(
            structures, n, best, seed=self.config.seed + cycle, taken_formulas=taken
        )
        per = {
            pool[i]["_id"]: {"score": _finite(scores[i]), "selected_cycle": cycle} for i in picks
        }
        moved = self.store.transition_many(
            list(per),
            "pooled",
            "selected",
            reason=self.config.acquisition.policy,
            per_candidate=per,
        )
        self.store.record_cycle(self.name, cycle, selected=len(moved) + len(already))
        for i in picks:
            p = pool[i]
            score = _finite(scores[i])
            shown = "n/a" if score is None else f"{score:.3f}"
            self.report(f"cycle {cycle}: selected {p['formula']} (score {shown})")
        return "submit"

    def phase_submit(self, cycle: int) -> str:
        selected = self.store.find_candidates(self.name, "selected")
        for doc in selected:
            if self.should_stop():
                return "submit"
            moved = self.store.transition(doc["_id"], "selected", "submitted", reason="submit")
            if moved is None:
                continue
            checkpoint("before_backend_submit")
            self._submit(doc)
        self.store.record_cycle(self.name, cycle, submitted=len(selected), phase="done")
        return "done"

    # ----------------------------------------------------------------- DFT bookkeeping
    def _submit(self, doc: dict) -> None:
        flow = self.components.flow(Store.structure_of(doc), doc["_id"])
        handle = self.components.backend.submit(doc["_id"], flow)
        self.store.update_candidates({doc["_id"]: {"dft_handle": handle.model_dump(mode="json")}})
        self.store.log_event(self.name, "dft_submitted", candidate_id=doc["_id"])
        self.report(f"submitted {doc['formula']} ({doc['_id'][:8]}) to {handle.backend}")

    def reconcile_submissions(self) -> None:
        """After a restart: a candidate marked submitted but without a recorded handle is
        matched with the backend (which knows every candidate id it was given) rather than
        submitted again; only if the backend never saw it is it submitted now."""
        for doc in self.store.find_candidates(self.name, "submitted"):
            if doc.get("dft_handle"):
                continue
            handle = self.components.backend.handle_for(doc["_id"])
            if handle is not None:
                self.store.update_candidates(
                    {doc["_id"]: {"dft_handle": handle.model_dump(mode="json")}}
                )
                self.store.log_event(self.name, "dft_reconciled", candidate_id=doc["_id"])
            else:
                self._submit(doc)

    def harvest(self) -> int:
        """Poll active calculations; store finished ones (upsert first, then the status, so a
        crash in between repeats harmlessly). Returns how many finished."""
        finished = 0
        backend = self.components.backend
        backend.dispatch()  # polling only reads: queued work starts here
        for doc in self.store.find_candidates(self.name, ACTIVE, projection={"structure": 0}):
            if not doc.get("dft_handle"):
                continue
            status = backend.poll(doc["_id"])
            if status.state == "running" and doc["status"] == "submitted":
                self.store.transition(doc["_id"], "submitted", "running")
                checkpoint("dft_running")
            elif status.state == "completed":
                result = backend.result(doc["_id"])
                self._store_result(doc, result)
                finished += 1
            elif status.state == "failed":
                self.store.save_calculation(
                    doc["_id"],
                    self.name,
                    state="failed",
                    error=status.detail,
                    formula=doc["formula"],
                )
                self.store.transition(doc["_id"], ACTIVE, "failed", reason=status.detail[:200])
                self.report(f"DFT failed for {doc['formula']}: {status.detail[:200]}")
                finished += 1
        if finished:
            update_hull(
                self.store, self.name, self.config.objective, self.known_phases(self.hull_points())
            )
            self.retrain.maybe_start()
        self.retrain.poll()
        return finished

    def _store_result(self, doc: dict, result: dict) -> None:
        predictions = doc.get("predictions") or {}
        predicted = predictions.get(self.config.objective.property, {})
        predicted_ef = predictions.get("formation_energy_per_atom", {})
        raw = result["formation_energy_per_atom"]
        corrected = result.get("formation_energy_per_atom_corrected")
        fields = {
            "state": "completed",
            "formula": result.get("reduced_formula", doc["formula"]),
            # on Materials Project's scale (raw PBE + MP2020 anion correction), like the
            # surrogate's training data; the raw value and the correction are kept beside it
            "formation_energy_per_atom": raw if corrected is None else corrected,
            "formation_energy_per_atom_raw": raw,
            "anion_correction_per_atom": result.get("anion_correction_per_atom", 0.0),
            "energy_per_atom": result["energy_per_atom"],
            "structure": _structure_dict(result["structure"]),
            "settings_key": result.get("settings_key"),
            "references": result.get("references", {}),
            "pressure_kbar": result.get("pressure_kbar"),
            "pressure_ok": result.get("pressure_ok"),
            "ionic_steps": result.get("ionic_steps"),
            "prerelax_steps": result.get("prerelax_steps"),
            "wall_time_s": result.get("wall_time_s"),
            "n_attempts": result.get("n_attempts"),
            "warnings": result.get("warnings", []),
            # the relaxed crystal against filters.known_sources: a generated cell can relax
            # into a known crystal, and then it is no discovery (agent.hull.is_discovery)
            "known_match": self._known_match(result["structure"]),
            "predicted": predicted,  # of the objective's property
            "predicted_formation_energy": predicted_ef,
            "cycle": doc.get("cycle"),
            "task_doc": _jsonable(result),
        }
        self.store.save_calculation(doc["_id"], self.name, **fields)
        checkpoint("after_save_calculation")
        self.store.transition(
            doc["_id"],
            ACTIVE,
            "completed",
            dft={"formation_energy_per_atom": fields["formation_energy_per_atom"]},
        )
        self.report(
            f"DFT done: {fields['formula']} formation energy "
            f"{fields['formation_energy_per_atom']:.3f} eV/atom "
            f"(predicted {predicted_ef.get('mean', float('nan')):.3f})"
        )

    def hull_points(self) -> list[tuple[str, float]]:
        """(formula, formation energy per atom) of every completed DFT result."""
        calcs = self.store.find_calculations(
            self.name, "completed", projection=["formula", "formation_energy_per_atom"]
        )
        return [
            (c["formula"], float(c["formation_energy_per_atom"]))
            for c in calcs
            if isinstance(c.get("formation_energy_per_atom"), int | float)
        ]

    def known_phases(self, results: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """The known phases of the campaign's chemical system (Components.known_phases)."""
        elements = {el.symbol for formula, _ in results for el in Composition(formula).elements}
        return self.components.known_phases(elements)

    def best_dft_value(self) -> float | None:
        key = self.config.objective.property
        best = self.store.best_materials(self.name, key=key, limit=1)
        return float(best[0][key]) if best else None

    # ----------------------------------------------------------------- report
    def summary(self) -> dict[str, Any]:
        return campaign_summary(self.store, self.name, self.components)

    def _known_match(self, structure: Any) -> str | None:
        return known_match(self.components, structure)


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _structure_dict(structure: Any) -> dict:
    return structure if isinstance(structure, dict) else structure.as_dict()


def _jsonable(value: Any) -> Any:
    """Task documents hold pymatgen objects and numpy arrays; the store wants plain JSON."""
    import json

    from monty.json import MontyEncoder

    return json.loads(json.dumps(value, cls=MontyEncoder))
