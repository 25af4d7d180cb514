"""Launch pw.x, classify how it ended, correct and retry. pw.x exits 2 (SCF) or 3 (ionic steps) and
still prints JOB DONE, so the exit code alone is never trusted; every attempt is kept.

A run counts as converged only when pw.x's XML record says so: a run whose XML is missing, or
says nothing about convergence, is a failure (`unverified`), never a success by default."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from enum import StrEnum
from pathlib import Path

from pymatgen.core import Structure

from dft.inputs import PWInput, validate_structure, write_input
from dft.parse import (
    Attempt,
    QETaskDocument,
    XMLInfo,
    parse_xml,
    qe_version_from_stdout,
    read_frames,
)
from dft.pseudos import family_of, md5sums, pseudopotentials_for
from dft.settings import DFTSettings

EV_A3_TO_KBAR = 1602.1766208
PREFIX = "pwscf"


class FailureKind(StrEnum):
    SCF_NOT_CONVERGED = "scf_not_converged"
    IONIC_NOT_CONVERGED = "ionic_not_converged"
    TIMEOUT = "timeout"
    CRASH = "crash"
    MISSING_PSEUDO = "missing_pseudo"
    BAD_INPUT = "bad_input"
    UNVERIFIED = "unverified"  # stdout looked fine, but the XML does not confirm convergence


RECOVERABLE = {
    FailureKind.SCF_NOT_CONVERGED,
    FailureKind.IONIC_NOT_CONVERGED,
    FailureKind.TIMEOUT,
}


class QERunError(RuntimeError):
    """pw.x failed beyond recovery; `attempts` tells what was tried."""

    def __init__(self, kind: FailureKind, message: str, attempts: list[Attempt]):
        self.kind = kind
        self.attempts = attempts
        super().__init__(f"pw.x failed ({kind.value}) after {len(attempts)} attempt(s): {message}")


def pw_command(settings: DFTSettings) -> list[str]:
    cmd = shlex.split(settings.launcher) + shlex.split(settings.pw_command)
    if settings.npool:
        cmd += ["-nk", str(settings.npool)]
    return cmd + ["-in", "pw.in"]


def pw_env(settings: DFTSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    if settings.launcher and hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def launch(directory: Path, settings: DFTSettings) -> tuple[int | None, float, bool]:
    """Run pw.x in `directory` under the wall-time limit: (returncode, wall seconds, timed_out).

    pw.x runs in its own process group so a timeout kills mpirun and all ranks together.
    """
    t0 = time.perf_counter()
    with open(directory / "pw.out", "w") as out, open(directory / "pw.err", "w") as err:
        try:
            proc = subprocess.Popen(
                pw_command(settings),
                cwd=directory,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=pw_env(settings),
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            err.write(f"cannot start pw.x: {exc}\n")
            return None, 0.0, False
        try:
            rc = proc.wait(timeout=settings.walltime_s)
            return rc, time.perf_counter() - t0, False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return proc.returncode, time.perf_counter() - t0, True


def classify(rc: int | None, timed_out: bool, directory: Path, calculation: str) -> tuple[str, str]:
    """(status, message): "ok" or a FailureKind value, from exit code, stdout and CRASH file."""
    out = (
        (directory / "pw.out").read_text(errors="replace")
        if (directory / "pw.out").exists()
        else ""
    )
    crash_file = directory / "CRASH"
    crash = crash_file.read_text(errors="replace") if crash_file.exists() else ""
    err = (
        (directory / "pw.err").read_text(errors="replace")
        if (directory / "pw.err").exists()
        else ""
    )
    if timed_out:
        return FailureKind.TIMEOUT.value, "wall-time limit reached, pw.x killed"
    if rc is None:
        return FailureKind.CRASH.value, err.strip()[-300:] or "pw.x could not be started"
    if "Maximum CPU time exceeded" in out:
        return FailureKind.TIMEOUT.value, "pw.x stopped at max_seconds"
    if "convergence NOT achieved" in out:
        return FailureKind.SCF_NOT_CONVERGED.value, "SCF did not converge"
    if rc == 3 or "maximum number of steps has been reached" in out:
        return FailureKind.IONIC_NOT_CONVERGED.value, "ionic steps exhausted"
    if rc != 0 or "JOB DONE" not in out:
        text = crash or err
        m = re.search(r"Error in routine\s+(\S+).*?\n\s*(.+?)\n", text, re.S)
        msg = f"{m.group(1)}: {m.group(2).strip()}" if m else text.strip()[-300:]
        low = text.lower()
        if "pseudo" in low and ("file" in low or "readpp" in low):
            return FailureKind.MISSING_PSEUDO.value, msg
        if any(k in low for k in ("namelist", "read_cards", "card", "reading input", "iosys")):
            return FailureKind.BAD_INPUT.value, msg
        return FailureKind.CRASH.value, msg or f"pw.x exited with {rc}"
    if calculation in ("relax", "vc-relax") and not (
        "bfgs converged" in out or "End final coordinates" in out
    ):
        return FailureKind.IONIC_NOT_CONVERGED.value, "no 'bfgs converged' in output"
    return "ok", ""


def confirm(info: XMLInfo, calculation: str) -> tuple[str, str]:
    """(status, message) from pw.x's XML record of a run its stdout calls finished: the XML
    must exist and state convergence; silence is not success."""
    if info.scf_converged is None:
        return FailureKind.UNVERIFIED.value, "no convergence record in pw.x's XML (missing?)"
    if not info.scf_converged:
        return FailureKind.SCF_NOT_CONVERGED.value, "XML: SCF not converged"
    if calculation in ("relax", "vc-relax"):
        if info.opt_converged is None:
            return FailureKind.UNVERIFIED.value, "no ionic convergence record in pw.x's XML"
        if not info.opt_converged:
            return FailureKind.IONIC_NOT_CONVERGED.value, "XML: ionic relaxation not converged"
    return "ok", ""


def correct(kind: FailureKind, pw_input: PWInput) -> tuple[PWInput, dict]:
    """The next input after a failure, and a record of what changed (kept in the attempt)."""
    change: dict = {}
    if kind == FailureKind.SCF_NOT_CONVERGED:
        change = {
            "mixing_beta": round(max(0.05, pw_input.mixing_beta * 0.5), 4),
            "electron_maxstep": min(2000, max(200, 2 * pw_input.electron_maxstep)),
        }
    if kind == FailureKind.IONIC_NOT_CONVERGED:
        change["nstep"] = min(1000, 2 * pw_input.nstep)
    if pw_input.calculation in ("relax", "vc-relax") and kind in RECOVERABLE:
        change["restart_from"] = "last_geometry"
    new = pw_input.model_copy(update={k: v for k, v in change.items() if k != "restart_from"})
    return new, change


def _last_frame(directory: Path):
    frames = read_frames(directory / "pw.out")
    return frames[-1] if frames else None, len(frames)


def _final_pressure(out_text: str) -> float | None:
    vals = re.findall(r"P=\s*(-?\d+\.\d+)", out_text)
    return float(vals[-1]) if vals else None


def run_pw(
    structure: Structure,
    pw_input: PWInput,
    directory: str | Path,
    settings: DFTSettings | None = None,
    task_label: str = "qe",
) -> QETaskDocument:
    """Run pw.x with corrective retries; return the task document or raise QERunError.

    Missing pseudopotentials (every element named) and invalid structures fail before pw.x starts.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    settings = settings or DFTSettings()
    validate_structure(structure)
    elements = sorted({el.symbol for el in structure.composition.elements})
    pseudo_dir = settings.resolved_pseudo_dir()
    pseudos = pseudopotentials_for(elements, settings)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)

    attempts: list[Attempt] = []
    current, current_input = structure, pw_input
    correction: dict = {}
    ionic_total = 0
    for i in range(settings.max_retries + 1):
        adir = directory / f"attempt_{i}"
        if adir.exists():
            shutil.rmtree(adir)
        adir.mkdir()
        write_input(adir / "pw.in", current, current_input, pseudos, pseudo_dir, PREFIX)
        rc, wall, timed_out = launch(adir, settings)
        status, message = classify(rc, timed_out, adir, current_input.calculation)
        xml = adir / "out" / f"{PREFIX}.xml"
        if xml.exists():
            shutil.copy2(xml, adir / f"{PREFIX}.xml")
        if not settings.keep_outdir:
            shutil.rmtree(adir / "out", ignore_errors=True)
        if status == "ok":
            status, message = confirm(parse_xml(adir / f"{PREFIX}.xml"), current_input.calculation)
        attempts.append(
            Attempt(
                index=i,
                directory=str(adir),
                returncode=rc,
                status=status,
                message=message,
                correction=correction,
                wall_time_s=wall,
            )
        )
        (directory / "attempts.json").write_text(
            json.dumps([a.model_dump() for a in attempts], indent=1)
        )
        last, nframes = _last_frame(adir)
        ionic_total += nframes
        if status == "ok":
            break
        kind = FailureKind(status)
        if kind not in RECOVERABLE or i == settings.max_retries:
            raise QERunError(kind, message, attempts)
        current_input, correction = correct(kind, current_input)
        if correction.get("restart_from") and last is not None:
            current = AseAtomsAdaptor.get_structure(last)
        elif kind == FailureKind.TIMEOUT:
            raise QERunError(kind, message, attempts)  # scf timeout: retrying changes nothing

    adir = Path(attempts[-1].directory)
    out_text = (adir / "pw.out").read_text(errors="replace")
    info = parse_xml(adir / f"{PREFIX}.xml")
    last, _ = _last_frame(adir)
    if last is None:
        raise QERunError(FailureKind.CRASH, "no energy in pw.x output", attempts)
    final = AseAtomsAdaptor.get_structure(last)
    for key in list(final.site_properties):
        final.remove_site_property(key)
    energy = float(last.get_potential_energy())
    forces = last.get_forces().tolist() if "forces" in last.calc.results else None
    stress = None
    if "stress" in last.calc.results:
        stress = (last.get_stress(voigt=False) * EV_A3_TO_KBAR).tolist()
    pressure = _final_pressure(out_text)
    warnings: list[str] = []
    pressure_ok = None
    if current_input.calculation == "vc-relax" and pressure is not None:
        pressure_ok = abs(pressure) <= settings.pressure_tolerance_kbar
        if not pressure_ok:
            warnings.append(
                f"final pressure {pressure:.1f} kbar exceeds {settings.pressure_tolerance_kbar} "
                "kbar: basis (ecutwfc) probably too small, cell unreliable"
            )
    family = family_of(settings)
    return QETaskDocument(
        task_label=task_label,
        calculation=pw_input.calculation,
        formula=final.composition.formula,
        reduced_formula=final.composition.reduced_formula,
        elements=elements,
        nsites=len(final),
        input=pw_input,
        pseudo_family=family if family != "custom" else str(settings.pseudo_dir),
        pseudopotentials=pseudos,
        pseudo_md5=md5sums(pseudos, pseudo_dir),
        qe_version=info.qe_version or qe_version_from_stdout(out_text),
        input_structure=structure,
        structure=final,
        energy=energy,
        energy_per_atom=energy / len(final),
        forces=forces,
        stress=stress,
        pressure_kbar=pressure,
        ionic_steps=ionic_total,
        scf_converged=info.scf_converged is True,  # confirm() passed: both are recorded True
        ionic_converged=info.opt_converged is True if current_input.calculation != "scf" else None,
        pressure_ok=pressure_ok,
        successful=True,
        warnings=warnings,
        wall_time_s=sum(a.wall_time_s for a in attempts),
        attempts=attempts,
        dir_name=str(directory),
    )
