"""Readers that turn real DFT data sets into `Record`s.

Every reader parses row by row: a bad row is reported with its id and skipped, never fatal,
so one corrupt CIF cannot cost a user a whole data set.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from pymatgen.io.vasp import Poscar

from generators.data.records import ReadReport, Record
from generators.data.settings import DataSettings

MATMINER_FILES = ("flla_2015", "elastic_tensor", "dielectric_constant")
ACCEPTED = (
    "a CSV(.gz) with a 'cif' column (perov_5 style), a .cif file, a folder of .cif files "
    "(+ properties.csv), or matminer:" + "|".join(MATMINER_FILES)
)


class NoStructures(ValueError):
    """A source was read but yielded no structure: nothing downstream could use it."""


def _from_cif(text: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def _from_dict_repr(text: str) -> Structure:
    return Structure.from_dict(ast.literal_eval(text))


def _from_poscar(text: str) -> Structure:
    return Poscar.from_str(text).structure


def _mean_diagonal(text: str) -> float:
    return float(np.trace(np.asarray(ast.literal_eval(text), dtype=float)) / 3.0)


def _finite(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _rows_to_records(
    frame: pd.DataFrame,
    *,
    source: str,
    id_column: str,
    parse: Callable[[str], Structure],
    structure_column: str,
    properties: Callable[[pd.Series], dict[str, float | None]],
    report: ReadReport,
) -> list[Record]:
    records: list[Record] = []
    for position, row in enumerate(frame.itertuples(index=False)):
        series = pd.Series(row._asdict())
        source_id = str(series.get(id_column, position))
        report.read += 1
        try:
            structure = parse(series[structure_column])
        except Exception as exc:  # noqa: BLE001 - any parser failure is a bad row, not a crash
            report.drop(
                "unparseable",
                f"{source}: row {position} (id {source_id}): cannot parse structure: "
                f"{type(exc).__name__}: {str(exc)[:120]}",
            )
            continue
        props = {k: v for k, v in properties(series).items() if v is not None}
        records.append(Record(structure, props, source_id, source))
        report.kept += 1
    return records


def read_table(
    path: str | Path,
    structure_column: str = "cif",
    id_column: str = "material_id",
    property_map: dict[str, str] | None = None,
) -> tuple[list[Record], ReadReport]:
    """Read a perov_5-style CSV: a CIF column plus numeric property columns.

    Numeric columns are kept under their own names; the perov_5 columns are also mapped to the
    project's canonical keys (heat_ref -> formation_energy_per_atom, min gap -> band_gap).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        frame = pd.read_csv(path, comment=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV table; data sources are {ACCEPTED}") from exc
    frame = frame.loc[:, [c for c in frame.columns if not c.startswith("Unnamed")]]
    if structure_column not in frame.columns:
        raise ValueError(
            f"{path}: no '{structure_column}' column (columns: {', '.join(frame.columns)}); "
            f"data sources are {ACCEPTED}"
        )
    mapping = {"heat_ref": "formation_energy_per_atom"} | (property_map or {})
    numeric = [
        c
        for c in frame.columns
        if c not in (structure_column, id_column) and pd.api.types.is_numeric_dtype(frame[c])
    ]

    def properties(row: pd.Series) -> dict[str, float | None]:
        props = {mapping.get(c, c): _finite(row[c]) for c in numeric}
        gaps = [
            g for g in (_finite(row.get("dir_gap")), _finite(row.get("ind_gap"))) if g is not None
        ]
        if gaps and "band_gap" not in props:
            props["band_gap"] = min(gaps)
        return props

    report = ReadReport()
    records = _rows_to_records(
        frame,
        source=path.name,
        id_column=id_column,
        parse=_from_cif,
        structure_column=structure_column,
        properties=properties,
        report=report,
    )
    return records, report


def _matminer_spec(name: str) -> tuple[str, Callable[[str], Structure], Callable]:
    if name == "flla_2015":
        return (
            "structure",
            _from_dict_repr,
            lambda r: {
                "formation_energy_per_atom": _finite(r["formation_energy_per_atom"]),
                "e_above_hull": _finite(r["e_above_hull"]),
            },
        )
    if name == "elastic_tensor":
        return (
            "poscar",
            _from_poscar,
            lambda r: {
                "bulk_modulus": _finite(r["K_VRH"]),
                "shear_modulus": _finite(r["G_VRH"]),
                "poisson_ratio": _finite(r["poisson_ratio"]),
            },
        )
    if name == "dielectric_constant":
        return (
            "poscar",
            _from_poscar,
            lambda r: {
                "band_gap": _finite(r["band_gap"]),
                "refractive_index": _finite(r["n"]),
                "dielectric_constant": _finite(r["poly_total"]),
                "dielectric_electronic": _finite(r["poly_electronic"]),
            },
        )
    raise ValueError(
        f"unknown matminer data set '{name}' (choose from {', '.join(MATMINER_FILES)})"
    )


