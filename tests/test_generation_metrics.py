"""CDVAE-comparable generation metrics: validity, SMACT, fingerprints, coverage, matching."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from generators import generation_metrics as gm
from generators.generation_metrics import (
    CDVAE_MATCHER,
    composition_fingerprint,
    composition_valid,
    coverage,
    evaluate_samples,
    fingerprints,
    match,
    match_rates,
    novelty,
    structure_fingerprint,
    structure_valid,
    uniqueness,
)

SCALER = Path(gm.__file__).with_name("cdvae_comp_scaler.json")


def _srtio3(a: float = 3.905) -> Structure:
    return Structure(
        Lattice.cubic(a),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def _rocksalt() -> Structure:
    """Conventional 8-atom NaCl cell."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def _rocksalt_primitive() -> Structure:
    """The same crystal as `_rocksalt`, as its 2-atom primitive cell."""
    return Structure(
        Lattice.from_parameters(3.988, 3.988, 3.988, 60, 60, 60),
        ["Na", "Cl"],
        [[0, 0, 0], [0.5, 0.5, 0.5]],
    )


def _close_pair(separation: float = 0.3) -> Structure:
    """Na and Cl `separation` A apart in a 5 A cube."""
    return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [separation / 5.0, 0, 0]])


def _nacl2_fluorite() -> Structure:
    """Na4Cl8 in the fluorite arrangement: sensible geometry, impossible charges."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.5), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )


@pytest.fixture(scope="module")
def perov(perov_csv: Path) -> list[Structure]:
    """The first 8 real perov_5 validation crystals (CuCdN3, VIrO3, RuWOFN, ...)."""
    frame = pd.read_csv(perov_csv, comment="#", nrows=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(cif, fmt="cif") for cif in frame.cif]


# ---------------------------------------------------------------------------- structure


def test_structure_validity_distances():
    assert structure_valid(_srtio3())
    assert structure_valid(_rocksalt())
    assert structure_valid(_close_pair(0.6))
    assert not structure_valid(_close_pair(0.3))
    assert not structure_valid(_close_pair(0.49))
    assert not structure_valid(None)
    assert not structure_valid(Structure(Lattice.cubic(4.0), [], []))
    # one atom whose own image is 0.4 A away (a distance CDVAE's check would not see)
    assert not structure_valid(Structure(Lattice.tetragonal(0.4, 4.0), ["Fe"], [[0, 0, 0]]))
    # sheared cell: every lattice vector and +-1 combination is >= 1 A, but b - 3a is
    # (0.2, 0, 0.3), 0.36 A long
    sheared = Structure(Lattice([[1, 0, 0], [3.2, 0, 0.3], [0, 5, 0]]), ["Fe"], [[0, 0, 0]])
    assert not structure_valid(sheared)
    assert structure_valid(sheared, min_distance=0.3)


def test_structure_validity_volume():
    # fcc primitive cell, nearest neighbour 0.51 A: distances pass, volume 0.0938 A^3 < 0.1
    fcc = Structure(Lattice.from_parameters(0.51, 0.51, 0.51, 60, 60, 60), ["Cu"], [[0, 0, 0]])
    assert fcc.volume == pytest.approx(0.51**3 / math.sqrt(2), rel=1e-6)
    assert not structure_valid(fcc)
    assert structure_valid(fcc, min_volume=0.09)


# -------------------------------------------------------------------------- composition


def test_composition_validity_matches_smact_full_oxidation_lists():
    from smact.screening import smact_validity

    assert composition_valid("SrTiO3")
    assert composition_valid("NaCl")
    assert composition_valid(_rocksalt().composition)  # Na4Cl4 reduces to NaCl
    assert composition_valid("CsPbI3")
    assert not composition_valid("NaCl2")
    assert not composition_valid("KCl2")
    assert not composition_valid(_nacl2_fluorite().composition)
    # SMACT balances SrTiO4 as Sr(+2) Ti(+2) O(-1)x4 and passes it
    assert composition_valid("SrTiO4")
    assert composition_valid("Fe")  # single element
    assert composition_valid("Si")
    assert composition_valid("Fe3Al")  # all metals
    assert composition_valid("CuZn")
    # charge-balanced only with a cation more electronegative than an anion: Pauling fails
    assert not composition_valid("KLiON2")
    assert smact_validity("KLiON2", use_pauling_test=False, oxidation_states_set="smact14")
    # smact 4's default (ICSD-24) oxidation states disagree with the full lists CDVAE used
    assert composition_valid("AlCaO3") and not smact_validity("AlCaO3")
    assert not composition_valid("RbTlO3") and smact_validity("RbTlO3")
    assert not composition_valid({})


def test_oxidation_state_balance_is_stricter_than_smact():
    from generators.generation_metrics import oxidation_states_balanced

    assert oxidation_states_balanced("SrTiO3")
    assert oxidation_states_balanced("SrTiO2")  # Ti(+2)
    assert oxidation_states_balanced("Ti2O3")
    assert oxidation_states_balanced(_rocksalt().composition)
    assert oxidation_states_balanced("Fe")  # an element is neutral
    assert not oxidation_states_balanced("NaCl2")
    # SMACT's full lists balance these with Ti(-1) / Ti(0); the common states do not
    for formula in ("BaSrTi2O", "BaSrTiO2"):
        assert composition_valid(formula) and not oxidation_states_balanced(formula)
    assert not oxidation_states_balanced({})


# ------------------------------------------------------------------------- fingerprints


def test_composition_fingerprint_uses_cdvae_scaler():
    scaler = json.loads(SCALER.read_text())
    assert len(scaler["means"]) == len(scaler["stds"]) == 132
    fp = composition_fingerprint("SrTiO3")
    assert fp.shape == (132,)
    assert np.all(np.isfinite(fp))
    # magpie "Number" statistics of SrTiO3: min Z 8 (O), max 38 (Sr), range 30, mean 84/5
    for i, raw in enumerate([8.0, 38.0, 30.0, 16.8]):
        assert fp[i] == pytest.approx((raw - scaler["means"][i]) / scaler["stds"][i])
    # fractions only: the cell size does not matter
    np.testing.assert_allclose(composition_fingerprint("Sr2Ti2O6"), fp)


def test_structure_fingerprint_rocksalt_is_octahedral():
    fp = structure_fingerprint(_rocksalt())
    labels = gm._crystalnn().feature_labels()
    assert fp.shape == (61,) == (len(labels),)
    values = dict(zip(labels, fp, strict=True))
    assert values["wt CN_6"] == pytest.approx(1.0)
    assert values["octahedral CN_6"] == pytest.approx(1.0, abs=1e-6)
    assert structure_fingerprint(None) is None
    assert structure_fingerprint(Structure(Lattice.cubic(4.0), [], [])) is None


def test_fingerprints_keep_order_and_none(perov):
    calls = []
    structs, comps = fingerprints(
        [perov[0], None, perov[1]], progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert structs[1] is None and comps[1] is None
    assert structs[0].shape == (61,) and comps[2].shape == (132,)
    np.testing.assert_allclose(comps[0], composition_fingerprint("CdCuN3"))
    assert not np.allclose(structs[0], structs[2])
    par_structs, par_comps = fingerprints([perov[0], None, perov[1]], workers=2)
    assert par_structs[1] is None
    np.testing.assert_allclose(par_structs[0], structs[0])
    np.testing.assert_allclose(par_comps[2], comps[2])


# ------------------------------------------------------------------------------ coverage


def _toy_fingerprints():
    gen_s = [[0, 0], [1, 0], None, [5, 5], [9, 9]]
    gen_c = [[0], [0], None, [0], [21]]
    ref_s = [[0, 0.1], [1, 0.15], [3, 3], [5, 5.1]]
    ref_c = [[1], [10], [0], [20]]
    as_arrays = lambda rows: [None if r is None else np.array(r, dtype=float) for r in rows]  # noqa: E731
    return as_arrays(gen_s), as_arrays(gen_c), as_arrays(ref_s), as_arrays(ref_c)


def test_coverage_on_known_fingerprints():
    gen_s, gen_c, ref_s, ref_c = _toy_fingerprints()
    cov = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.2, comp_cutoff=4.0)
    # references: r0 near g0 in both; r1 structure near g1 but composition 10 away from all;
    # r2 2.83 from every structure; r3: structure near g3, composition near g4 -- CDVAE
    # takes the two minima independently, so it counts
    assert cov["cov_recall"] == pytest.approx(2 / 4)
    # generated: g0, g1, g3 hit, g4 is 5.59 from every structure; 3 of 5 passed in
    assert cov["cov_precision"] == pytest.approx(3 / 5)
    assert cov["amsd_precision"] == pytest.approx((0.1 + 0.15 + 0.1 + math.sqrt(31.21)) / 4)
    assert cov["amcd_recall"] == pytest.approx((1 + 10 + 0 + 1) / 4)
    assert cov["n_generated"] == 5 and cov["n_generated_featurised"] == 4
    assert cov["n_reference"] == 4
    # more samples asked for than passed in (e.g. some produced nothing upstream)
    cov10 = coverage(gen_s, gen_c, ref_s, ref_c, n_generated=10)
    assert cov10["cov_precision"] == pytest.approx(0.3)
    assert cov10["cov_recall"] == pytest.approx(0.5)
    # looser composition cutoff: r1 (10 away) now counts
    assert coverage(gen_s, gen_c, ref_s, ref_c, comp_cutoff=10.0)["cov_recall"] == 0.75


def test_coverage_with_nothing_generated():
    _, _, ref_s, ref_c = _toy_fingerprints()
    cov = coverage([None, None], [None, None], ref_s, ref_c)
    assert cov["cov_recall"] == 0.0 and cov["cov_precision"] == 0.0
    assert cov["amsd_recall"] is None
    with pytest.raises(ValueError):
        coverage([], [], [None], [None])


def test_coverage_of_real_crystals_against_themselves(perov):
    structs, comps = fingerprints(perov[:3])
    cov = coverage(structs, comps, structs, comps)
    assert cov["cov_recall"] == 1.0 and cov["cov_precision"] == 1.0
    assert cov["amsd_recall"] == pytest.approx(0.0) and cov["amcd_precision"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------ matching


def test_cdvae_matcher_settings():
    assert CDVAE_MATCHER == {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}


def test_match_self_strained_and_different():
    sto = _srtio3()
    same = match(sto, sto)
    assert same["match"] and same["lattice_match"]
    assert same["rms"] == pytest.approx(0.0, abs=1e-8)
    # 2 % larger cell: StructureMatcher scales it away, the lattice check does not
    strained = match(_srtio3(3.905 * 1.02), sto)
    assert strained["match"] and not strained["lattice_match"]
    assert strained["rms"] == pytest.approx(0.0, abs=1e-8)
    assert match(_srtio3(3.905 * 1.005), sto)["lattice_match"]  # within 1 %
    assert match(_srtio3(3.905 * 1.02), sto, lattice_tol=0.03)["lattice_match"]
    assert match(_rocksalt(), sto) == {"match": False, "rms": None, "lattice_match": False}
    assert match(None, sto)["match"] is False
    # a structurally invalid prediction never counts, even against itself
    assert not match(_close_pair(0.3), _close_pair(0.3))["match"]


def test_match_real_perovskite_with_displaced_site(perov):
    true = perov[2]
    pred = true.copy()
    pred.translate_sites([0], [0.02, 0.0, 0.0], frac_coords=True)  # ~0.08 A
    result = match(pred, true)
    assert result["match"] and result["lattice_match"]
    assert 0.0 < result["rms"] < 0.05
    assert not match(perov[1], true)["match"]


def test_match_rates():
    sto = _srtio3()
    rates = match_rates([(sto, sto), (_srtio3(3.905 * 1.02), sto), (None, sto), (_rocksalt(), sto)])
    assert rates["n"] == 4
    assert rates["match_rate"] == pytest.approx(0.5)
    assert rates["match_rate_lattice"] == pytest.approx(0.25)
    assert rates["mean_rms"] == pytest.approx(0.0, abs=1e-8)
    assert match_rates([(None, sto)])["mean_rms"] is None


def test_uniqueness_and_novelty(perov):
    sto = _srtio3()
    shifted = sto.copy()
    shifted.translate_sites(range(len(sto)), [0.1, 0.2, 0.3])  # same crystal, other origin
    crystals = [
        sto,
        shifted,  # repeat
        _srtio3(4.1),  # repeat (matcher scales volume)
        _rocksalt(),
        _rocksalt_primitive(),  # repeat, other cell
        perov[0],
        perov[1],
    ]
    assert uniqueness(crystals) == pytest.approx(4 / 7)
    assert uniqueness([sto, _rocksalt(), perov[0]]) == 1.0
    assert math.isnan(uniqueness([]))
    training = [_rocksalt_primitive(), perov[0], perov[3]]
    assert novelty([sto, _rocksalt(), perov[0], perov[1]], training) == pytest.approx(2 / 4)
    assert novelty([perov[0]], []) == 1.0
    assert math.isnan(novelty([], training))


# ---------------------------------------------------------------------------- evaluation


def test_evaluate_samples(perov):
    samples = [
        _srtio3(),  # valid, novel, not near any reference
        None,  # generator produced nothing
        _close_pair(0.3),  # atoms too close
        _nacl2_fluorite(),  # charges cannot balance
        perov[0],  # valid copy of a reference/training crystal
        perov[0].copy(),  # and its duplicate
    ]
    result = evaluate_samples(samples, reference=perov[:3], training=perov[:3])
    assert result["n"] == 6 and result["n_none"] == 1
    assert result["struct_valid"] == pytest.approx(4 / 6)
    assert result["comp_valid"] == pytest.approx(4 / 6)
    assert result["valid"] == pytest.approx(3 / 6)
    assert result["n_valid"] == 3
    assert result["uniqueness"] == pytest.approx(2 / 3)
    assert result["novelty"] == pytest.approx(1 / 3)
    # only perov[0] of the 3 references is reached, by 2 of the 6 samples
    assert result["cov_recall"] == pytest.approx(1 / 3)
    assert result["cov_precision"] == pytest.approx(2 / 6)
    assert result["n_generated"] == 6 and result["n_generated_featurised"] == 5
    assert result["n_reference"] == 3
    # ceiling: min(6, 3) training crystals, here the reference itself
    assert result["ceiling_n_generated"] == 3
    assert result["ceiling_cov_recall"] == 1.0 and result["ceiling_cov_precision"] == 1.0
