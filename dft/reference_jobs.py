"""Elemental references as jobflow jobs of their own, cached by (element, settings) in the
JobStore.

Why: a reference used to be computed inside the formation-energy job, behind a file lock:
invisible in the flow and the JobStore, pinned to the machine of that job, and cached only in
that machine's home directory. Now each element is a job in the candidate's flow, the
formation-energy job takes their outputs as inputs, and FireWorks distributes them like any
other job.

Cached: a reference job's uuid is derived from the element and everything that changes its
energy (`settings_hash`), so every flow that needs "Si at these settings" - in any campaign -
contains a job with the same uuid, and its output lives at one address in the JobStore. When
the job runs and finds that output already there (computed for another candidate or campaign,
possibly on another machine), it returns it without running pw.x; it also checks the pseudo
checksums, so a changed UPF file is computed afresh. On one machine, concurrent workers still
compute each reference once (dft.references' file lock).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from jobflow import Job, JobConfig, Maker
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymatgen.core import Structure

from dft.references import basis_of, cache_dir, fingerprint, reference_energy, reference_input
from dft.settings import DFTSettings

_NAMESPACE = uuid.UUID("1f0c6a52-0d0e-4a57-9a43-5d2b1c3e7f11")


class ReferenceDocument(BaseModel):
    """One element's reference energy, and the settings it belongs to."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    element: str
    key: str = Field(description="full fingerprint, pseudo checksums included")
    settings_hash: str = Field(description="what the job's uuid is derived from")
    basis: dict[str, Any] = Field(description="ecutwfc, ecutrho, smearing, degauss, conv_thr")
    energy_per_atom: float
    energy: float
    nsites: int
    ecutwfc: float
    calculation: str
    structure: Structure
    wall_time_s: float
    warnings: list[str] = Field(default_factory=list)
    source: Literal["computed", "job store", "machine cache"] = Field(
        description="computed now, reused from the JobStore, or from this machine's cache"
    )

    @field_validator("structure", mode="before")
    @classmethod
    def _structure(cls, value: Any) -> Structure:
        return value if isinstance(value, Structure) else Structure.from_dict(value)


def settings_hash(element: str, basis: Mapping[str, Any], settings: DFTSettings) -> str:
    """What decides a reference energy besides the element's fixed reference structure: the
    compound's basis, the k density and the pseudopotential set. Computable without the
    pseudo files (the submitting machine may not have them) and without building the input
    (an element with no reference structure fails in its job, not at submission); the job
    checks the full fingerprint, pseudo checksums and input included, before reusing."""
    pseudos = str(settings.resolved_pseudo_dir()) if settings.pseudo_dir else settings.pseudo_family
    key = {
        "element": element,
        "basis": basis_of(basis),
        "k_density": settings.kpoint_density,
        "pseudos": pseudos,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reference_uuid(element: str, basis: Mapping[str, Any], settings: DFTSettings) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{element}:{settings_hash(element, basis, settings)}"))


def _stored(key: str) -> dict | None:
    """This job's earlier output in the JobStore it runs against, if it has the same key."""
    from jobflow import CURRENT_JOB

    store, current = CURRENT_JOB.store, CURRENT_JOB.job
    if store is None or current is None:
        return None
    doc = store.query_one({"uuid": current.uuid}, ["output"], sort={"index": -1})
    output = (doc or {}).get("output")
    if isinstance(output, dict) and output.get("key") == key:
        return output
    return None


def run_reference(
    element: str,
    basis: dict[str, Any],
    settings_overrides: dict[str, Any],
    siblings: Sequence[str] = (),
) -> ReferenceDocument:
    """The job's body: the stored output if there is one, else this machine's cache, else pw.x.

    When another worker is computing this element right now, this one computes the missing
    references of `siblings` (the other elements of its compound, at the same basis) before
    it waits: two workers starting on two compounds of one chemistry then share the
    references out instead of one idling on the other's lock."""
    settings = DFTSettings(**settings_overrides)
    pw_input = reference_input(element, basis, settings)
    key = fingerprint(element, pw_input, settings)
    stored = _stored(key)
    if stored is not None:
        return ReferenceDocument(**{**stored, "source": "job store"})
    cached = (cache_dir(settings) / f"{element}-{key}.json").is_file()
    entry = reference_energy(element, basis, settings, wait=False)
    if entry is None:
        for other in siblings:
            if other == element:
                continue
            try:
                reference_energy(other, basis, settings, wait=False)
            except Exception:  # noqa: BLE001,S112 - its own job runs it again and reports why
                continue
        entry = reference_energy(element, basis, settings)
    return ReferenceDocument(
        **entry,
        settings_hash=settings_hash(element, basis, settings),
        basis=dict(basis),
        source="machine cache" if cached else "computed",
    )


@dataclass
class ElementReferenceMaker(Maker):
    """The reference job of one element at the basis of the compound it serves."""

    name: str = "reference"
    settings_overrides: dict[str, Any] = field(default_factory=dict)

    def make(self, element: str, basis: Mapping[str, Any], siblings: Sequence[str] = ()) -> Job:
        settings = DFTSettings(**self.settings_overrides)
        basis = basis_of(basis)
        return Job(
            function=run_reference,
            function_args=(element, basis, dict(self.settings_overrides), list(siblings)),
            uuid=reference_uuid(element, basis, settings),
            name=f"{self.name} {element}",
            output_schema=ReferenceDocument,
            config=JobConfig(expose_store=True),
        )
