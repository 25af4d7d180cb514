"""Voxel datasets on disk (HDF5) and as a lazily reading torch Dataset.

HDF5 with one chunk per structure and gzip compression: a species matrix is mostly zeros and
compresses ~20x, the whole file stays small, and one item is read without touching the rest,
so DataLoader workers can share one file. Coordinates are not stored: they are a pure function
of the lattice lengths (`coordinate_grid`), rebuilt on read.

Layout: density (N,n,n,n) float32, species (N,n,n,n) uint8 (Z), lattice (N,3) float32,
ids (N,) str, properties/<key> (N,) float64 (NaN where unknown), attrs: settings JSON,
species_list (the Z values present), property_key, skipped (JSON id -> reason).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generators.data.records import Record
from generators.voxel.encode import VoxelEncodingError, coordinate_grid, encode_many
from generators.voxel.settings import VoxelSettings

_CHUNK = 64  # structures encoded per batch while building


def build_dataset(
    records: Sequence[Record],
    out_path: str | Path,
    settings: VoxelSettings | None = None,
    property_key: str | None = None,
    *,
    compression: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode `records` and write them to an HDF5 file; returns a summary dict.

    Every property found in the records is stored under properties/<key>; `property_key`
    names the one a conditional model trains on (must exist in at least one record).
    Records that cannot be encoded are skipped and listed, never crash the build; when none
    can be, ``ValueError`` names the reasons and no file is written (an empty dataset would
    only fail later, in training).
    """
    import h5py
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    settings = settings or VoxelSettings()
    n = settings.n_grid
    keys = sorted({k for r in records for k in r.properties})
    if property_key is not None and property_key not in keys:
        raise ValueError(f"property {property_key!r} is in no record; available: {keys}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_suffix(out_path.suffix + ".partial")
    skipped: dict[str, str] = {}
    species_present: set[int] = set()
    total = len(records)
    grid_opts = dict(
        chunks=(1, n, n, n), compression="gzip", compression_opts=compression, shuffle=True
    )
    with h5py.File(tmp_path, "w") as h5:
        density = h5.create_dataset(
            "density", (0, n, n, n), "f4", maxshape=(None, n, n, n), **grid_opts
        )
        species = h5.create_dataset(
            "species", (0, n, n, n), "u1", maxshape=(None, n, n, n), **grid_opts
        )
        lattice = h5.create_dataset("lattice", (0, 3), "f4", maxshape=(None, 3))
        ids = h5.create_dataset("ids", (0,), h5py.string_dtype(), maxshape=(None,))
        props = {
            k: h5.create_dataset(f"properties/{k}", (0,), "f8", maxshape=(None,)) for k in keys
        }
        columns = [
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"voxelising -> {out_path.name}", total=total)
            for start in range(0, total, _CHUNK):
                chunk = records[start : start + _CHUNK]
                batch = encode_many(
                    [r.structure for r in chunk], settings, skip_errors=True, with_coords=False
                )
                for position, reason in batch.errors.items():
                    skipped[chunk[position].source_id] = reason
                kept = [chunk[i] for i in batch.index]
                if kept:
                    if int(batch.species.max()) > 255:
                        raise VoxelEncodingError("atomic numbers above 255 cannot be stored")
                    species_present.update(int(z) for z in np.unique(batch.species) if z > 0)
                    rows = slice(density.shape[0], density.shape[0] + len(kept))
                    for ds in (density, species, lattice, ids, *props.values()):
                        ds.resize(rows.stop, axis=0)
                    density[rows] = batch.density
                    species[rows] = batch.species.astype(np.uint8)
                    lattice[rows] = batch.lattice
                    ids[rows] = [r.source_id for r in kept]
                    for k, ds in props.items():
                        ds[rows] = [r.properties.get(k, np.nan) for r in kept]
                bar.advance(task, len(chunk))
        h5.attrs["settings"] = settings.model_dump_json()
        h5.attrs["species_list"] = np.array(sorted(species_present), dtype=np.int64)
        h5.attrs["property_key"] = property_key or ""
        h5.attrs["skipped"] = json.dumps(skipped)
        written = int(density.shape[0])
    if written == 0:
        tmp_path.unlink()
        reasons = "; ".join(f"{sid}: {why}" for sid, why in list(skipped.items())[:3])
        raise ValueError(
            f"none of the {total} structure(s) could be encoded, {out_path} not written"
            + (f" ({reasons})" if reasons else "")
        )
    tmp_path.replace(out_path)
    return {
        "path": str(out_path),
        "written": written,
        "skipped": len(skipped),
        "skipped_reasons": skipped,
        "species_list": sorted(species_present),
        "properties": keys,
        "property_key": property_key,
    }


class VoxelDataset:
    """torch Dataset over a file written by `build_dataset`, read lazily item by item.

    Each item is a dict of tensors: density (n,n,n) float32, species (n,n,n) int64 (Z),
    mask (n,n,n) bool, coords (n,n,n,3) float32, lattice (3,) float32, property () float32
    (NaN if unknown or no property_key), index () int64; with `rotate=True` a random cube
    rotation (of 24) is applied consistently to all of them. `transform`, if given, is called
    on the dict last. The file is opened on first access in each process (DataLoader-safe).
    """

    def __init__(
        self,
        path: str | Path,
        property_key: str | None = None,
        rotate: bool = False,
        seed: int | None = None,
        indices: Iterable[int] | None = None,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        import h5py

        self.path = Path(path)
        with h5py.File(self.path, "r") as h5:
            self._length = int(h5["species"].shape[0])
            self.settings = VoxelSettings.model_validate_json(h5.attrs["settings"])
            self.species_list = [int(z) for z in h5.attrs["species_list"]]
            stored_key = str(h5.attrs.get("property_key", "")) or None
            self.property_names = sorted(h5["properties"].keys()) if "properties" in h5 else []
            self.ids = [x.decode() if isinstance(x, bytes) else str(x) for x in h5["ids"][:]]
        self.property_key = property_key or stored_key
        if self.property_key is not None and self.property_key not in self.property_names:
            raise ValueError(f"{self.path} has no property {self.property_key!r}")
        self.indices = np.arange(self._length) if indices is None else np.asarray(list(indices))
        self.rotate = rotate
        self.transform = transform
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._h5 = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def property_values(self) -> np.ndarray:
        """All values of the property (for normalisation / decile conditioning)."""
        import h5py

        if self.property_key is None:
            return np.full(len(self), np.nan)
        with h5py.File(self.path, "r") as h5:
            return h5[f"properties/{self.property_key}"][:][self.indices]

    def __getitem__(self, item: int) -> dict:
        import h5py
        import torch

        from generators.voxel.rotations import random_rotation, rotate_array, rotate_lattice

        if self._h5 is None:  # first access in this process (DataLoader workers fork)
            self._h5 = h5py.File(self.path, "r")
            worker = torch.utils.data.get_worker_info()
            if worker is not None:  # distinct, reproducible rotations per worker
                seed = None if self._seed is None else self._seed + worker.id
                self._rng = np.random.default_rng(seed)
        row = int(self.indices[item])
        density = self._h5["density"][row]
        species = self._h5["species"][row].astype(np.int64)
        lattice = self._h5["lattice"][row]
        prop = (
            float(self._h5[f"properties/{self.property_key}"][row])
            if self.property_key
            else float("nan")
        )
        if self.rotate:
            rotation = random_rotation(self._rng)
            density = rotate_array(density, rotation)
            species = rotate_array(species, rotation)
            lattice = rotate_lattice(lattice, rotation).astype(np.float32)
        sample = {
            "density": torch.from_numpy(np.ascontiguousarray(density)),
            "species": torch.from_numpy(np.ascontiguousarray(species)),
            "mask": torch.from_numpy(np.ascontiguousarray(species > 0)),
            "coords": torch.from_numpy(coordinate_grid(lattice, species.shape[0])),
            "lattice": torch.from_numpy(np.asarray(lattice, dtype=np.float32)),
            "property": torch.tensor(prop, dtype=torch.float32),
            "index": torch.tensor(row, dtype=torch.int64),
        }
        return self.transform(sample) if self.transform else sample

    def __getstate__(self) -> dict:  # an open h5py handle cannot cross process boundaries
        state = self.__dict__.copy()
        state["_h5"] = None
        return state
