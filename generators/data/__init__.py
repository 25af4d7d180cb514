"""Real crystal data as pymatgen Structures with their DFT properties."""

from generators.data.fetch import fetch_matminer
from generators.data.readers import (
    ACCEPTED,
    MATMINER_FILES,
    NoStructures,
    load_source,
    load_structures,
    read_cif_file,
    read_cif_folder,
    read_matminer,
    read_table,
)
from generators.data.records import ReadReport, Record
from generators.data.select import has_cubic_metric, select_cubic
from generators.data.settings import DataSettings, crystalloop_home
from generators.data.summary import summarise

__all__ = [
    "ACCEPTED",
    "MATMINER_FILES",
    "DataSettings",
    "NoStructures",
    "ReadReport",
    "Record",
    "crystalloop_home",
    "fetch_matminer",
    "has_cubic_metric",
    "load_source",
    "load_structures",
    "read_cif_file",
    "read_cif_folder",
    "read_matminer",
    "read_table",
    "select_cubic",
    "summarise",
]
