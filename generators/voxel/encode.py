"""Crystal -> voxel grids (density M, species S, occupancy, coordinate grid C), after Court et al. 2020.

The cell is mapped onto an n x n x n grid whose voxel (i, j, k) sits at fractional position
(i, j, k) / n, so a rotation of the cube about the origin permutes voxels exactly and the
coordinate grid C gives back the cell length (`lattice_from_coords`).

Why the species matrix is not simply "the atom within its ionic radius": in a perovskite the
ionic spheres overlap (r(Ti4+) + r(O2-) > d(Ti-O)), so nearest-atom partitioning would cut each
atom's region asymmetrically and its centroid would no longer be the atom position, and two
touching oxygens would merge into one region. Each atom's *label radius* is therefore its ionic
radius shrunk, in proportion to the ionic radii of each neighbour pair, until `label_gap_voxels`
of empty space separates every pair; a floor (`min_label_radius_voxels`) keeps at least a few
voxels per atom. With the gap, the regions are whole discrete balls, and their periodic
centroids give the sites back to a small fraction of a voxel (see decode.py and the benchmark).

The density uses the unshrunk ionic radius as its Gaussian width, as in the paper. Cells are
orthogonal, so Gaussians and their periodic image sums factorise per axis: the density is an
einsum over three 1-D arrays per atom, which is what makes encoding fast.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition, DummySpecies, Element, Species, Structure

from generators.voxel.settings import VoxelSettings


class VoxelEncodingError(ValueError):
    """The structure cannot be voxelised (not cubic, too many atoms, an element with no radius)."""


@dataclass
class VoxelGrid:
    """The voxel representation of one crystal; arrays indexed [i, j, k] along a, b, c."""

    density: np.ndarray  # (n, n, n) float32, sum of Z-weighted Gaussians
    species: np.ndarray  # (n, n, n) int16, atomic number Z of the owning atom, 0 = empty
    mask: np.ndarray  # (n, n, n) bool, species > 0
    coords: np.ndarray  # (n, n, n, 3) float32, Cartesian position of each voxel (A)
    lattice: np.ndarray  # (3,) float32, cell lengths a, b, c (A)

    @property
    def n_grid(self) -> int:
        return int(self.species.shape[0])


@dataclass
class VoxelBatch:
    """Stacked grids of many structures; `index[i]` is the input position of row i."""

    density: np.ndarray  # (B, n, n, n) float32
    species: np.ndarray  # (B, n, n, n) int16
    mask: np.ndarray  # (B, n, n, n) bool
    coords: np.ndarray  # (B, n, n, n, 3) float32
    lattice: np.ndarray  # (B, 3) float32
    index: np.ndarray  # (B,) int64
    errors: dict[int, str] = field(default_factory=dict)  # input position -> reason skipped

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def grid(self, row: int) -> VoxelGrid:
        return VoxelGrid(
            self.density[row],
            self.species[row],
            self.mask[row],
            self.coords[row],
            self.lattice[row],
        )


# ---------------------------------------------------------------------------------- radii


@lru_cache(maxsize=4096)
def _element_ionic_radius(symbol: str, oxidation: int) -> float | None:
    try:
        with warnings.catch_warnings():  # pymatgen warns for every state it has no radius for
            warnings.simplefilter("ignore")
            radius = Species(symbol, oxidation).ionic_radius
    except (ValueError, KeyError):
        return None
    return float(radius) if radius is not None else None


@lru_cache(maxsize=256)
def _atomic_radius(symbol: str) -> float | None:
    element = Element(symbol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = (element.atomic_radius, element.atomic_radius_calculated)
    for radius in candidates:
        if radius is not None and float(radius) > 0:
            return float(radius)
    return None


@lru_cache(maxsize=1)
def _oxidation_prior() -> dict[tuple[str, int], float]:
    """pymatgen's ICSD occurrence table of oxidation states, keyed by (symbol, state)."""
    Composition("NaCl").oxi_state_guesses()  # makes pymatgen load Composition.oxi_prob
    return {(sp.symbol, int(sp.oxi_state)): float(p) for sp, p in Composition.oxi_prob.items()}


@lru_cache(maxsize=256)
def _candidate_states(symbol: str) -> tuple[int, ...]:
    element = Element(symbol)
    return tuple(element.icsd_oxidation_states or element.common_oxidation_states)


