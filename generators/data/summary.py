"""What is in a data set: crystal systems, elements and property coverage."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generators.data.records import Record


def summarise(records: list[Record], symprec: float = 0.1) -> dict[str, Any]:
    systems: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    coverage: Counter[str] = Counter()
    sizes: list[int] = []
    for record in records:
        try:
            systems[SpacegroupAnalyzer(record.structure, symprec=symprec).get_crystal_system()] += 1
        except Exception:  # noqa: BLE001
            systems["unknown"] += 1
        elements.update({el.symbol for el in record.structure.composition})
        coverage.update(record.properties.keys())
        sizes.append(len(record.structure))
    return {
        "n_records": len(records),
        "crystal_systems": dict(systems.most_common()),
        "n_elements": len(elements),
        "elements": dict(elements.most_common()),
        "property_coverage": {k: v for k, v in coverage.most_common()},
        "sites": {"min": min(sizes, default=0), "max": max(sizes, default=0)},
    }
