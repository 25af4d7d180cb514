from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from generators.candidate import Candidate, Provenance
from policies.chemistry import AllowedElementsFilter
from policies.filters import Funnel


def perovskite(a: str, b: str) -> Candidate:
    s = Structure(
        Lattice.cubic(3.9),
        [a, b, "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    return Candidate(structure=s, provenance=Provenance(generator="test"))


def test_rejects_candidates_outside_the_chemical_space_with_reason():
    keep, drop = perovskite("Sr", "Ti"), perovskite("La", "Ti")
    result = Funnel([AllowedElementsFilter(["Sr", "Ba", "Ti", "O"])]).run([keep, drop])
    assert [c.id for c in result.kept] == [keep.id]
    (rejection,) = result.rejections
    assert rejection.candidate_id == drop.id and "La" in rejection.reason
    assert drop.validity["allowed_elements"] is False


def test_bad_element_list():
    with pytest.raises(ValueError, match="not an element"):
        AllowedElementsFilter(["Sr", "Xx"])
    with pytest.raises(ValueError, match="at least one"):
        AllowedElementsFilter([])
