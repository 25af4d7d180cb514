"""The candidate crystal: the one object that flows generators -> policies -> dft.

A candidate carries its structure and *where it came from*, so every DFT result in the
store can be traced back to the generator, model version and latent seed that proposed it.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator
from pymatgen.core import Structure


class Provenance(BaseModel):
    """Where a candidate came from; enough to regenerate it."""

    generator: str = Field(description="generator name, e.g. 'voxel-vae' or 'dataset'")
    model_version: str | None = Field(None, description="checkpoint version or hash")
    mode: str = Field("random", description="random | targeted | interpolation | dataset")
    condition: dict[str, Any] | None = Field(
        None, description="conditioning, e.g. {'property': 'formation_energy', 'decile': 3}"
    )
    seed: int | None = Field(None, description="RNG seed that produced the latent vector")
    latent: list[float] | None = Field(None, description="latent vector, when small enough to keep")
    base_id: str | None = Field(None, description="base compound id for targeted/interpolation")
    extra: dict[str, Any] = Field(default_factory=dict)


class Candidate(BaseModel):
    """A proposed crystal with its provenance and validity flags."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    structure: Structure
    provenance: Provenance
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    validity: dict[str, bool] = Field(
        default_factory=dict, description="named checks, e.g. {'min_distance': True}"
    )

    @field_validator("structure", mode="before")
    @classmethod
    def _coerce_structure(cls, value: Any) -> Structure:
        if isinstance(value, Structure):
            return value
        if isinstance(value, dict):
            return Structure.from_dict(value)
        raise TypeError(f"structure must be a pymatgen Structure or its dict, got {type(value)}")

    @field_serializer("structure")
    def _serialize_structure(self, structure: Structure) -> dict[str, Any]:
        return structure.as_dict()

    @property
    def formula(self) -> str:
        return self.structure.composition.reduced_formula

    @property
    def is_valid(self) -> bool:
        return all(self.validity.values()) if self.validity else True
