"""The root directory of every component's data: one rule, so a test or a worker moves all."""

from __future__ import annotations

import os
from pathlib import Path


def crystalloop_home() -> Path:
    """CRYSTALLOOP_HOME, or ~/.crystalloop: data, models, DFT runs and the embedded store."""
    return Path(os.environ.get("CRYSTALLOOP_HOME", Path.home() / ".crystalloop")).expanduser()