def oxidation_state_guesses(composition: Composition) -> tuple[dict[str, float], ...]:
    """`Composition.oxi_state_guesses(max_sites=-1)`, same algorithm and ranking, ~10x faster.

    pymatgen builds a `Species` object for every term of its search, which makes the guess
    cost milliseconds per composition; here the ICSD prior is a plain dict. The result is
    checked against pymatgen on every composition of the shared data (tests).
    """
    reduced = composition.reduced_composition
    amounts = {el.symbol: int(round(amt)) for el, amt in reduced.items()}
    if len(amounts) == 1:
        return ({next(iter(amounts)): 0.0},)
    prior = _oxidation_prior()
    elements = list(amounts)
    sums: list[list[int]] = []
    best: list[dict[int, float]] = []
    for symbol in elements:
        scores: dict[int, float] = {}
        order: list[int] = []
        for combo in itertools.combinations_with_replacement(
            _candidate_states(symbol), amounts[symbol]
        ):
            total = sum(combo)
            if total not in scores:
                order.append(total)
            score = sum(prior.get((symbol, state), 0.0) for state in combo)
            if total not in scores or score > scores[total]:
                scores[total] = score
        sums.append(order)
        best.append(scores)
    solutions, ranks = [], []
    for trial in itertools.product(*sums):
        if sum(trial) == 0:
            solutions.append({el: v / amounts[el] for el, v in zip(elements, trial, strict=True)})
            ranks.append(sum(best[i][v] for i, v in enumerate(trial)))
    ranked = sorted(zip(ranks, range(len(ranks)), strict=True), key=lambda p: p[0], reverse=True)
    return tuple(solutions[i] for _, i in ranked)


@lru_cache(maxsize=65536)
def _composition_radii(formula: str) -> tuple[tuple[str, float, str], ...]:
    """(element, radius, source) per element of a reduced formula; cached per composition."""
    composition = Composition(formula)
    symbols = [el.symbol for el in composition.elements]
    try:
        guesses = oxidation_state_guesses(composition)
    except ValueError:
        guesses = ()
    chosen: dict[str, tuple[float, str]] = {}
    # First the most probable charge-neutral guess in which every element has a Shannon
    # radius for its (integer) state; then per element the first guess that has one.
    for guess in guesses:
        radii = {}
        for symbol in symbols:
            state = guess.get(symbol, 0.0)
            if abs(state - round(state)) > 1e-6 or round(state) == 0:
                break
            radius = _element_ionic_radius(symbol, int(round(state)))
            if radius is None:
                break
            radii[symbol] = (radius, f"shannon {symbol}{int(round(state)):+d}")
        else:
            chosen = radii
            break
    for symbol in symbols:
        if symbol in chosen:
            continue
        for guess in guesses:
            state = guess.get(symbol, 0.0)
            if abs(state - round(state)) < 1e-6 and round(state) != 0:
                radius = _element_ionic_radius(symbol, int(round(state)))
                if radius is not None:
                    chosen[symbol] = (radius, f"shannon {symbol}{int(round(state)):+d}")
                    break
        else:
            atomic = _atomic_radius(symbol)
            if atomic is not None:
                chosen[symbol] = (atomic, "atomic radius (no oxidation state fits)")
    return tuple((s, *chosen[s]) for s in symbols if s in chosen)


def ionic_radii(structure: Structure, settings: VoxelSettings | None = None) -> dict[str, float]:
    """Radius (A) per element: pymatgen's Shannon radius for the guessed oxidation state.

    Oxidation states come from pymatgen's `Composition.oxi_state_guesses` algorithm (ICSD
    statistics, no bond valence analysis; see `oxidation_state_guesses`), cached per reduced
    formula. Where no charge-neutral guess gives the
    element a tabulated radius, its atomic radius is used. Radii below `min_radius` (H+ and
    small high-valent cations have tiny or negative Shannon radii) are raised to it.
    """
    _check_species(structure)
    return _radii(structure.composition, settings or default_settings())


def _radii(composition: Composition, settings: VoxelSettings) -> dict[str, float]:
    table = _composition_radii(composition.reduced_formula)
    radii = {symbol: max(radius, settings.min_radius) for symbol, radius, _ in table}
    missing = [el.symbol for el in composition.elements if el.symbol not in radii]
    if missing:
        raise VoxelEncodingError(f"no ionic or atomic radius known for element(s) {missing}")
    return radii


def radius_sources(structure: Structure) -> dict[str, str]:
    """Where each element's radius came from (for reports and debugging)."""
    return {s: src for s, _, src in _composition_radii(structure.composition.reduced_formula)}


# ---------------------------------------------------------------------------------- checks


def _check_species(structure: Structure, composition: Composition | None = None) -> None:
    if not structure.is_ordered:
        raise VoxelEncodingError("disordered (partially occupied) sites cannot be voxelised")
    composition = composition or structure.composition
    for specie in composition.elements:
        if isinstance(specie, DummySpecies) or not isinstance(specie, (Element, Species)):
            raise VoxelEncodingError(f"unknown element {specie!s}: no atomic number or radius")


