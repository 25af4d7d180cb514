"""Snapping a candidate onto its symmetry before pw.x, and only as far as symprec says."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from dft.makers import relax_candidate, symmetrized


def perovskite(shift: float) -> Structure:
    return Structure(
        Lattice.cubic(3.95),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5 + shift], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def spacegroup(s: Structure) -> int:
    return SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_number()


def test_noise_is_snapped_away():
    noisy = perovskite(0.0)
    rng = np.random.default_rng(0)
    for i in range(len(noisy)):
        noisy.translate_sites([i], rng.normal(0, 0.004, 3))  # about 0.02 A per site
    assert spacegroup(noisy) == 1
    clean = symmetrized(noisy, 0.1)
    assert spacegroup(clean) == 221 and len(clean) == 5
    assert clean.composition.reduced_formula == "SrTiO3"
    assert abs(clean.lattice.a - 3.95) < 0.02


def test_a_real_distortion_is_kept():
    polar = perovskite(0.06)  # Ti 0.24 A off centre: a ferroelectric distortion, not noise
    assert spacegroup(symmetrized(polar, 0.1)) == 99  # P4mm, as before


def test_the_flow_symmetrizes_between_chgnet_and_pw_x():
    names = [j.name for j in relax_candidate(perovskite(0.0), check_pseudos=False).jobs]
    assert names.index("chgnet prerelax") < names.index("symmetrize") < names.index("qe relax")
    off = relax_candidate(perovskite(0.0), check_pseudos=False, symprec=None)
    assert "symmetrize" not in [j.name for j in off.jobs]


def test_screening_thresholds_reach_the_relaxation_and_its_references():
    from agent.components import Components
    from agent.config import CampaignConfig

    config = CampaignConfig.model_validate(
        {"name": "screen", "dft": {"convergence": "screening", "chgnet_prerelax": False}}
    )
    flow = Components(config).flow(perovskite(0.0), "cand")
    (relax,) = [j for j in flow.jobs if j.name == "qe relax"]
    maker = relax.function.__self__
    assert maker.input_overrides == {"forc_conv_thr": 2e-3, "press_conv_thr": 2.0, "conv_thr": 1e-7}
    (ref_o,) = [j for j in flow.jobs if j.name == "reference O"]
    assert ref_o.function_args[1]["conv_thr"] == 1e-7  # the references share the SCF threshold
