"""Training crystals of the fingerprint generator: fingerprints, slot compositions, deciles.

Why the condition is a per-source decile: perov_5's `heat_ref` (GPAW RPBE against Castelli's
elemental references) and the Materials Project's formation energy (PBE with MP's fitted
corrections) are different scales; one set of edges over both would mix them. Each crystal's
decile is its rank within its own source's training distribution, and every checkpoint keeps
the edges per source with the scale's name, so a decile can always be read back in eV/atom
on a named scale.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from generators.fingerprint.descriptor import (
    FingerprintError,
    batch_structures,
    fingerprint_structures,
)
from generators.fingerprint.settings import FingerprintSettings
from generators.splits import (
    assign_deciles,
    decile_edges,
    record_id,
    scale_of,
    split_indices,
)


@dataclass
class FingerprintData:
    """Arrays of the training crystals, row-aligned."""

    fingerprints: np.ndarray  # (M, D) float32
    counts: np.ndarray  # (M, K) int sites per slot
    elements: list[list[str]]  # per crystal, elements in slot order
    lengths: np.ndarray  # (M,) cubic cell length
    frac: np.ndarray  # (M, max_sites, 3) fractional coordinates in slot order, zero padded
    values: np.ndarray  # (M,) formation energy on the source's scale (nan if absent)
    source: np.ndarray  # (M,) index into `sources`
    ids: list[str]
    sources: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows) -> FingerprintData:
        rows = list(rows)
        return FingerprintData(
            self.fingerprints[rows],
            self.counts[rows],
            [self.elements[i] for i in rows],
            self.lengths[rows],
            self.frac[rows],
            self.values[rows],
            self.source[rows],
            [self.ids[i] for i in rows],
            self.sources,
            self.report,
        )

    def formula(self, row: int) -> str:
        """Reduced formula of a crystal, from its slot elements and counts."""
        from pymatgen.core import Composition

        counts = (int(c) for c in self.counts[row] if c)
        return Composition(dict(zip(self.elements[row], counts, strict=True))).reduced_formula


def _digest(specs: list[str], settings: FingerprintSettings, max_sites: int) -> str:
    h = hashlib.sha256()
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            h.update(path.read_bytes())
        elif path.is_dir():  # a CIF folder (e.g. a campaign's results) changes as it grows
            for member in sorted(p for p in path.iterdir() if p.is_file()):
                h.update(member.name.encode() + member.read_bytes())
        else:
            h.update(spec.encode())
    h.update(settings.model_dump_json().encode())
    h.update(str(max_sites).encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    from crystalloop.home import crystalloop_home

    return crystalloop_home() / "fingerprint-cache"


def load_fingerprint_data(
    sources: list[str],
    settings: FingerprintSettings | None = None,
    max_sites: int = 10,
    property_key: str = "formation_energy_per_atom",
    cache_dir: Path | None = None,
) -> FingerprintData:
    """Read sources, keep cubic cells of <= max_sites sites and <= n_slots elements, and
    fingerprint them once (cached by content hash of sources and settings)."""
    from generators.data import load_source, select_cubic

    settings = settings or FingerprintSettings()
    if not sources:
        raise ValueError("give at least one data source")
    cache = (
        Path(cache_dir or default_cache_dir()) / f"fp-{_digest(sources, settings, max_sites)}.npz"
    )
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return FingerprintData(
                z["fingerprints"],
                z["counts"],
                meta["elements"],
                z["lengths"],
                z["frac"],
                z["values"],
                z["source"],
                meta["ids"],
                meta["sources"],
                meta["report"],
            )
    fps, counts, elements, lengths, values, source, ids = [], [], [], [], [], [], []
    frac = []
    report: dict[str, Any] = {}
    for index, spec in enumerate(sources):
        records, read_report = load_source(spec)
        cubic, cubic_report = select_cubic(records, max_atoms=max_sites)
        kept, dropped = [], {}
        for rec in cubic:
            try:
                batch = batch_structures([rec.structure], settings)
            except FingerprintError as exc:
                reason = str(exc).split(":")[-1].strip()[:60]
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            kept.append(rec)
            elements.append(batch.elements[0])
            slot_counts = np.zeros(settings.n_slots, dtype=np.int64)
            for s in batch.slots[0].tolist():
                if s >= 0:
                    slot_counts[s] += 1
            counts.append(slot_counts)
            lengths.append(float(batch.length[0]))
            order = np.argsort(batch.slots[0].numpy(), kind="stable")
            padded = np.zeros((max_sites, 3))
            padded[: len(order)] = batch.frac[0].numpy()[order]
            frac.append(padded)
            values.append(rec.properties.get(property_key, np.nan))
            source.append(index)
            ids.append(record_id(spec, rec))
        fps.append(fingerprint_structures([r.structure for r in kept], settings))
        report[spec] = {
            "read": read_report.read,
            "cubic_dropped": cubic_report.dropped,
            "fingerprint_dropped": dropped,
            "kept": len(kept),
            "scale": scale_of(spec),
        }
    data = FingerprintData(
        np.concatenate(fps),
        np.stack(counts) if counts else np.zeros((0, settings.n_slots), np.int64),
        elements,
        np.asarray(lengths, dtype=np.float64),
        np.asarray(frac, dtype=np.float64).reshape(-1, max_sites, 3),
        np.asarray(values, dtype=np.float64),
        np.asarray(source, dtype=np.int64),
        ids,
        list(sources),
        report,
    )
    if len(data) == 0:
        raise ValueError(f"no usable cubic crystals in {sources}: {report}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    meta = {"elements": elements, "ids": ids, "sources": list(sources), "report": report}
    np.savez(
        tmp,
        fingerprints=data.fingerprints,
        counts=data.counts,
        lengths=data.lengths,
        frac=data.frac,
        values=data.values,
        source=data.source,
        meta=json.dumps(meta),
    )
    os.replace(tmp, cache)
    return data


def split(data: FingerprintData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation rows, split *per source* with `generators.splits.split_indices`, so a
    source holds out the same crystals as in any other model trained on it alone (the voxel
    model's 379 held-out perovskites are this split of perov_5)."""
    train, val = [], []
    for index in range(len(data.sources)):
        rows = np.flatnonzero(data.source == index)
        tr, va = split_indices([data.ids[i] for i in rows], val_fraction, seed)
        train.append(rows[tr])
        val.append(rows[va])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def source_deciles(
    data: FingerprintData, train: np.ndarray, n_deciles: int
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Each crystal's decile within its own source (edges from the training rows only);
    crystals without a value get -1 and train unconditioned-free (they are dropped)."""
    deciles = np.full(len(data), -1, dtype=np.int64)
    edges: dict[str, list[float]] = {}
    for index, spec in enumerate(data.sources):
        rows = np.flatnonzero(data.source == index)
        train_rows = np.intersect1d(rows, train)
        values = data.values[train_rows]
        if np.isfinite(values).sum() < n_deciles:
            continue
        e = decile_edges(values, n_deciles)
        edges[spec] = [float(x) for x in e]
        finite = rows[np.isfinite(data.values[rows])]
        deciles[finite] = assign_deciles(data.values[finite], e)
    return deciles, edges
