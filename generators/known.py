"""Crystals that are already known: a generator's training data, Materials Project subsets.

A discovery loop must not spend a DFT relaxation re-computing a crystal its own training data
holds, and its summary must tell a rediscovery from a discovery - before DFT (the candidate)
and after it (a generated cell can relax into a known one). Both questions are answered here,
with CDVAE's StructureMatcher settings so that "novel" means what the generation metrics mean.

Reading a data set's structures is the slow part (about 25 s for 4,000 CIFs), and a campaign
only ever asks about a handful of formulas: rows are indexed by the reduced formula of their
``formula`` column and a row's structure is parsed the first time a crystal of that formula
is checked.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from generators.data.readers import MATMINER_FILES, _from_cif, _matminer_spec, matminer_path
from generators.generation_metrics import CDVAE_MATCHER
from generators.splits import scale_of

ACCEPTED = (
    "matminer:" + "|".join(MATMINER_FILES) + ", a matminer CSV(.gz) by path, or a perov_5-style "
    "CSV(.gz) with material_id, formula and cif columns"
)


@dataclass
class _Table:
    source: str  # how a match is named: the spec's file stem or matminer:NAME
    parse: Callable[[str], Structure]
    rows: dict[str, list[tuple[str, str]]]  # reduced formula -> [(id, structure text)]
    parsed: dict[str, list[tuple[str, Structure]]] = field(default_factory=dict)
    # reduced formula -> lowest Materials Project formation energy (eV/atom), for sources on
    # that scale (flla_2015); empty for the others
    energies: dict[str, float] = field(default_factory=dict)

    def structures(self, formula: str) -> list[tuple[str, Structure]]:
        if formula not in self.parsed:
            out = []
            for source_id, text in self.rows.get(formula, []):
                try:
                    out.append((source_id, self.parse(text)))
                except Exception:  # noqa: BLE001,S112 - a corrupt row cannot match anything
                    continue
            self.parsed[formula] = out
        return self.parsed[formula]


def _reduced(formula: str) -> str:
    """'SrTiO3', or a composition dict's repr as matminer's flla_2015 writes it."""
    if formula.lstrip().startswith("{"):
        return Composition(ast.literal_eval(formula)).reduced_formula
    return Composition(formula).reduced_formula


def _open(spec: str) -> _Table:
    if spec.startswith("matminer:"):
        name = spec.split(":", 1)[1]
        column, parse, _ = _matminer_spec(name)
        path, source, comment = matminer_path(name), spec, "#"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"known crystals: no such file {spec!r} (accepted: {ACCEPTED})")
        name = path.name.split(".")[0]
        if name in MATMINER_FILES:
            column, parse, _ = _matminer_spec(name)
            source, comment = f"matminer:{name}", "#"
        else:
            column, parse, comment = "cif", _from_cif, None
            source = f"{path.parent.name}/{name}"  # perov_5/val: the file's stem says little
    energy = "formation_energy_per_atom" if scale_of(spec).startswith("Materials Project") else None
    columns = ["material_id", "formula", column] + ([energy] if energy else [])
    try:
        frame = pd.read_csv(path, comment=comment, usecols=columns)
    except ValueError as exc:  # a missing column, or not a CSV at all
        raise ValueError(
            f"known crystals: cannot read {spec!r}: {exc} (accepted: {ACCEPTED})"
        ) from exc
    rows: dict[str, list[tuple[str, str]]] = {}
    warnings.filterwarnings("ignore", message="No Pauling electronegativity")  # noble gases
    # usecols keeps the file's column order: name the order wanted
    for source_id, formula, text in frame[["material_id", "formula", column]].itertuples(
        index=False
    ):
        try:
            reduced = _reduced(str(formula))
        except Exception:  # noqa: BLE001,S112 - an unreadable formula names no crystal
            continue
        rows.setdefault(reduced, []).append((str(source_id), text))
    energies: dict[str, float] = {}
    if energy:
        for formula, value in frame[["formula", energy]].itertuples(index=False):
            try:
                reduced, value = _reduced(str(formula)), float(value)
            except Exception:  # noqa: BLE001,S112 - as above
                continue
            if value == value and value < energies.get(reduced, float("inf")):
                energies[reduced] = value
    return _Table(source, parse, rows, energies=energies)


class KnownCrystals:
    """The crystals of some data sources, asked one structure at a time."""

    def __init__(self, specs: Sequence[str], matcher: StructureMatcher | None = None):
        if not specs:
            raise ValueError("known crystals: give at least one data source")
        self.specs = [str(s) for s in specs]
        self.tables = [_open(s) for s in self.specs]
        self.matcher = matcher or StructureMatcher(**CDVAE_MATCHER)

    def __len__(self) -> int:
        return sum(len(v) for t in self.tables for v in t.rows.values())

    def formation_energies(self, elements: Iterable[str]) -> list[tuple[str, float]]:
        """(reduced formula, lowest formation energy per atom) of the known crystals made of
        `elements` only, from the sources on the Materials Project scale: the phases a
        campaign's hull must include, or a high-energy polymorph of a known compound (or a
        compound that decomposes into known ones) would look stable."""
        allowed = set(elements)
        best: dict[str, float] = {}
        for table in self.tables:
            for formula, value in table.energies.items():
                if {el.symbol for el in Composition(formula).elements} <= allowed:
                    best[formula] = min(value, best.get(formula, float("inf")))
        return sorted(best.items())

    def find(self, structure: Structure) -> str | None:
        """'source:id' of the first known crystal `structure` matches, or None (novel)."""
        formula = structure.composition.reduced_formula
        for table in self.tables:
            for source_id, known in table.structures(formula):
                if self.matcher.fit(structure, known):
                    return f"{table.source}:{source_id}"
        return None
