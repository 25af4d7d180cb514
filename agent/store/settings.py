"""The store component's one settings object (env prefix CRYSTALLOOP_STORE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from crystalloop.home import crystalloop_home


class StoreSettings(BaseSettings):
    """Where the store lives and how hard it tries when the store is unreachable."""

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_STORE_", populate_by_name=True)

    uri: str | None = Field(
        None,
        validation_alias=AliasChoices("CRYSTALLOOP_STORE_URI", "CRYSTALLOOP_MONGO_URI"),
        description="mongodb:// URI; unset means the embedded store under path",
    )
    database: str = Field("crystalloop", description="database name (both backends)")
    path: Path = Field(
        default_factory=lambda: crystalloop_home() / "store",
        description="directory of the embedded store (SQLite file + model weights)",
    )
    retry_seconds: float = Field(
        600.0, description="how long an operation keeps retrying while the store is unreachable"
    )
    busy_timeout: float = Field(
        5.0, description="embedded: seconds SQLite waits on a lock before an attempt fails"
    )
    server_selection_timeout_ms: int = Field(
        5000, description="MongoDB: how long one attempt looks for a server"
    )
