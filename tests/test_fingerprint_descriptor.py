"""The periodic fingerprint: invariances, gradients, and what it refuses."""

from __future__ import annotations

from itertools import permutations, product

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from generators.fingerprint.descriptor import (
    FingerprintError,
    batch_structures,
    fingerprint_structures,
    guess_length,
    slot_elements,
)
from generators.fingerprint.invert import row_loss, structure_target
from generators.fingerprint.settings import FingerprintSettings

SETTINGS = FingerprintSettings()


def distorted_srtio3() -> Structure:
    """Cubic-cell SrTiO3 with Ti off centre and one O moved: no symmetry to hide behind."""
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.52, 0.49, 0.47], [0.5, 0.5, 0.03], [0.5, 0.02, 0.5], [0.0, 0.5, 0.5]],
    )


def test_dimension_and_slots():
    assert SETTINGS.n_radial == 19  # 1.0 .. 5.5 A every 0.25 A
    assert SETTINGS.dim == 5 * 3 * (5 * 19 + 15 * 5 * 2) == 3675
    assert slot_elements(distorted_srtio3().composition, 5) == ["Sr", "Ti", "O"]
    fp = fingerprint_structures([distorted_srtio3()])
    assert fp.shape == (1, 3675)
    # slots 3 and 4 are empty: their pooled blocks are exactly zero
    per = SETTINGS.per_atom_dim
    assert np.all(fp[0, 3 * 3 * per :] == 0) and np.any(fp[0, : 3 * per] != 0)


def test_invariant_to_the_48_cube_symmetries_and_translations():
    s = distorted_srtio3()
    reference = fingerprint_structures([s])[0]
    images = []
    for perm, flips in product(permutations(range(3)), product([False, True], repeat=3)):
        frac = s.frac_coords[:, list(perm)]
        frac = np.where(np.array(flips), 1.0 - frac, frac)
        images.append(Structure(s.lattice, s.species, frac + np.array([0.31, -0.17, 0.77])))
    assert len(images) == 48
    fps = fingerprint_structures(images)
    assert np.abs(fps - reference).max() < 1e-5
    # a different crystal is not invariant by accident
    moved = s.copy()
    moved.translate_sites([1], [0.03, 0, 0])
    assert np.abs(fingerprint_structures([moved])[0] - reference).max() > 1e-2


def test_periodic_images_at_the_cell_edge():
    """Sites at 0.999 and -0.001 are the same site; neighbours across the boundary count."""
    a = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.999, 0.0, 0.0], [0.499, 0.5, 0.5]])
    b = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[-0.001, 0.0, 0.0], [0.499, 0.5, 0.5]])
    fa, fb = fingerprint_structures([a, b])
    assert np.abs(fa - fb).max() < 1e-6
    # one Na per cell: its nearest Na neighbours are all periodic images (6 at 4.0 A), so the
    # radial Na-Na term centred at 4.0 A is large although the cell holds a single Na
    per, nr = SETTINGS.per_atom_dim, SETTINGS.n_radial
    na_na = np.expm1(fa[:per][:nr])  # slot 0 (Na) mean block, neighbours of slot 0
    centre = SETTINGS.radial_centres.index(4.0)
    assert na_na[centre] == pytest.approx(6 * 0.5 * (np.cos(np.pi * 4 / 6) + 1), rel=1e-3)


def test_gradients_match_finite_differences():
    s = distorted_srtio3()
    target, length = structure_target(s)
    batch = batch_structures([s], SETTINGS)
    frac = (batch.frac + 0.01 * torch.tensor([[0.3, -0.2, 0.1]])).requires_grad_(True)
    log_a = torch.log(batch.length * 1.02).requires_grad_(True)
    tfp = torch.as_tensor(target.fingerprint, dtype=torch.float64)[None]
    loss = row_loss(frac, log_a, batch.slots, tfp, SETTINGS).sum()
    loss.backward()
    h = 1e-6

    def at(f, la):
        with torch.no_grad():
            return float(row_loss(f, la, batch.slots, tfp, SETTINGS).sum())

    for site, axis in [(1, 0), (2, 2), (4, 1)]:
        plus, minus = frac.detach().clone(), frac.detach().clone()
        plus[0, site, axis] += h
        minus[0, site, axis] -= h
        numeric = (at(plus, log_a.detach()) - at(minus, log_a.detach())) / (2 * h)
        assert float(frac.grad[0, site, axis]) == pytest.approx(numeric, rel=1e-4, abs=1e-8)
    la = log_a.detach()
    numeric = (at(frac.detach(), la + h) - at(frac.detach(), la - h)) / (2 * h)
    assert float(log_a.grad[0]) == pytest.approx(numeric, rel=1e-4)


def test_lattice_guess_from_the_fingerprint():
    """The inversion's start: within 10 % of the truth for real perovskites and NaCl."""
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    for s in (distorted_srtio3(), nacl):
        target, length = structure_target(s)
        guess = guess_length(target.fingerprint, target.counts, SETTINGS)
        assert abs(guess - length) / length < 0.10


@pytest.mark.parametrize(
    "structure, message",
    [
        (Structure(Lattice.tetragonal(4, 5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), "cubic"),
        (Structure(Lattice.cubic(4), [], []), "without sites"),
        (
            Structure(
                Lattice.cubic(8),
                ["Li", "Na", "K", "Rb", "Cs", "F"],
                [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0], [0.5, 0.5, 0.5]],
            ),
            "element slots",
        ),
    ],
)
def test_refuses_what_it_cannot_describe(structure, message):
    with pytest.raises(FingerprintError, match=message):
        fingerprint_structures([structure])
