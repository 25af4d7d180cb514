"""Where crystalloop keeps downloaded data: one settings object for the data component."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from crystalloop.home import crystalloop_home


class DataSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_DATA_")

    cache_dir: Path = Field(
        default_factory=lambda: crystalloop_home() / "data",
        description="where fetched data sets are extracted",
    )
    matminer_version: str = "0.4.0"
