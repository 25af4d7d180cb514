"""Replay benchmark of the acquisition policies; same as `crystalloop policies benchmark`.

nice python benchmarks/replay.py --out benchmarks/results   (writes replay.json + replay.png)
"""

from __future__ import annotations

import sys

from typer.main import get_group

from policies.cli import policies_app

if __name__ == "__main__":
    # get_group: with a single command, get_command would collapse the app into it
    get_group(policies_app)(["benchmark", *sys.argv[1:]], prog_name="benchmarks/replay.py")
