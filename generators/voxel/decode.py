"""Voxel grids -> crystal: periodic watershed segmentation, one site per region.

The grid is periodic and scikit-image's watershed is not, so segmentation works per periodic
connected component: components of one species are found with periodic connectivity (a region
that wraps across a face, edge or corner is one component), each is unwrapped into a small box
around its circular mean, and the box is split by a watershed whose markers are the maxima of
its Euclidean distance transform (two touching atoms of one element -> two regions). A
component spanning the whole cell (generated noise) falls back to a watershed on the
wrap-padded grid. One site per region at its periodic centroid (voxels unwrapped around the
circular mean, then averaged), species by (optionally probability-weighted) majority vote,
cell lengths from the coordinate grid.

Sites closer than `min_distance` are reported in `Decoded.too_close`, never merged: merging
would hide a generator failure that the metrics must see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Lattice, Structure
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed

from generators.voxel.encode import lattice_from_coords
from generators.voxel.settings import VoxelSettings

_FULL = np.ones((3, 3, 3), dtype=bool)
_FACE = ndi.generate_binary_structure(3, 1)


@dataclass
class DecodedSite:
    z: int  # majority species of the region
    frac: np.ndarray  # (3,) fractional position, periodic centroid of the region
    n_voxels: int
    purity: float  # weight fraction of the region carrying the majority species


@dataclass
class Decoded:
    """A decoded crystal. `structure` is None when no region was found."""

    structure: Structure | None
    sites: list[DecodedSite]
    too_close: list[tuple[int, int, float]]  # (i, j, distance A) with distance < min_distance
    lattice: np.ndarray  # (3,) a, b, c recovered from the coordinate grid
    dropped_regions: int = 0  # regions smaller than min_region_voxels (noise)
    notes: list[str] = field(default_factory=list)
    assignment: dict | None = None  # joint species assignment (generators.voxel.assign), if any

    @property
    def n_sites(self) -> int:
        return len(self.sites)

    @property
    def valid(self) -> bool:
        return self.structure is not None and not self.too_close


def periodic_label(mask: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a periodic 3-D mask (components joined across faces/edges/corners).

    Labels are 1..count, 0 for background. Components are found on a 1-voxel wrap-padded copy;
    each padding voxel is the same voxel as its central image, so their labels are unioned.
    """
    structure = _FULL if structure is None else structure
    n = np.array(mask.shape)
    padded, count = ndi.label(np.pad(mask, 1, mode="wrap"), structure=structure)
    if count == 0:
        return np.zeros(mask.shape, dtype=np.int32), 0
    index = np.indices(padded.shape).reshape(3, -1)
    image = (index - 1) % n[:, None] + 1
    a = padded.reshape(-1)
    b = padded[image[0], image[1], image[2]]
    keep = (a > 0) & (a != b)
    graph = coo_matrix(
        (
            np.ones(int(keep.sum()) + count),
            (
                np.r_[a[keep], np.arange(1, count + 1)] - 1,
                np.r_[b[keep], np.arange(1, count + 1)] - 1,
            ),
        ),
        shape=(count, count),
    )
    n_comp, comp = connected_components(graph, directed=False)
    lookup = np.r_[0, comp + 1].astype(np.int32)
    central = padded[1:-1, 1:-1, 1:-1]
    return lookup[central], int(n_comp)


