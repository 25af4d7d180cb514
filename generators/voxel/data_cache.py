"""Encoded training data, cached on disk by content hash.

Encoding thousands of crystals into voxel grids takes minutes, and the UNet, the VAE, the
latent prior and the decoding tuning all train on the same arrays; caching by a hash of the
source bytes plus the encoding-relevant voxel settings lets every stage (and every resumed run)
reuse one encoding, while a change that would alter the grids gets a fresh one. Decode-only
settings are left out of the hash so tuning the decoder does not invalidate the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from generators.splits import record_id
from generators.voxel.settings import VoxelSettings


@dataclass
class VoxelData:
    """Encoded training data held in memory (coordinate grids are rebuilt from `lattice`)."""

    density: np.ndarray  # (N, n, n, n) float32
    species: np.ndarray  # (N, n, n, n) int16 atomic numbers
    lattice: np.ndarray  # (N,) float32 cubic cell length
    values: np.ndarray  # (N,) float64 conditioning property (nan where missing)
    ids: list[str]
    data_hash: str
    source: str
    report: dict[str, Any] = field(default_factory=dict)
    voxel: dict[str, Any] = field(default_factory=dict)  # VoxelSettings used to encode

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> VoxelData:
        return VoxelData(
            self.density[index],
            self.species[index],
            self.lattice[index],
            self.values[index],
            [self.ids[i] for i in index],
            self.data_hash,
            self.source,
            self.report,
            self.voxel,
        )


# VoxelSettings fields that change the encoded arrays; decode-only fields do not invalidate data
ENCODING_FIELDS = (
    "n_grid",
    "max_atoms",
    "length_tolerance",
    "angle_tolerance",
    "density_width_scale",
    "min_radius",
    "label_radius_scale",
    "label_gap_voxels",
    "min_label_radius_voxels",
)


def encoding_settings(voxel: VoxelSettings) -> dict[str, Any]:
    dump = voxel.model_dump()
    return {k: dump[k] for k in ENCODING_FIELDS if k in dump}


def _hash_source(spec: str, voxel: VoxelSettings, property_key: str) -> str:
    h = hashlib.sha256()
    path = Path(spec)
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    else:
        h.update(spec.encode())
    h.update(json.dumps(encoding_settings(voxel), sort_keys=True).encode())
    h.update(property_key.encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    from generators.data import crystalloop_home

    return crystalloop_home() / "voxel-cache"


def load_voxel_data(
    sources: list[str] | str,
    property_key: str = "formation_energy_per_atom",
    voxel: VoxelSettings | None = None,
    cache_dir: Path | None = None,
    max_records: int | None = None,
    progress: bool = True,
) -> VoxelData:
    """Read data sources (CSV, 'matminer:NAME', CIF folder), keep cubic cells, encode, cache.

    Records without the conditioning property are kept for the UNet (it needs none) but get
    value nan; the VAE drops them.
    """
    from generators.data import load_source, select_cubic
    from generators.voxel.encode import encode_many

    voxel = voxel or VoxelSettings()
    specs = [sources] if isinstance(sources, str) else list(sources)
    digest = hashlib.sha256(
        "|".join(_hash_source(s, voxel, property_key) for s in specs).encode()
        + str(max_records).encode()
    ).hexdigest()[:16]
    cache_dir = Path(cache_dir or default_cache_dir())
    cache = cache_dir / f"voxel-{digest}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return VoxelData(
                z["density"],
                z["species"],
                z["lattice"],
                z["values"],
                list(z["ids"]),
                digest,
                meta["source"],
                meta["report"],
                voxel.model_dump(),
            )
    densities, species, lattices, values, ids = [], [], [], [], []
    report: dict[str, Any] = {}
    for spec in specs:
        records, read_report = load_source(spec)
        if max_records is not None:
            records = records[:max_records]
        cubic, cubic_report = select_cubic(records, max_atoms=voxel.max_atoms)
        batch = _encode_with_progress(encode_many, cubic, voxel, progress, spec)
        report[spec] = {
            "read": read_report.read,
            "parse_dropped": read_report.dropped,
            "cubic_dropped": cubic_report.dropped,
            "encode_dropped": len(batch.errors),
            "kept": len(batch),
        }
        densities.append(batch.density)
        species.append(batch.species)
        lattices.append(batch.lattice[:, 0])
        for i in batch.index:
            rec = cubic[int(i)]
            values.append(rec.properties.get(property_key, np.nan))
            ids.append(record_id(spec, rec))
    data = VoxelData(
        np.concatenate(densities),
        np.concatenate(species),
        np.concatenate(lattices).astype(np.float32),
        np.asarray(values, dtype=np.float64),
        ids,
        digest,
        "+".join(specs),
        report,
        voxel.model_dump(),
    )
    if len(data) == 0:
        raise ValueError(f"no encodable cubic structures in {specs}: {report}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        density=data.density,
        species=data.species,
        lattice=data.lattice,
        values=data.values,
        ids=np.asarray(data.ids),
        meta=json.dumps({"source": data.source, "report": report}),
    )
    os.replace(tmp, cache)
    return data


def _encode_with_progress(encode_many, records, voxel, progress: bool, label: str):
    """Encode in chunks so a progress bar can move; errors are skipped and counted."""
    from rich.progress import Progress

    from generators.voxel.encode import VoxelBatch

    chunk = 200
    parts = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"encoding {label}", total=len(records))
        for start in range(0, len(records), chunk):
            part = encode_many(
                [r.structure for r in records[start : start + chunk]],
                voxel,
                skip_errors=True,
                with_coords=False,
            )
            part.index = part.index + start
            part.errors = {k + start: v for k, v in part.errors.items()}
            parts.append(part)
            bar.advance(task, min(chunk, len(records) - start))
    n = voxel.n_grid
    if not parts:
        return VoxelBatch(
            np.zeros((0, n, n, n), np.float32),
            np.zeros((0, n, n, n), np.int16),
            np.zeros((0, n, n, n), bool),
            np.zeros((0, n, n, n, 3), np.float32),
            np.zeros((0, 3), np.float32),
            np.zeros(0, np.int64),
        )
    errors: dict[int, str] = {}
    for p in parts:
        errors.update(p.errors)
    return VoxelBatch(
        np.concatenate([p.density for p in parts]),
        np.concatenate([p.species for p in parts]),
        np.concatenate([p.mask for p in parts]),
        np.zeros((0, n, n, n, 3), np.float32),
        np.concatenate([p.lattice for p in parts]),
        np.concatenate([p.index for p in parts]),
        errors,
    )
