"""Fetch the Materials Project subsets that ship inside matminer 0.4.0's source distribution.

Only PyPI is reachable from the machines this runs on, so the data comes through pip itself;
matminer is never imported or installed, only three CSVs are taken from its sdist.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from generators.data.readers import MATMINER_FILES
from generators.data.settings import DataSettings


def fetch_matminer(settings: DataSettings | None = None, force: bool = False) -> Path:
    """Download matminer's sdist with pip and extract the CSVs, gzipped, into the cache.

    Idempotent: returns at once when every file is already there.
    """
    settings = settings or DataSettings()
    dest = settings.cache_dir / f"matminer_{settings.matminer_version}"
    targets = {name: dest / f"{name}.csv.gz" for name in MATMINER_FILES}
    if not force and all(p.is_file() for p in targets.values()):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary=:all:", f"matminer=={settings.matminer_version}", "-d", tmp,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("matminer-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise RuntimeError(f"pip download of matminer failed:\n{done.stderr.strip()[-2000:]}")
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if (
                    name.parent.name == "datasets"
                    and name.stem in targets
                    and name.suffix == ".csv"
                ):
                    source = tar.extractfile(member)
                    assert source is not None
                    partial = targets[name.stem].with_suffix(".part")
                    with gzip.open(partial, "wb") as out:
                        shutil.copyfileobj(source, out)
                    partial.replace(targets[name.stem])  # atomic: no half-written data set
    missing = [n for n, p in targets.items() if not p.is_file()]
    if missing:
        raise RuntimeError(f"matminer sdist did not contain: {', '.join(missing)}")
    return dest
