from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from generators.data import Record
from generators.dataset import DatasetGenerator


@pytest.fixture()
def records():
    al = Structure(
        Lattice.cubic(4.05), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    return [Record(al, {"formation_energy_per_atom": 0.0}, "al"), Record(si, {}, "si")]


def test_draws_are_reproducible_and_carry_provenance(records):
    gen = DatasetGenerator(records, rattle=0.02)
    a, b = gen.sample(3, seed=7), gen.sample(3, seed=7)
    assert [c.provenance.base_id for c in a] == [c.provenance.base_id for c in b]
    assert np.allclose(a[0].structure.cart_coords, b[0].structure.cart_coords)
    assert a[0].provenance.generator == "dataset" and a[0].provenance.extra["rattle"] == 0.02
    assert len({c.id for c in a + b}) == 6


def test_rattle_moves_atoms_but_keeps_cell(records):
    (cand,) = DatasetGenerator(records[:1], rattle=0.05).sample(1, seed=1)
    original = records[0].structure
    assert cand.structure.lattice == original.lattice
    shift = np.linalg.norm(cand.structure.cart_coords - original.cart_coords, axis=1)
    assert 0 < shift.max() < 0.5


def test_bad_arguments(records):
    with pytest.raises(ValueError, match="at least one record"):
        DatasetGenerator([])
    with pytest.raises(ValueError, match="rattle"):
        DatasetGenerator(records, rattle=-1)
    with pytest.raises(ValueError, match="n must be"):
        DatasetGenerator(records).sample(-1)
