"""Real crystal data as pymatgen Structures with their DFT properties."""

from generators.data.fetch import fetch_matminer
from generators.data.readers import (
    MATMINER_FILES,
    load_source,
    read_cif_folder,
    read_matminer,
    read_table,
)
from generators.data.records import ReadReport, Record
from generators.data.select import has_cubic_metric, select_cubic
from generators.data.settings import DataSettings, crystalloop_home
from generators.data.summary import summarise

__all__ = [
    "MATMINER_FILES",
    "DataSettings",
    "ReadReport",
    "Record",
    "crystalloop_home",
    "fetch_matminer",
    "has_cubic_metric",
    "load_source",
    "read_cif_folder",
    "read_matminer",
    "read_table",
    "select_cubic",
    "summarise",
]