def check_structure(
    structure: Structure,
    settings: VoxelSettings | None = None,
    composition: Composition | None = None,
) -> np.ndarray:
    """Validate a structure for encoding and return its cell lengths (3,)."""
    settings = settings or default_settings()
    composition = composition or structure.composition
    if len(structure) == 0:
        raise VoxelEncodingError("empty structure")
    if len(structure) > settings.max_atoms:
        raise VoxelEncodingError(
            f"{len(structure)} sites > max_atoms={settings.max_atoms} "
            f"({composition.reduced_formula})"
        )
    _check_species(structure, composition)
    lattice = structure.lattice
    lengths = np.array(lattice.abc, dtype=np.float64)
    angles = np.array(lattice.angles, dtype=np.float64)
    if np.any(np.abs(angles - 90.0) > settings.angle_tolerance) or np.any(
        np.abs(lengths - lengths.mean()) > settings.length_tolerance * lengths.mean()
    ):
        raise VoxelEncodingError(
            "cell is not cubic: a,b,c = {:.4f},{:.4f},{:.4f} A, angles = {:.2f},{:.2f},{:.2f} deg; "
            "convert to the conventional standard cell (generators.data.select_cubic)".format(
                *lengths, *angles
            )
        )
    return lengths


# ---------------------------------------------------------------------------------- grids


def coordinate_grid(lattice: Sequence[float] | np.ndarray, n_grid: int) -> np.ndarray:
    """(n, n, n, 3) Cartesian coordinates (A) of voxel (i, j, k) = (i/n a, j/n b, k/n c)."""
    lengths = np.asarray(lattice, dtype=np.float32).reshape(3)
    axis = np.arange(n_grid, dtype=np.float32) / n_grid
    grid = np.empty((n_grid, n_grid, n_grid, 3), dtype=np.float32)
    grid[..., 0] = (axis * lengths[0])[:, None, None]
    grid[..., 1] = (axis * lengths[1])[None, :, None]
    grid[..., 2] = (axis * lengths[2])[None, None, :]
    return grid