def _periodic_centroids(
    labels: np.ndarray, count: int, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted periodic centroid (fractional, (count, 3)) and voxel count of labels 1..count."""
    n = np.array(labels.shape, dtype=np.float64)
    occupied = labels > 0
    lab = labels[occupied]
    w = weights[occupied]
    idx = np.argwhere(occupied).astype(np.float64)
    sizes = np.bincount(lab, minlength=count + 1)[1:]
    wsum = np.bincount(lab, weights=w, minlength=count + 1)[1:]
    frac = np.empty((count, 3))
    for axis in range(3):
        angle = 2 * np.pi * idx[:, axis] / n[axis]
        c = np.bincount(lab, weights=w * np.cos(angle), minlength=count + 1)[1:]
        s = np.bincount(lab, weights=w * np.sin(angle), minlength=count + 1)[1:]
        ref = np.arctan2(s, c) / (2 * np.pi) * n[axis]  # circular mean, voxel units
        r = ref[lab - 1]
        unwrapped = r + np.mod(idx[:, axis] - r + n[axis] / 2, n[axis]) - n[axis] / 2
        mean = np.bincount(lab, weights=w * unwrapped, minlength=count + 1)[1:] / wsum
        frac[:, axis] = np.mod(mean / n[axis], 1.0)
    return frac, sizes


def _majority(
    labels: np.ndarray, species: np.ndarray, weights: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    occupied = labels > 0
    lab = labels[occupied].astype(np.int64)
    z = species[occupied].astype(np.int64)
    key = lab * 256 + z
    uniq, inverse = np.unique(key, return_inverse=True)
    totals = np.bincount(inverse, weights=weights[occupied])
    best_z = np.zeros(count + 1, dtype=np.int64)
    best_w = np.zeros(count + 1)
    for k, total in zip(uniq, totals, strict=True):
        label, zz = divmod(int(k), 256)
        if total > best_w[label]:
            best_w[label], best_z[label] = total, zz
    region_w = np.bincount(lab, weights=weights[occupied], minlength=count + 1)
    purity = np.divide(best_w, region_w, out=np.zeros_like(best_w), where=region_w > 0)
    return best_z[1:], purity[1:]


def _markers(distance: np.ndarray, mask: np.ndarray, settings: VoxelSettings) -> tuple:
    """Plateau-merged maxima of a distance map inside `mask` -> (marker labels, count)."""
    if settings.marker_smoothing_voxels > 0:
        distance = ndi.gaussian_filter(distance, settings.marker_smoothing_voxels)
    peaks = (distance == ndi.maximum_filter(distance, size=3)) & mask
    return ndi.label(peaks, structure=_FULL)


def _split_component(local: np.ndarray, settings: VoxelSettings) -> tuple[np.ndarray, int]:
    """Watershed of one unwrapped same-species component (bool box with a 1-voxel margin)."""
    distance = ndi.distance_transform_edt(local)
    markers, count = _markers(distance, local, settings)
    if count <= 1:
        return local.astype(np.int32), 1
    regions = watershed(-distance, markers, mask=local, connectivity=1)
    return regions.astype(np.int32), count


def _segment_global(species: np.ndarray, settings: VoxelSettings) -> tuple[np.ndarray, int]:
    """Whole-grid periodic watershed, for components too large to unwrap into a box."""
    n = species.shape[0]
    occupied = species > 0
    pad = max(2, n // 4)  # distances beyond n/4 voxels only ever come from noise blobs
    padded = np.pad(species, pad, mode="wrap")
    # One distance transform for all species: voxels on a species border count as background,
    # so the distance runs to the nearest empty voxel or other-species neighbour (one voxel
    # shorter at species borders than a per-species transform, which cost one 3-D EDT each).
    interior = padded > 0
    for axis in range(3):
        for shift in (1, -1):
            other = np.roll(padded, shift, axis=axis)
            interior &= (other == padded) | (other == 0)
    core = (slice(pad, -pad),) * 3
    distance = ndi.distance_transform_edt(interior)[core]
    if settings.marker_smoothing_voxels > 0:
        distance = ndi.gaussian_filter(distance, settings.marker_smoothing_voxels, mode="wrap")
    peaks = (distance == ndi.maximum_filter(distance, size=3, mode="wrap")) & occupied
    markers = np.zeros(species.shape, dtype=np.int32)
    count = 0
    for z in np.unique(species[peaks]):  # a plateau shared by two species is two markers
        lab, k = periodic_label(peaks & (species == z))
        markers[lab > 0] = lab[lab > 0] + count
        count += k
    flood = watershed(
        -np.pad(distance, pad, mode="wrap"),
        np.pad(markers, pad, mode="wrap"),
        mask=np.pad(occupied, pad, mode="wrap"),
        connectivity=1,
    )
    return flood[core].astype(np.int32), count


def segment(species: np.ndarray, settings: VoxelSettings | None = None) -> tuple[np.ndarray, int]:
    """Periodic segmentation of a species matrix: (labels (n,n,n), number of regions).

    Each periodic same-species connected component (face connectivity) is unwrapped into a small
    box; the maxima of its Euclidean distance transform are the watershed markers, so two
    touching atoms of one element are split along their neck, while atoms of different
    elements are kept apart by the label change itself. A component with one marker (every
    atom of a clean, encoded grid) is one region without flooding. Components that span the
    cell (percolating, generated noise) fall back to a whole-grid wrap-padded watershed.
    """
    settings = settings or VoxelSettings()
    species = np.asarray(species)
    n = species.shape[0]
    labels = np.zeros(species.shape, dtype=np.int32)
    count = 0
    spanning = np.zeros(species.shape, dtype=bool)
    for z in np.unique(species[species > 0]):
        components, k = periodic_label(species == z, _FACE)
        if k == 0:
            continue
        flat = components.reshape(-1)
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], np.arange(1, k + 2))
        for c in range(k):
            voxels = order[starts[c] : starts[c + 1]]
            idx = np.stack(np.unravel_index(voxels, species.shape), axis=1)
            unwrapped = _unwrap(idx, n)
            low = unwrapped.min(axis=0)
            extent = unwrapped.max(axis=0) - low + 1
            if np.any(extent >= n - 1):
                spanning[tuple(idx.T)] = True
                continue
            local = np.zeros(tuple(extent + 2), dtype=bool)
            local[tuple((unwrapped - low + 1).T)] = True
            regions, r = _split_component(local, settings)
            labels[tuple(idx.T)] = regions[tuple((unwrapped - low + 1).T)] + count
            count += r
    if spanning.any():
        flood, k = _segment_global(np.where(spanning, species, 0), settings)
        labels[spanning] = flood[spanning] + count
        count += k
    occupied = species > 0
    orphans = occupied & (labels == 0)  # occupied voxels no marker reached
    if orphans.any():
        extra, k = periodic_label(orphans)
        labels[extra > 0] = extra[extra > 0] + count
        count += k
    used = np.unique(labels[labels > 0])  # renumber 1..count without gaps
    lookup = np.zeros(count + 1, dtype=np.int32)
    lookup[used] = np.arange(1, used.size + 1, dtype=np.int32)
    return lookup[labels], int(used.size)


def _unwrap(idx: np.ndarray, n: int) -> np.ndarray:
    """Integer voxel indices of one periodic component, unwrapped around their circular mean."""
    angle = 2 * np.pi * idx / n
    ref = np.rint(np.arctan2(np.sin(angle).sum(0), np.cos(angle).sum(0)) / (2 * np.pi) * n)
    return (ref + np.mod(idx - ref + n // 2, n) - n // 2).astype(np.int64)


def denoise_species(species: np.ndarray) -> np.ndarray:
    """Periodic 3x3x3 clean-up of a (generated) species matrix; see `VoxelSettings.denoise`.

    Thresholds are chosen so that an encoded grid passes unchanged: every encoded atom owns a
    compact region of >= 8 voxels, so none of its voxels is isolated or alone in its species,
    and the 1-voxel gaps between atoms are never enclosed by >= 22 occupied neighbours.
    """
    occupied = species > 0
    if not occupied.any():
        return species

    def count(mask: np.ndarray) -> np.ndarray:  # voxels of mask in each 3x3x3 neighbourhood
        return np.rint(ndi.uniform_filter(mask.astype(np.float32), 3, mode="wrap") * 27)

    around = count(occupied)
    keep = (occupied & (around > 2)) | (~occupied & (around >= 22))
    elements = np.unique(species[occupied])
    votes = np.stack([count(species == z) for z in elements])
    majority = elements[np.argmax(votes, axis=0)]
    own = np.take_along_axis(
        votes, np.searchsorted(elements, species.clip(min=elements[0]))[None], axis=0
    )[0]
    cleaned = np.where(occupied & (own > 2), species, majority)
    return np.where(keep, cleaned, 0).astype(species.dtype)


def _absorb_small_regions(
    labels: np.ndarray, count: int, min_voxels: int
) -> tuple[np.ndarray, int, int]:
    """Merge each region smaller than `min_voxels` into the region it shares most faces with
    (stray voxels of a generated grid); drop it if it touches none. Returns the relabelled
    grid, the new count and the number dropped."""
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
    small = np.flatnonzero(sizes[1:] < min_voxels) + 1
    if small.size == 0:
        return labels, count, 0
    target = np.arange(count + 1)
    is_small = np.zeros(count + 1, dtype=bool)
    is_small[small] = True
    pairs = []
    for axis in range(3):
        for step in (1, -1):
            neighbour = np.roll(labels, step, axis=axis)
            touch = is_small[labels] & (neighbour > 0) & ~is_small[neighbour]
            pairs.append(np.stack([labels[touch], neighbour[touch]], axis=1))
    pairs = np.concatenate(pairs)
    dropped = 0
    for region in small:
        contacts = pairs[pairs[:, 0] == region, 1]
        if contacts.size:
            target[region] = np.bincount(contacts).argmax()
        else:
            target[region] = 0
            dropped += 1
    merged = target[labels]
    used = np.unique(merged[merged > 0])
    lookup = np.zeros(count + 1, dtype=np.int32)
    lookup[used] = np.arange(1, used.size + 1, dtype=np.int32)
    return lookup[merged], int(used.size), dropped


def decode(
    species: np.ndarray,
    coords: np.ndarray,
    settings: VoxelSettings | None = None,
    probabilities: np.ndarray | None = None,
    regions: tuple[np.ndarray, int] | None = None,
) -> Decoded:
    """Species matrix (n,n,n of Z, 0 empty) + coordinate grid (n,n,n,3) -> crystal.

    `probabilities` (optional, (n,n,n), e.g. a generator's occupancy confidence) weights each
    voxel in the centroid and in the species vote; without it all occupied voxels count equally.
    `regions` (labels, count), when the caller has already segmented this `species` (and
    denoised it, if wanted), skips the clean-up and the segmentation here.
    """
    settings = settings or VoxelSettings()
    species = np.asarray(species)
    coords = np.asarray(coords)
    n = species.shape[0]
    if species.shape != (n, n, n) or coords.shape != (n, n, n, 3):
        raise ValueError(
            f"expected species (n,n,n) and coords (n,n,n,3), got {species.shape} and {coords.shape}"
        )
    species = np.rint(species).astype(np.int64)
    species[species < 0] = 0
    lattice = lattice_from_coords(coords)
    weights = (
        np.ones(species.shape) if probabilities is None else np.asarray(probabilities, np.float64)
    )
    if weights.shape != species.shape:
        raise ValueError(f"probabilities must have shape {species.shape}, got {weights.shape}")
    if regions is not None:
        labels, count = regions
        if labels.shape != species.shape:
            raise ValueError(f"regions must have shape {species.shape}, got {labels.shape}")
    else:
        if settings.denoise:
            species = denoise_species(species)
        labels, count = segment(species, settings)
    if count == 0:
        return Decoded(None, [], [], lattice, notes=["no occupied voxels"])
    labels, count, dropped = _absorb_small_regions(labels, count, settings.min_region_voxels)
    if count == 0:
        return Decoded(None, [], [], lattice, dropped, ["only noise-sized regions"])
    frac, sizes = _periodic_centroids(labels, count, np.maximum(weights, 1e-12))
    z, purity = _majority(labels, species, weights, count)
    sites = [DecodedSite(int(z[i]), frac[i], int(sizes[i]), float(purity[i])) for i in range(count)]
    if not sites:
        return Decoded(None, [], [], lattice, dropped_regions=dropped)
    notes = []
    if np.any(lattice <= 0):
        return Decoded(None, sites, [], lattice, dropped, ["non-positive cell length"])
    structure = Structure(
        Lattice.from_parameters(*(float(x) for x in lattice), 90.0, 90.0, 90.0),
        [site.z for site in sites],
        np.array([site.frac for site in sites]),
    )
    too_close: list[tuple[int, int, float]] = []
    if len(structure) > 1:
        dist = structure.distance_matrix
        i, j = np.nonzero(np.triu(dist < settings.min_distance, k=1))
        too_close = [(int(a), int(b), float(dist[a, b])) for a, b in zip(i, j, strict=True)]
    return Decoded(structure, sites, too_close, lattice, dropped, notes)


@dataclass
class RoundTripCase:
    """Ground-truth round trip of one structure: encode, decode the true species matrix."""

    id: str
    formula: str
    n_true: int
    n_pred: int
    emd: float
    lattice_mae: float
    exact: bool  # same composition and site count
    valid: bool
    error: str | None = None


@dataclass
class RoundTripReport:
    cases: list[RoundTripCase]
    encode_seconds: float  # first pass: includes guessing oxidation states per composition
    decode_seconds: float
    warm_encode_seconds: float = 0.0  # second pass over `warm_count` structures, radii cached
    warm_count: int = 0

    def summary(self, worst: int = 10) -> dict:
        ok = [c for c in self.cases if c.error is None]
        count = max(len(ok), 1)
        ranked = sorted(ok, key=lambda c: (c.exact, -c.emd))
        return {
            "structures": len(self.cases),
            "encoded": len(ok),
            "rejected": {c.id: c.error for c in self.cases if c.error is not None},
            "encode_structures_per_s": len(ok) / self.encode_seconds if self.encode_seconds else 0,
            "encode_warm_structures_per_s": (
                self.warm_count / self.warm_encode_seconds if self.warm_encode_seconds else 0
            ),
            "decode_structures_per_s": len(ok) / self.decode_seconds if self.decode_seconds else 0,
            "mean_emd_A": float(np.mean([c.emd for c in ok])) if ok else float("nan"),
            "max_emd_A": float(np.max([c.emd for c in ok])) if ok else float("nan"),
            "lattice_mae_A": float(np.mean([c.lattice_mae for c in ok])) if ok else float("nan"),
            "fraction_exact_composition_and_sites": sum(c.exact for c in ok) / count,
            "fraction_valid": sum(c.valid for c in ok) / count,
            "worst_cases": [c.__dict__ for c in ranked[:worst]],
        }


def roundtrip(
    structures: list[Structure],
    ids: list[str] | None = None,
    settings: VoxelSettings | None = None,
    progress=None,
    chunk: int = 256,
) -> RoundTripReport:
    """Encode each structure and decode its own species matrix; time both and score the result.

    Structures go in chunks: the chunk is encoded (timed, the encoder alone, as a dataset
    build sees it), then decoded (timed). The radius cache is emptied first, so the encode
    time includes guessing oxidation states for every new composition; a second, warm pass
    over up to 2000 structures is timed too. `progress` is called with the number done.
    """
    import time

    from generators.metrics import composition_match, emd, is_valid, lattice_mae
    from generators.voxel.encode import VoxelEncodingError, _composition_radii, encode

    settings = settings or VoxelSettings()
    ids = ids or [str(i) for i in range(len(structures))]
    cases: list[RoundTripCase] = []
    encode_s = decode_s = 0.0
    _composition_radii.cache_clear()
    for first in range(0, len(structures), chunk):
        part = list(zip(ids[first : first + chunk], structures[first : first + chunk], strict=True))
        grids: list = []
        start = time.perf_counter()
        for _, structure in part:
            try:
                grids.append(encode(structure, settings))
            except VoxelEncodingError as exc:
                grids.append(exc)
        encode_s += time.perf_counter() - start
        for (sid, structure), grid in zip(part, grids, strict=True):
            formula = structure.composition.reduced_formula
            if isinstance(grid, VoxelEncodingError):
                cases.append(
                    RoundTripCase(
                        sid, formula, len(structure), 0, np.nan, np.nan, False, False, str(grid)
                    )
                )
                continue
            start = time.perf_counter()
            decoded = decode(grid.species, grid.coords, settings)
            decode_s += time.perf_counter() - start
            pred = decoded.structure
            n_pred = 0 if pred is None else len(pred)
            cases.append(
                RoundTripCase(
                    id=sid,
                    formula=formula,
                    n_true=len(structure),
                    n_pred=n_pred,
                    emd=emd(pred, structure) if pred is not None else float("nan"),
                    lattice_mae=lattice_mae(decoded.lattice, structure),
                    exact=composition_match(pred, structure) and n_pred == len(structure),
                    valid=decoded.valid and is_valid(pred, settings.min_distance),
                )
            )
        if progress is not None:
            progress(len(cases))
    # encoding again once every composition's radii are cached (training epochs, rebuilt sets)
    encodable = [s for s, c in zip(structures, cases, strict=True) if c.error is None][:2000]
    start = time.perf_counter()
    for structure in encodable:
        encode(structure, settings)
    warm_s = time.perf_counter() - start
    return RoundTripReport(cases, encode_s, decode_s, warm_s, len(encodable))
