"""Unknown DFT settings are errors wherever they come from, and fail when a flow is built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from dft.makers import QERelaxMaker, relax_candidate
from dft.settings import DFTSettings


def si() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def test_unknown_keyword_is_an_error_that_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"'ecutwfx' \(did you mean 'ecutwfc'\?\)"):
        DFTSettings(ecutwfx=30.0)
    assert DFTSettings(ecutwfc=30.0).ecutwfc == 30.0


def test_unknown_environment_variable_is_an_error(monkeypatch) -> None:
    monkeypatch.setenv("CRYSTALLOOP_DFT_KPOINT_DENSTY", "60")
    with pytest.raises(ValidationError, match="CRYSTALLOOP_DFT_KPOINT_DENSTY"):
        DFTSettings()
    monkeypatch.delenv("CRYSTALLOOP_DFT_KPOINT_DENSTY")
    monkeypatch.setenv("CRYSTALLOOP_DFT_KPOINT_DENSITY", "60")
    assert DFTSettings().kpoint_density == 60.0


def test_a_misspelt_override_fails_when_the_flow_is_built() -> None:
    with pytest.raises(ValidationError, match="kpoint_densty"):
        relax_candidate(si(), "si", prerelax=False, settings_overrides={"kpoint_densty": 60.0})
    with pytest.raises(ValidationError, match="walltime"):
        QERelaxMaker(settings_overrides={"walltime": 60.0})