def lattice_from_coords(coords: np.ndarray) -> np.ndarray:
    """Cell lengths (3,) recovered from a coordinate grid by a least-squares fit per axis.

    The fit (slope of C[..., k] against voxel index along axis k, times n) also works for a
    generated, noisy coordinate grid, where differencing two voxels would not.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.shape[0]
    index = np.arange(n, dtype=np.float64)
    centred = index - index.mean()
    lengths = np.empty(3)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        profile = coords[..., axis].mean(axis=other)  # mean over the two other axes
        slope = float(np.dot(centred, profile - profile.mean()) / np.dot(centred, centred))
        lengths[axis] = slope * n
    return lengths.astype(np.float32)


def _wrapped_offsets(frac: np.ndarray, n_grid: int) -> np.ndarray:
    """(A, 3, n) minimum-image fractional offsets between each voxel plane and each atom."""
    axis = np.arange(n_grid, dtype=np.float64) / n_grid
    delta = axis[None, None, :] - frac[:, :, None]
    return delta - np.round(delta)


def label_radii(
    frac: np.ndarray, lengths: np.ndarray, radii: np.ndarray, settings: VoxelSettings
) -> np.ndarray:
    """Species-matrix label radius (A) per atom; see the module docstring for the rule."""
    voxel = float(lengths.min()) / settings.n_grid
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.round(delta)
    dist = np.linalg.norm(delta * lengths[None, None, :], axis=-1)
    np.fill_diagonal(dist, float(lengths.min()))  # an atom's own nearest periodic image
    gap = settings.label_gap_voxels * voxel
    share = radii[:, None] / (radii[:, None] + radii[None, :])
    bound = ((dist - gap) * share).min(axis=1)
    label = np.minimum(settings.label_radius_scale * radii, bound)
    return np.maximum(label, settings.min_label_radius_voxels * voxel)


def _encode_into(
    structure: Structure, settings: VoxelSettings, density: np.ndarray, species: np.ndarray
) -> np.ndarray:
    """Write the density and species grids of one structure into the given (n, n, n) arrays."""
    composition = structure.composition
    lengths = check_structure(structure, settings, composition)
    n = settings.n_grid
    radius_of = _radii(composition, settings)
    z = np.array(structure.atomic_numbers, dtype=np.int16)
    radii = np.array([radius_of[sp.symbol] for sp in structure.species], dtype=np.float64)
    frac = np.mod(structure.frac_coords, 1.0)

    # density: per-axis periodic Gaussian sums, combined by an outer product per atom
    sigma = settings.density_width_scale * radii
    n_images = int(math.ceil(4.0 * sigma.max() / lengths.min())) + 1
    images = np.arange(-n_images, n_images + 1, dtype=np.float64)
    axis = np.arange(n, dtype=np.float64) / n
    # (A, 3, n, images): distance in A from voxel plane to each image of the atom
    diff = (axis[None, None, :, None] - frac[:, :, None, None] - images) * lengths[
        None, :, None, None
    ]
    gauss = np.exp(-0.5 * (diff / sigma[:, None, None, None]) ** 2).sum(axis=-1)
    plane = (z[:, None, None] * gauss[:, 0, :, None]) * gauss[:, 1, None, :]  # (A, n, n)
    # plain einsum, not matmul: a threaded BLAS call this small is 10x slower on a busy machine
    density[...] = np.einsum("aij,ak->ijk", plane, gauss[:, 2])

    offsets = _wrapped_offsets(frac, n) * lengths[None, :, None]
    sq = offsets**2
    label = label_radii(frac, lengths, radii, settings)
    label2 = label**2
    # species: nearest atom among those whose label radius contains the voxel. Each atom only
    # visits the (periodically wrapped) box of voxels its label sphere can reach.
    reach = int(np.ceil(label.max() * n / lengths.min())) + 1
    if 2 * reach + 1 >= n:  # a sphere as large as the cell: every voxel is in every box
        box = np.broadcast_to(np.arange(n), (len(z), 3, n))
    else:
        centre = np.rint(frac * n).astype(np.int64)
        box = (centre[:, :, None] + np.arange(-reach, reach + 1)) % n  # (A, 3, B)
    part = [np.take_along_axis(sq[:, k, :], box[:, k, :], axis=1) for k in range(3)]  # (A, B)
    dist2 = part[0][:, :, None, None] + part[1][:, None, :, None] + part[2][:, None, None, :]
    voxel = (box[:, 0, :, None, None] * n + box[:, 1, None, :, None]) * n + box[:, 2, None, None, :]
    inside = dist2 < label2[:, None, None, None]
    voxel, dist2 = voxel[inside], dist2[inside]
    owner_z = np.broadcast_to(z[:, None, None, None], inside.shape)[inside]
    best = np.full(n * n * n, np.inf)
    np.minimum.at(best, voxel, dist2)  # scatter-min: the nearest containing atom wins
    wins = dist2 == best[voxel]
    flat = np.zeros(n * n * n, dtype=species.dtype)
    flat[voxel[wins]] = owner_z[wins]
    species[...] = flat.reshape(n, n, n)
    return lengths.astype(np.float32)


@lru_cache(maxsize=1)
def default_settings() -> VoxelSettings:
    """VoxelSettings() read once from the environment (building one costs about a millisecond)."""
    return VoxelSettings()


def encode(structure: Structure, settings: VoxelSettings | None = None) -> VoxelGrid:
    """Voxelise one cubic structure. Raises VoxelEncodingError for input it cannot represent."""
    settings = settings or default_settings()
    n = settings.n_grid
    density = np.empty((n, n, n), dtype=np.float32)
    species = np.empty((n, n, n), dtype=np.int16)
    lengths = _encode_into(structure, settings, density, species)
    return VoxelGrid(
        density=density,
        species=species,
        mask=species > 0,
        coords=coordinate_grid(lengths, settings.n_grid),
        lattice=lengths,
    )


def encode_many(
    structures: Iterable[Structure],
    settings: VoxelSettings | None = None,
    *,
    skip_errors: bool = False,
    with_coords: bool = True,
) -> VoxelBatch:
    """Voxelise many structures into stacked arrays.

    With `skip_errors`, structures that cannot be encoded are left out and their reasons kept
    in `VoxelBatch.errors` (keyed by input position); otherwise the first error is raised.
    `with_coords=False` skips the (B, n, n, n, 3) coordinate stack (it is a pure function of
    the lattice; see `coordinate_grid`) and returns an empty array in its place.
    """
    settings = settings or default_settings()
    n = settings.n_grid
    structures = list(structures)
    total = len(structures)
    density = np.empty((total, n, n, n), dtype=np.float32)
    species = np.empty((total, n, n, n), dtype=np.int16)
    lattice = np.empty((total, 3), dtype=np.float32)
    index: list[int] = []
    errors: dict[int, str] = {}
    for position, structure in enumerate(structures):
        row = len(index)
        try:
            lattice[row] = _encode_into(structure, settings, density[row], species[row])
        except VoxelEncodingError as exc:
            if not skip_errors:
                raise VoxelEncodingError(f"structure {position}: {exc}") from exc
            errors[position] = str(exc)
            continue
        index.append(position)
    count = len(index)
    density, species, lattice = density[:count], species[:count], lattice[:count]
    coords = np.empty((count if with_coords else 0, n, n, n, 3), dtype=np.float32)
    for row in range(coords.shape[0]):
        coords[row] = coordinate_grid(lattice[row], n)
    return VoxelBatch(
        density=density,
        species=species,
        mask=species > 0,
        coords=coords,
        lattice=lattice,
        index=np.asarray(index, dtype=np.int64),
        errors=errors,
    )
