"""What a running pw.x is doing, read from its stdout while it runs.

A relaxation can run for tens of minutes between the lines the daemon logs, and pw.x's
stdout is the only running account of it. The follower reads only the bytes appended since
its last look (a pw.x output grows by a few hundred bytes per SCF iteration), never locks or
rewrites the file, so watching a job costs the job nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from ase.units import Bohr, Ry

_ITERATION = re.compile(r"^\s*iteration #\s*(\d+)")
_ENERGY = re.compile(r"^(!?)\s*total energy\s+=\s+(-?\d+\.\d+)\s+Ry")
_ACCURACY = re.compile(r"^\s*estimated scf accuracy\s+<\s+([-+0-9.Ee]+)\s+Ry")
_FORCE = re.compile(r"^\s*Total force =\s+([-+0-9.Ee]+)")
_PRESSURE = re.compile(r"P=\s*(-?\d+\.\d+)")
_SCF_CYCLES = re.compile(r"^\s*number of scf cycles\s+=\s+(\d+)")
_NSTEP = re.compile(r"^\s*nstep\s+=\s+(\d+)")
_CALCULATION = re.compile(r"calculation\s*=\s*'([a-z-]+)'")


@dataclass(frozen=True)
class PwProgress:
    """The latest state of one pw.x run. Energies are in eV and forces in eV/A (pw.x prints
    Ry and Ry/bohr); ``ionic_step`` is the geometry now being converged, from 1."""

    calculation: str | None = None
    ionic_step: int = 1
    max_ionic_steps: int | None = None
    scf_iteration: int | None = None
    energy_ev: float | None = None
    energy_converged: bool = False  # the last energy is an SCF's converged one ("!" line)
    scf_accuracy_ry: float | None = None
    total_force_ev_a: float | None = None
    pressure_kbar: float | None = None
    final_scf: bool = False  # vc-relax: the geometry converged, the closing SCF runs
    scf_failed: bool = False
    finished: bool = False  # "JOB DONE" printed

    @property
    def relaxing(self) -> bool:
        return self.calculation in ("relax", "vc-relax")

    def step_text(self) -> str:
        """e.g. "ionic 3 · SCF 7", "final SCF 4", "SCF 12", "done"."""
        if self.finished:
            return "done"
        scf = f"SCF {self.scf_iteration}" if self.scf_iteration else "SCF starting"
        if self.scf_failed:
            scf = "SCF not converged"
        if self.final_scf:
            return f"final {scf}"
        if self.relaxing:
            return f"ionic {self.ionic_step} · {scf}"
        return scf


class PwOutputFollower:
    """Follows one pw.x stdout file (``attempt_N/pw.out``) as it grows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._partial = ""
        self._state = PwProgress(calculation=_calculation_of(self.path.with_name("pw.in")))

    def poll(self) -> PwProgress:
        """Read what was appended since the last poll; the progress so far."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return self._state
        if size < self._offset:  # truncated or replaced: start over
            self.__init__(self.path)  # type: ignore[misc]
        if size == self._offset:
            return self._state
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(size - self._offset)
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the rest
        state = self._state
        for line in lines:
            state = _advance(state, line)
        self._state = state
        return state


def read_progress(path: str | Path) -> PwProgress:
    """The progress recorded in a pw.x output file (read once, whole)."""
    return PwOutputFollower(path).poll()


def _calculation_of(pw_in: Path) -> str | None:
    try:
        match = _CALCULATION.search(pw_in.read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def _advance(state: PwProgress, line: str) -> PwProgress:
    """The state after one more line of pw.x output."""
    if m := _ITERATION.match(line):
        return replace(state, scf_iteration=int(m.group(1)))
    if m := _ENERGY.match(line):
        return replace(state, energy_ev=float(m.group(2)) * Ry, energy_converged=bool(m.group(1)))
    if m := _ACCURACY.match(line):
        return replace(state, scf_accuracy_ry=_float(m.group(1)))
    if m := _FORCE.match(line):
        return replace(state, total_force_ev_a=_float(m.group(1)) * Ry / Bohr)
    if "total   stress" in line and (m := _PRESSURE.search(line)):
        return replace(state, pressure_kbar=float(m.group(1)))
    if m := _SCF_CYCLES.match(line):
        # printed after each ionic step: the next geometry's SCF starts from iteration 1
        return replace(state, ionic_step=int(m.group(1)) + 1, scf_iteration=None)
    if m := _NSTEP.match(line):
        return replace(state, max_ionic_steps=int(m.group(1)))
    if "Final scf calculation at the relaxed structure" in line:
        return replace(state, final_scf=True, scf_iteration=None)
    if "convergence NOT achieved" in line:
        return replace(state, scf_failed=True)
    if "JOB DONE" in line:
        return replace(state, finished=True)
    return state


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