def matminer_path(name: str, directory: str | Path | None = None) -> Path:
    """The CSV (or CSV.gz) of a matminer data set in `directory` (default: the fetch cache)."""
    folder = Path(directory) if directory else DataSettings().cache_dir / "matminer_0.4.0"
    for candidate in (folder / f"{name}.csv.gz", folder / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"matminer data set '{name}' not found in {folder}; run `crystalloop data fetch` first"
    )


def read_matminer(
    name: str, directory: str | Path | None = None
) -> tuple[list[Record], ReadReport]:
    """Read one of the Materials Project subsets shipped in matminer 0.4.0's sdist."""
    column, parse, properties = _matminer_spec(name)
    path = matminer_path(name, directory)
    frame = pd.read_csv(path, comment="#")
    report = ReadReport()
    records = _rows_to_records(
        frame,
        source=f"matminer:{name}",
        id_column="material_id",
        parse=parse,
        structure_column=column,
        properties=properties,
        report=report,
    )
    return records, report


def read_cif_folder(
    folder: str | Path, properties_csv: str | Path | None = None, key_column: str = "file"
) -> tuple[list[Record], ReadReport]:
    """Read every *.cif in a folder; properties come from a CSV keyed by file name (stem or name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    table: dict[str, dict[str, float]] = {}
    if properties_csv is not None:
        frame = pd.read_csv(properties_csv)
        if key_column not in frame.columns:
            raise ValueError(f"{properties_csv}: no '{key_column}' column to key CIF files by")
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        for _, row in frame.iterrows():
            props = {c: v for c in numeric if (v := _finite(row[c])) is not None}
            table[Path(str(row[key_column])).stem] = props
    report = ReadReport()
    records = []
    for path in sorted(folder.glob("*.cif")):
        report.read += 1
        try:
            structure = _from_cif(path.read_text())
        except Exception as exc:  # noqa: BLE001
            report.drop("unparseable", f"{path.name}: cannot parse CIF: {str(exc)[:120]}")
            continue
        records.append(Record(structure, table.get(path.stem, {}), path.stem, str(folder)))
        report.kept += 1
    if properties_csv is not None:
        missing = report.kept - sum(1 for r in records if r.source_id in table)
        if missing:
            report.messages.append(f"{missing} CIF files have no row in {properties_csv}")
    return records, report


def read_cif_file(path: str | Path) -> tuple[list[Record], ReadReport]:
    """One CIF file as a source: its first structure, id = the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such CIF file: {path}")
    report = ReadReport(read=1)
    try:
        structure = _from_cif(path.read_text(errors="replace"))
    except Exception as exc:  # noqa: BLE001
        report.drop("unparseable", f"{path.name}: cannot parse CIF: {str(exc)[:120]}")
        return [], report
    report.kept = 1
    return [Record(structure, {}, path.stem, str(path))], report


def load_source(spec: str | Path) -> tuple[list[Record], ReadReport]:
    """One entry point for the CLI: 'matminer:NAME', a CSV(.gz) file, a CIF file or a folder
    of CIFs."""
    text = str(spec)
    if text.startswith("matminer:"):
        return read_matminer(text.split(":", 1)[1])
    path = Path(text)
    if path.is_dir():
        props = path / "properties.csv"
        return read_cif_folder(path, props if props.is_file() else None)
    if path.suffix.lower() == ".cif":
        return read_cif_file(path)
    if path.name in {f"{n}.csv.gz" for n in MATMINER_FILES} | {f"{n}.csv" for n in MATMINER_FILES}:
        name = path.name.split(".")[0]
        return read_matminer(name, path.parent)
    return read_table(path)


def load_structures(spec: str | Path) -> tuple[list[Record], ReadReport]:
    """``load_source`` for commands that need at least one structure: ``NoStructures``
    (saying what was found instead) when the source yields none."""
    records, report = load_source(spec)
    if records:
        return records, report
    path = Path(str(spec))
    if report.read == 0:
        what = "no .cif files" if path.is_dir() else "no rows"
        raise NoStructures(f"{spec}: {what}; data sources are {ACCEPTED}")
    first = f" (first: {report.messages[0]})" if report.messages else ""
    raise NoStructures(f"{spec}: none of the {report.read} structure(s) could be read{first}")


def iter_structures(records: Iterable[Record]) -> Iterable[Structure]:
    return (r.structure for r in records)
