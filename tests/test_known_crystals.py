"""Known crystals: what a campaign must not re-compute, and how a relaxed crystal is labelled."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from agent.components import ComponentError, Components
from agent.config import CampaignConfig
from agent.daemon import CampaignInvalid, check_campaign
from generators.candidate import Candidate
from generators.known import KnownCrystals
from policies.filters import Funnel, KnownCrystalFilter


def perovskite(a: float, a_site: str, b_site: str = "Ti", shift: float = 0.0) -> Structure:
    return Structure(
        Lattice.cubic(a),
        [a_site, b_site, "O", "O", "O"],
        [[0, 0, 0], [0.5 + shift, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


@pytest.fixture(scope="module")
def known(shared_data) -> KnownCrystals:
    return KnownCrystals(
        [
            str(shared_data / "perov_5" / "val.csv.gz"),
            str(shared_data / "matminer_0.4.0" / "flla_2015.csv.gz"),
        ]
    )


def test_materials_project_batio3_is_known_srtio3_is_not(known):
    # flla_2015 holds cubic BaTiO3 as mp-5777 (a = 4.04 A) and no SrTiO3 at all
    assert known.find(perovskite(4.00, "Ba")) == "matminer:flla_2015:mp-5777"
    assert known.find(perovskite(4.00, "Ba", shift=0.03)) == "matminer:flla_2015:mp-5777"
    assert known.find(perovskite(3.95, "Sr")) is None
    # a different stoichiometry is a different crystal, whatever its cell
    suboxide = perovskite(4.00, "Ba")
    suboxide.remove_sites([4])
    assert known.find(suboxide) is None


def test_a_perov5_row_is_found_under_its_file_and_id(known, shared_data):
    frame = pd.read_csv(gzip.open(shared_data / "perov_5" / "val.csv.gz"))
    row = frame.iloc[0]
    structure = Structure.from_str(row["cif"], fmt="cif")
    assert known.find(structure) == f"perov_5/val:{row['material_id']}"
    structure.perturb(0.05, min_distance=0.01)
    assert known.find(structure) == f"perov_5/val:{row['material_id']}"


def test_known_filter_rejects_with_the_match(known):
    candidates = [
        Candidate(structure=perovskite(4.02, "Ba"), provenance={"generator": "fingerprint"}),
        Candidate(structure=perovskite(3.95, "Sr"), provenance={"generator": "fingerprint"}),
    ]
    result = Funnel([KnownCrystalFilter(known)]).run(candidates, None, None)
    assert [c.structure.composition.reduced_formula for c in result.kept] == ["SrTiO3"]
    (rejection,) = result.rejections
    assert rejection.step == "known"
    assert rejection.reason == "is the known crystal matminer:flla_2015:mp-5777"


def test_bad_known_source_is_one_error_before_the_run(tmp_path, crystalloop_home):
    not_a_table = tmp_path / "notes.csv"
    not_a_table.write_text("a,b\n1,2\n")

    def config(source: str) -> CampaignConfig:
        return CampaignConfig.model_validate(
            {"name": "known-bad", "filters": {"known_sources": [source]}}
        )

    for source, words in (
        (str(tmp_path / "missing.csv.gz"), "no such file"),
        (str(not_a_table), "cannot read"),
        ("matminer:nonesuch", "unknown matminer data set"),
    ):
        with pytest.raises(ComponentError, match=f"filters.known_sources: .*{words}"):
            Components(config(source)).known  # noqa: B018
    bad = config(str(not_a_table))
    with pytest.raises(CampaignInvalid, match="filters.known_sources"):
        check_campaign(bad, Components(bad))
