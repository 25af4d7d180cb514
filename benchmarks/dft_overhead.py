"""DFT orchestration costs, measured with the real pw.x.

1. overhead: one pw.x input run by hand (subprocess, nothing else) and through QERelaxMaker +
   jobflow run_locally + a file-persistent MontyStore JobStore. Target: orchestration <= 2% of the
   pw.x wall time. Reported two ways: (maker total - pw.x time inside it) / pw.x time, which is
   immune to load noise, and maker total / hand-run total (noisy on a shared machine).
2. chgnet: what a CHGNet pre-relaxation (atomate2 ForceFieldRelaxMaker) saves in pw.x ionic steps
   and wall time on slightly perturbed cubic cells from the matminer flla_2015 set.
3. formation: formation energies (vc-relax + elemental references at the same settings) of
   Materials Project entries in flla_2015, compared with MP's values. MP's legacy fitted oxide
   correction (-0.702 eV per O, MPCompatibility) is shown beside our raw PBE number. Minutes per
   compound at the 84-90 Ry these need.

    python benchmarks/dft_overhead.py --part all --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from dft.inputs import make_input, write_input
from dft.pseudos import pseudopotentials_for
from dft.runner import pw_command, pw_env
from dft.settings import DFTSettings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def si_conventional() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def overhead(repeats: int, ecutwfc: float, kpts: int) -> dict:
    from jobflow import run_locally

    from dft.backends import make_monty_jobstore
    from dft.makers import QERelaxMaker

    settings = DFTSettings()
    s = si_conventional()
    over = {"ecutwfc": ecutwfc, "kpts": (kpts, kpts, kpts)}
    pw_input = make_input(s, "vc-relax", settings, **over)
    pseudos = pseudopotentials_for(["Si"], settings)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        store = make_monty_jobstore(tmp_p / "db")
        store.connect()  # created once, like the local backend does before workers start
        for r in range(repeats):
            d = tmp_p / f"hand{r}"
            d.mkdir()
            write_input(d / "pw.in", s, pw_input, pseudos, settings.resolved_pseudo_dir())
            t0 = time.perf_counter()
            with open(d / "pw.out", "w") as out:
                subprocess.run(
                    pw_command(settings), cwd=d, stdout=out, env=pw_env(settings), check=True
                )
            hand = time.perf_counter() - t0
            job = QERelaxMaker(input_overrides=over).make(s)
            t0 = time.perf_counter()
            run_locally(job, store=store, log=False, ensure_success=True)
            maker = time.perf_counter() - t0
            doc = store.get_output(job.uuid)
            pw_inside = sum(a["wall_time_s"] for a in doc["attempts"])
            rows.append(
                {
                    "hand_pw_s": hand,
                    "maker_total_s": maker,
                    "maker_pw_s": pw_inside,
                    "orchestration_s": maker - pw_inside,
                    "ionic_steps": doc["ionic_steps"],
                }
            )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {
        "case": f"Si8 vc-relax {ecutwfc:g} Ry {kpts}x{kpts}x{kpts}",
        "runs": rows,
        "median": med,
        "overhead_vs_inside_pw_pct": 100 * med["orchestration_s"] / med["maker_pw_s"],
        "overhead_vs_hand_pct": 100 * (med["maker_total_s"] - med["hand_pw_s"]) / med["hand_pw_s"],
        "target_pct": 2.0,
    }


def perturbed_cells(n: int, seed: int) -> list[tuple[str, Structure]]:
    """Cubic cells with cheap pseudos; strained 3-5% and atoms displaced 0.05 A."""
    import ast

    import pandas as pd

    df = pd.read_csv(SHARED / "matminer_0.4.0" / "flla_2015.csv.gz", comment="#")
    base = {"Si": si_conventional().get_primitive_structure()}
    for mpid in ("mp-134", "mp-1550", "mp-571222", "mp-573697"):
        row = df[df.material_id == mpid].iloc[0]
        st = Structure.from_dict(ast.literal_eval(row.structure)).get_primitive_structure()
        base[f"{st.composition.reduced_formula} ({mpid})"] = st
    rng = np.random.default_rng(seed)
    cells = []
    names = list(base)
    for i in range(n):
        name = names[i % len(names)]
        s = base[name].copy()
        strain = rng.uniform(0.03, 0.05) * rng.choice([-1, 1])
        s.apply_strain(strain)
        if len(s) > 1:
            s.perturb(0.05)
        cells.append((f"{name} #{i // len(names)} strain {strain:+.3f}", s))
    return cells


def chgnet_savings(n: int, kdensity: float, seed: int) -> dict:
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    from dft.makers import QERelaxMaker, strip_site_properties

    so = {"kpoint_density": kdensity}
    rows = []
    for name, s in perturbed_cells(n, seed):
        s = strip_site_properties(s)
        store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
        direct = QERelaxMaker(settings_overrides=so).make(s)
        run_locally(direct, store=store, log=False, ensure_success=True)
        d = store.get_output(direct.uuid)
        ff = ForceFieldRelaxMaker(
            force_field_name="CHGNet",
            relax_kwargs={"fmax": 0.05, "final_atoms_object_file": None},
        ).make(s)
        t0 = time.perf_counter()
        run_locally(ff, store=store, log=False, ensure_success=True)
        t_ff = time.perf_counter() - t0
        pre = store.get_output(ff.uuid, load=True)
        qe = QERelaxMaker(settings_overrides=so).make(Structure.from_dict(pre["structure"]))
        run_locally(qe, store=store, log=False, ensure_success=True)
        q = store.get_output(qe.uuid)
        rows.append(
            {
                "cell": name,
                "ecutwfc": d["input"]["ecutwfc"],
                "steps_direct": d["ionic_steps"],
                "steps_after_chgnet": q["ionic_steps"],
                "pw_s_direct": d["wall_time_s"],
                "pw_s_after_chgnet": q["wall_time_s"],
                "chgnet_s": t_ff,
                "e_direct": d["energy_per_atom"],
                "e_after_chgnet": q["energy_per_atom"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    tot = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("cell", "ecutwfc")}
    return {
        "cells": rows,
        "total": tot,
        "ionic_steps_saved_pct": 100 * (1 - tot["steps_after_chgnet"] / tot["steps_direct"]),
        "pw_time_saved_pct": 100 * (1 - tot["pw_s_after_chgnet"] / tot["pw_s_direct"]),
        "net_time_saved_pct": 100
        * (1 - (tot["pw_s_after_chgnet"] + tot["chgnet_s"]) / tot["pw_s_direct"]),
        "max_energy_difference_ev_per_atom": max(
            abs(r["e_direct"] - r["e_after_chgnet"]) for r in rows
        ),
    }


MP_OXIDE_CORRECTION = -0.70229  # eV per O atom, pymatgen MPCompatibility.yaml (flla_2015 era)


def formation_vs_mp(mpids: list[str]) -> dict:
    import ast

    import pandas as pd

    from dft.formation import formation_energy_per_atom
    from dft.references import reference_energy
    from dft.runner import run_pw

    settings = DFTSettings()
    df = pd.read_csv(SHARED / "matminer_0.4.0" / "flla_2015.csv.gz", comment="#")
    rows = []
    for mpid in mpids:
        row = df[df.material_id == mpid].iloc[0]
        s = Structure.from_dict(ast.literal_eval(row.structure)).get_primitive_structure()
        inp = make_input(s, "vc-relax", settings)
        t0 = time.perf_counter()
        doc = run_pw(s, inp, settings.runs_dir / "formation" / mpid, settings, task_label=mpid)
        refs = {el: reference_energy(el, inp, settings) for el in doc.elements}
        ref_e = {k: v["energy_per_atom"] for k, v in refs.items()}
        comp = doc.structure.composition
        ef = formation_energy_per_atom(comp, doc.energy, ref_e)
        x_o = comp.get_atomic_fraction("O")
        rows.append(
            {
                "mpid": mpid,
                "formula": comp.reduced_formula,
                "ecutwfc": inp.ecutwfc,
                "kpts": list(inp.kpts),
                "ef_qe": ef,
                "ef_qe_with_mp_oxide_corr": ef + MP_OXIDE_CORRECTION * x_o,
                "ef_mp": float(row.formation_energy_per_atom),
                "volume_change_pct": 100 * (doc.structure.volume / s.volume - 1),
                "pressure_kbar": doc.pressure_kbar,
                "wall_s": time.perf_counter() - t0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"compounds": rows, "k_density": settings.kpoint_density}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["overhead", "chgnet", "formation", "all"], default="all")
    ap.add_argument(
        "--mpids", nargs="+", default=["mp-2472", "mp-1138", "mp-5777"], help="formation part"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ecutwfc", type=float, default=36.0, help="Ry for the overhead case")
    ap.add_argument("--kpts", type=int, default=4, help="k grid for the overhead case")
    ap.add_argument("--cells", type=int, default=10, help="perturbed cells for the CHGNet part")
    ap.add_argument("--kdensity", type=float, default=300.0, help="k density, CHGNet part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("dft_overhead.json"))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    result: dict = {}
    console = Console()
    if args.part in ("overhead", "all"):
        o = overhead(args.repeats, args.ecutwfc, args.kpts)
        result["overhead"] = o
        t = Table(title=f"orchestration overhead: {o['case']} (median of {args.repeats})")
        for col in ("hand pw.x s", "maker total s", "pw.x inside s", "overhead %", "vs hand %"):
            t.add_column(col)
        m = o["median"]
        t.add_row(
            f"{m['hand_pw_s']:.2f}",
            f"{m['maker_total_s']:.2f}",
            f"{m['maker_pw_s']:.2f}",
            f"{o['overhead_vs_inside_pw_pct']:.2f}",
            f"{o['overhead_vs_hand_pct']:+.2f}",
        )
        console.print(t)
    if args.part in ("chgnet", "all"):
        c = chgnet_savings(args.cells, args.kdensity, args.seed)
        result["chgnet"] = c
        t = Table(title="CHGNet pre-relaxation before pw.x vc-relax")
        for col in ("cell", "steps", "steps w/ CHGNet", "pw.x s", "pw.x s w/", "CHGNet s"):
            t.add_column(col)
        for r in c["cells"]:
            t.add_row(
                r["cell"],
                str(r["steps_direct"]),
                str(r["steps_after_chgnet"]),
                f"{r['pw_s_direct']:.1f}",
                f"{r['pw_s_after_chgnet']:.1f}",
                f"{r['chgnet_s']:.1f}",
            )
        console.print(t)
        console.print(
            f"ionic steps saved {c['ionic_steps_saved_pct']:.0f}%, pw.x time saved "
            f"{c['pw_time_saved_pct']:.0f}%, net of CHGNet {c['net_time_saved_pct']:.0f}%"
        )
    if args.part == "formation":  # minutes per compound: only when asked for
        f = formation_vs_mp(args.mpids)
        result["formation"] = f
        t = Table(title=f"formation energy (eV/atom), k density {f['k_density']:g}")
        for col in ("MP id", "formula", "ecutwfc", "QE raw", "QE + MP O corr.", "MP", "dV %"):
            t.add_column(col)
        for r in f["compounds"]:
            t.add_row(
                r["mpid"],
                r["formula"],
                f"{r['ecutwfc']:g}",
                f"{r['ef_qe']:.3f}",
                f"{r['ef_qe_with_mp_oxide_corr']:.3f}",
                f"{r['ef_mp']:.3f}",
                f"{r['volume_change_pct']:+.1f}",
            )
        console.print(t)
    args.json.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
