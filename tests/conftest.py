"""Shared fixtures: the real data in ../shared/data and a scratch crystalloop home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CRYSTALLOOP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real DFT data sets shipped beside the checkout (see ../shared/data/README.md)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set CRYSTALLOOP_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def perov_csv(shared_data: Path) -> Path:
    return shared_data / "perov_5" / "val.csv.gz"


@pytest.fixture(scope="session")
def small_csv(perov_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30 real perovskites as their own CSV: enough for tiny training runs."""
    import pandas as pd

    path = tmp_path_factory.mktemp("perov") / "perov_small.csv"
    pd.read_csv(perov_csv, nrows=30).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def matminer_dir(shared_data: Path) -> Path:
    return shared_data / "matminer_0.4.0"


@pytest.fixture()
def crystalloop_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty CRYSTALLOOP_HOME so tests never touch the user's data directory."""
    home = tmp_path / "crystalloop-home"
    home.mkdir()
    monkeypatch.setenv("CRYSTALLOOP_HOME", str(home))
    return home
