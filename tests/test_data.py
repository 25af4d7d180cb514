"""Data readers on the real shared files, and the cubic selection."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from generators.data import (
    Record,
    load_source,
    read_cif_folder,
    read_matminer,
    read_table,
    select_cubic,
)


@pytest.fixture(scope="module")
def perov_records(perov_csv):
    records, report = read_table(perov_csv)
    return records, report


def test_perov_reader_reads_every_row(perov_records):
    records, report = perov_records
    assert report.read == len(records) == report.kept
    assert len(records) > 3700
    first = records[0]
    assert len(first.structure) == 5
    assert {"formation_energy_per_atom", "band_gap", "heat_all"} <= set(first.properties)
    assert first.source_id and first.source == "val.csv.gz"


def test_perov_cells_are_cubic_boxes(perov_records):
    records, _ = perov_records
    kept, report = select_cubic(records[:200])
    assert report.kept == len(kept) == 200
    for record in kept:
        a, b, c = record.structure.lattice.abc
        assert a == pytest.approx(b) == pytest.approx(c)


@pytest.mark.parametrize(
    ("name", "props"),
    [
        ("flla_2015", {"formation_energy_per_atom", "e_above_hull"}),
        ("elastic_tensor", {"bulk_modulus", "shear_modulus", "poisson_ratio"}),
        ("dielectric_constant", {"band_gap", "refractive_index", "dielectric_constant"}),
    ],
)
def test_matminer_readers(matminer_dir, name, props):
    records, report = read_matminer(name, matminer_dir)
    assert report.dropped == {} and len(records) > 1000
    assert props <= set(records[0].properties)
    assert records[0].source_id.startswith("mp-")


def test_select_cubic_makes_conventional_cells_and_reports_drops(matminer_dir):
    records, _ = read_matminer("dielectric_constant", matminer_dir)
    kept, report = select_cubic(records[:150], max_atoms=40)
    assert report.read == 150 and report.kept == len(kept) > 0
    assert sum(report.dropped.values()) == 150 - len(kept)
    assert any(reason.startswith("not cubic") for reason in report.dropped)
    for record in kept:
        assert len(record.structure) <= 40
        assert record.structure.lattice.angles == pytest.approx((90, 90, 90), abs=1e-3)
    # an fcc primitive cell (60 degree angles) comes back as its 8-atom conventional cube
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    prim = nacl.get_primitive_structure()
    (conv,), _ = select_cubic([Record(prim, {}, "nacl")])
    assert len(prim) == 2 and len(conv.structure) == 8


def test_select_cubic_drops_large_cells():
    import numpy as np

    # 64 atoms on a jittered grid: P1, but the box is a cube, so only the size rule can drop it
    grid = np.array([[i, j, k] for i in range(4) for j in range(4) for k in range(4)]) / 4
    jitter = np.random.default_rng(0).uniform(-0.02, 0.02, grid.shape)
    big = Structure(Lattice.cubic(10), ["Cu"] * 64, grid + jitter)
    kept, report = select_cubic([Record(big, {}, "big")], max_atoms=40)
    assert kept == [] and report.dropped == {"more than 40 atoms in the cubic cell": 1}


def test_unparseable_rows_are_counted_and_skipped(tmp_path: Path, perov_csv):
    lines = gzip.open(perov_csv, "rt").read()
    import pandas as pd

    frame = pd.read_csv(perov_csv).head(5)
    frame.loc[2, "cif"] = "data_broken\n_cell_length_a nonsense\n"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    records, report = read_table(bad)
    assert len(records) == 4 and report.dropped == {"unparseable": 1}
    assert "row 2" in report.messages[0] and str(frame.loc[2, "material_id"]) in report.messages[0]
    assert lines  # the real file was readable as text


def test_missing_structure_column_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'cif' column"):
        read_table(path)


def test_cif_folder_with_properties(tmp_path: Path, perov_records):
    records, _ = perov_records
    for record in records[:3]:
        record.structure.to(filename=str(tmp_path / f"{record.source_id}.cif"))
    (tmp_path / "broken.cif").write_text("not a cif")
    (tmp_path / "properties.csv").write_text(
        "file,formation_energy_per_atom\n"
        + "".join(
            f"{r.source_id}.cif,{r.properties['formation_energy_per_atom']}\n" for r in records[:2]
        )
    )
    got, report = load_source(tmp_path)
    assert len(got) == 3 and report.dropped == {"unparseable": 1}
    by_id = {r.source_id: r for r in got}
    assert by_id[records[0].source_id].properties["formation_energy_per_atom"] == pytest.approx(
        records[0].properties["formation_energy_per_atom"]
    )
    assert any("no row" in m for m in report.messages)
    with pytest.raises(FileNotFoundError):
        read_cif_folder(tmp_path / "nope")


def test_summary_counts_records_per_property(matminer_dir):
    from generators.data import summarise

    records, _ = read_matminer("elastic_tensor", matminer_dir)
    result = summarise(records[:50])
    assert result["n_records"] == 50
    assert result["property_coverage"]["bulk_modulus"] == 50
    assert sum(result["crystal_systems"].values()) == 50
