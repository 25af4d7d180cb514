"""From the UNet's output for one grid to a crystal, in a decoding worker or inline.

These functions take plain arrays (no model), so `VoxelGenerator` can hand each grid to a
process pool while its networks run the next batch, and the decoding tuning can call them on
any segmentation. Sites come from one occupancy segmentation; species from the regions'
votes or from one charge-balanced assignment of the whole cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Structure

from generators.voxel.settings import VoxelSettings


@dataclass
class Generated:
    """One pass through the pipeline, before wrapping as a Candidate."""

    structure: Structure | None
    too_close: list[tuple[int, int, float]]
    lattice: np.ndarray
    n_sites: int
    dropped_regions: int
    assignment: dict[str, Any] | None = None  # joint species assignment, when one ran


def cubic_length(coords: np.ndarray) -> float:
    """The model's cells are cubic: one length, the mean of the three least-squares fits."""
    from generators.voxel.encode import lattice_from_coords

    return float(np.mean(lattice_from_coords(coords)))


def vote_regions(
    species: np.ndarray, confidence: np.ndarray, settings: VoxelSettings
) -> tuple[np.ndarray, np.ndarray, int]:
    """Regions from occupancy, species by confidence-weighted vote inside each region.

    A weakly trained UNet flips species voxel by voxel inside one atom, and every flip
    would become its own site; segmenting the occupancy mask first keeps one site per atom.
    Returns (voted species, region labels, region count); the labels are final, so decoding
    needs no second segmentation.
    """
    from generators.voxel.decode import segment

    labels, count = segment((species > 0).astype(np.int64), settings)
    if count == 0:
        return species, labels, 0
    occupied = labels > 0
    lab, z = labels[occupied], species[occupied].astype(np.int64)
    votes = np.zeros((count + 1, int(z.max()) + 1))
    np.add.at(votes, (lab, z), confidence[occupied])
    out = np.zeros_like(species)
    out[occupied] = votes.argmax(axis=1)[lab]
    return out, labels, count


def decode_voxels(
    species: np.ndarray,
    confidence: np.ndarray,
    length: float,
    settings: VoxelSettings,
    region_vote: bool = True,
    top: tuple[np.ndarray, np.ndarray] | None = None,
):
    """UNet output of one grid (species Z, confidence) and its cubic cell length -> `Decoded`.

    With `region_vote`, the grid is cleaned (`VoxelSettings.denoise`), segmented once on
    occupancy, and each region takes its voted species. With `top` (the UNet's k best classes
    and probabilities per voxel), the regions' species are instead chosen together: the most
    probable charge-balanced assignment (`generators.voxel.assign`), in `Decoded.assignment`.
    """
    from generators.voxel.decode import _absorb_small_regions, decode, denoise_species
    from generators.voxel.encode import coordinate_grid

    coords = coordinate_grid([length] * 3, species.shape[0])
    if not region_vote:
        return decode(species, coords, settings, probabilities=confidence)
    species = np.rint(species).astype(np.int64).clip(min=0)
    if settings.denoise:
        species = denoise_species(species)
    voted, labels, count = vote_regions(species, confidence, settings)
    assignment = None
    if top is not None and count:
        # the regions decode() would keep, so the balance is that of the decoded cell
        labels, count, _ = _absorb_small_regions(labels, count, settings.min_region_voxels)
        voted, assignment = _assign_regions(voted, labels, count, top)
    decoded = decode(voted, coords, settings, probabilities=confidence, regions=(labels, count))
    if assignment is not None:
        decoded.assignment = {
            "balanced": assignment.balanced,
            "log_prob_lost": round(assignment.log_prob_lost, 4),
            "tried": assignment.tried,
        }
    return decoded


def _assign_regions(
    voted: np.ndarray, labels: np.ndarray, count: int, top: tuple[np.ndarray, np.ndarray]
):
    """Each region's vote as a distribution over elements (summed top-k probabilities of its
    voxels), then one joint charge-balanced choice for all regions."""
    from generators.voxel.assign import assign_species

    top_z, top_p = top
    occupied = labels > 0
    lab = labels[occupied] - 1
    z = top_z[occupied].astype(np.int64)  # (N, k)
    p = top_p[occupied].astype(np.float64)
    elements = np.unique(z[z > 0])
    if elements.size == 0:
        return voted, None
    votes = np.zeros((count, elements.size))
    valid = z > 0
    column = np.searchsorted(elements, np.where(valid, z, elements[0]))
    np.add.at(votes, (np.broadcast_to(lab[:, None], z.shape)[valid], column[valid]), p[valid])
    totals = votes.sum(axis=1, keepdims=True)
    probabilities = np.divide(votes, totals, out=np.zeros_like(votes), where=totals > 0)
    assignment = assign_species(probabilities, elements)
    out = np.zeros_like(voted)
    out[occupied] = np.asarray(assignment.z, dtype=voted.dtype)[lab]
    return out, assignment


def decode_generated(
    species: np.ndarray,
    confidence: np.ndarray,
    length: float,
    settings: VoxelSettings,
    region_vote: bool = True,
    top: tuple[np.ndarray, np.ndarray] | None = None,
) -> Generated:
    """`decode_voxels` reduced to what a candidate needs (runs in decoding workers)."""
    d = decode_voxels(species, confidence, length, settings, region_vote, top)
    return Generated(
        d.structure, d.too_close, d.lattice, d.n_sites, d.dropped_regions, d.assignment
    )
