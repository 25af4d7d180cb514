"""Every funnel step rejects a crafted bad candidate with its reason; counts add up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from generators.candidate import Candidate, Provenance
from policies.filters import (
    ChargeBalanceFilter,
    DuplicateFilter,
    Funnel,
    FunnelContext,
    MinDistanceFilter,
    NoveltyFilter,
    PropertyWindowFilter,
    StoichiometryFilter,
    default_funnel,
)


def cand(structure: Structure, name: str) -> Candidate:
    return Candidate(structure=structure, provenance=Provenance(generator="test"), id=name)


def perovskite(a: float = 3.905, species=("Sr", "Ti", "O")) -> Structure:
    return Structure(
        Lattice.cubic(a),
        [species[0], species[1], species[2], species[2], species[2]],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


@pytest.fixture(scope="module")
def real(perov_csv) -> list[Structure]:
    frame = pd.read_csv(perov_csv, nrows=12)
    return [Structure.from_str(c, fmt="cif") for c in frame["cif"]]


def run(step, candidates, **context):
    result = Funnel([step]).run(candidates, context=FunnelContext(**context))
    return result, result.reasons


def test_min_distance_rejects_overlapping_atoms() -> None:
    bad = perovskite()
    bad.append("O", [0.05, 0.0, 0.0])  # 0.2 A from Sr
    result, reasons = run(MinDistanceFilter(0.5), [cand(perovskite(), "ok"), cand(bad, "bad")])
    assert [c.id for c in result.kept] == ["ok"]
    assert "0.20 A apart" in reasons["bad"]
    assert result.kept[0].validity["min_distance"] is True


def test_charge_balance_rejects_intermetallic_oxide_mismatch() -> None:
    bad = perovskite(species=("Na", "Mg", "Cs"))  # no anion: cannot be neutral
    result, reasons = run(ChargeBalanceFilter(), [cand(perovskite(), "ok"), cand(bad, "bad")])
    assert [c.id for c in result.kept] == ["ok"]
    assert "no charge-balanced" in reasons["bad"]


def test_stoichiometry_around_base() -> None:
    base = perovskite()
    other = perovskite(species=("Ba", "Zr", "O"))  # ABX3 too
    rocksalt = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cands = [cand(other, "abx3"), cand(rocksalt, "ab")]
    result, reasons = run(StoichiometryFilter(), cands, base=base)
    assert [c.id for c in result.kept] == ["abx3"]
    assert "is not ABC3" in reasons["ab"]
    result, reasons = run(StoichiometryFilter(base, mode="elements"), cands)
    assert result.kept == [] and "other elements" in reasons["abx3"]


def test_novelty_rejects_known_structure_even_as_supercell(real) -> None:
    known = real[0].copy()
    known.make_supercell([2, 1, 1])
    cands = [cand(known, "known"), cand(real[1], "new")]
    result, reasons = run(NoveltyFilter(), cands, reference=[real[0]], reference_ids=["mp-x"])
    assert [c.id for c in result.kept] == ["new"]
    assert reasons["known"] == "novelty: matches known structure mp-x"


def test_in_batch_duplicates_keep_the_first(real) -> None:
    copy = real[2].copy()
    copy.perturb(0.01, min_distance=0.0)
    cands = [cand(real[2], "first"), cand(real[3], "other"), cand(copy, "second")]
    result, reasons = run(DuplicateFilter(), cands)
    assert [c.id for c in result.kept] == ["first", "other"]
    assert reasons["second"] == "duplicates: duplicate of candidate first"


def test_property_window_relative_to_base() -> None:
    cands = [cand(perovskite(), f"c{i}") for i in range(3)]
    preds = {"formation_energy_per_atom": (np.array([-1.0, -1.5, -0.5]), np.zeros(3))}
    step = PropertyWindowFilter("formation_energy_per_atom", relative=0.2)
    result = Funnel([step]).run(
        cands, preds, FunnelContext(base_properties={"formation_energy_per_atom": -1.1})
    )
    assert [c.id for c in result.kept] == ["c0"]
    assert "outside [-1.32, -0.88]" in result.reasons["c1"]


def test_default_funnel_counts_and_skips(real) -> None:
    bad = perovskite()
    bad.append("O", [0.05, 0.0, 0.0])
    cands = [cand(s, f"r{i}") for i, s in enumerate(real[:6])] + [cand(bad, "overlap")]
    cands.append(cand(real[0].copy(), "dup"))
    result = default_funnel().run(cands, context=FunnelContext(reference=[real[5]]))
    counts = {c.step: c for c in result.counts}
    assert counts["min_distance"].rejected == 1
    assert counts["duplicates"].rejected == 1
    assert counts["novelty"].rejected == 1
    assert counts["stoichiometry"].skipped == "no base compound"
    assert counts["property_window"].skipped.startswith("no predictions")
    for c in result.counts:
        assert c.entered == c.rejected + c.kept
    assert len(result.kept) + len(result.rejections) == len(cands)
    assert result.kept_index == [
        i for i, c in enumerate(cands) if c.id in {k.id for k in result.kept}
    ]
