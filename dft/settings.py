"""One settings object for everything DFT: read from env (CRYSTALLOOP_DFT_*) so a daemon, a test and
a FireWorks worker on another machine all agree without passing config files around.

An unknown key - a keyword argument, a campaign's settings override, or a CRYSTALLOOP_DFT_*
variable - is an error: a misspelt `ecutwfc` that silently falls back to the default changes
every energy of a campaign without a trace."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crystalloop.home import crystalloop_home

PseudoFamily = Literal["pseudodojo-pbe-standard", "sg15"]


class DFTSettings(BaseSettings):
    """Quantum ESPRESSO settings. Defaults follow measured needs on PseudoDojo (see notes)."""

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_DFT_", extra="forbid")

    pseudo_family: PseudoFamily = "pseudodojo-pbe-standard"
    pseudo_dir: Path | None = Field(
        None, description="Any directory of UPF files (e.g. SSSP); overrides pseudo_family."
    )
    pw_command: str = Field("pw.x", description="pw.x executable (name on PATH or absolute).")
    launcher: str = Field(
        "", description="Prefix such as 'mpirun -np 2' ; empty = serial (best on small machines)."
    )
    npool: int = Field(0, ge=0, description="pw.x -nk; 0 = not passed.")
    ecutwfc: float | None = Field(
        None, gt=5, le=400, description="Fixed ecutwfc (Ry); None = from pseudo hints."
    )
    ecut_hint_level: Literal["low", "normal", "high"] = "normal"
    ecut_factor: float = Field(
        2.0, gt=0, le=4, description="ecutwfc[Ry] = factor * max(hint[Ha]); 2 = Ha -> Ry."
    )
    default_ecutwfc: float = Field(
        90.0, gt=5, le=400, description="Ry, used for elements without a cutoff hint."
    )
    ecutrho_factor: float = Field(4.0, ge=4, le=16, description="ecutrho = factor * ecutwfc.")
    kpoint_density: float = Field(
        1000.0, gt=0, description="k-points per reciprocal atom (pymatgen automatic_density)."
    )
    smearing: Literal["mv", "gaussian", "fd", "mp"] = "mv"
    degauss: float = Field(0.01, gt=0, le=0.2, description="Ry")
    pressure_tolerance_kbar: float = Field(
        10.0, gt=0, description="|P| above this after vc-relax flags an unconverged basis."
    )
    walltime_s: float = Field(7200.0, gt=0, description="Hard wall-time limit per pw.x run.")
    max_retries: int = Field(3, ge=0, le=10, description="Corrective retries after a failure.")
    concurrency: int = Field(2, ge=1, le=256, description="Local backend worker processes.")
    scratch_dir: Path | None = Field(None, description="Run directories; default HOME/dft/runs.")
    keep_outdir: bool = Field(False, description="Keep <prefix>.save (20-30 MB per job).")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        prefix = cls.model_config["env_prefix"]
        known = set(cls.model_fields)
        given = [str(k) for k in data] if isinstance(data, dict) else []
        from_env = [k[len(prefix) :].lower() for k in os.environ if k.upper().startswith(prefix)]
        unknown = sorted({k for k in given + from_env if k.lower() not in known})
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key.lower(), sorted(known), n=1)
                where = f" ({prefix}{key.upper()})" if key in from_env else ""
                hints.append(
                    f"{key!r}{where}" + (f" (did you mean {close[0]!r}?)" if close else "")
                )
            raise ValueError(
                f"unknown DFT setting(s) {', '.join(hints)}; known: {', '.join(sorted(known))}"
            )
        return data

    @field_validator("launcher")
    @classmethod
    def _launcher_safe(cls, v: str) -> str:
        bad = set(";|&$`<>\n")
        if any(c in bad for c in v):
            raise ValueError("launcher must be a plain command prefix (no shell metacharacters)")
        return v

    @property
    def home(self) -> Path:
        return crystalloop_home()

    @property
    def runs_dir(self) -> Path:
        return self.scratch_dir or self.home / "dft" / "runs"

    def resolved_pseudo_dir(self) -> Path:
        if self.pseudo_dir is not None:
            return Path(self.pseudo_dir).expanduser()
        return self.home / "pseudos" / self.pseudo_family
