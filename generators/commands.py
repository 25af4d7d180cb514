"""CLI: sampling, reconstruction and CDVAE-style evaluation for either generator, and the
fingerprint generator's training command.

`--generator voxel` (the default; `voxel-vae` too) or `--generator fingerprint`. Heavy
imports happen inside the commands so `crystalloop --help` stays fast.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()

GENERATOR_HELP = "voxel (the voxel VAE + UNet; also 'voxel-vae') or fingerprint"
CSV_HELP = "a perov_5-layout CSV(.gz) (material_id + cif columns), a CIF folder or matminer:NAME"


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def _kind(name: str) -> str:
    from generators.registry import canonical

    try:
        return canonical(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _load(kind: str, model: Path | None, **options):
    from generators.registry import load_generator

    try:
        return load_generator(kind, str(model) if model else None, **options)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc


def _records(data: str, limit: int | None = None):
    from generators.data import load_source

    try:
        records, _ = load_source(data)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise _fail(f"{data}: {exc}") from exc
    if not records:
        raise _fail(f"{data}: no readable crystals")
    return records


def _read_structure(path: Path):
    from pymatgen.core import Structure

    if not path.is_file():
        raise _fail(f"no such structure file: {path}")
    try:
        return Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a user input problem
        raise _fail(f"cannot read {path} as a crystal: {exc}") from exc


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
    console.print(f"wrote {path}")


def register_on(app: typer.Typer, train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    """`sample`, `reconstruct`, `evaluate generator` and `train fingerprint`."""

    @app.command("sample")
    def sample_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="folder for the CIFs and summary.csv"),
        n: int = typer.Option(20, "--n", "-n", min=1, help="candidates to generate"),
        generator: str = typer.Option("voxel", "--generator", "-g", help=GENERATOR_HELP),
        decile: int = typer.Option(
            None,
            help="condition decile 0..9 of formation energy (0 = lowest). Random mode default: "
            "0; targeted mode default: the base compound's own decile",
        ),
        base: Path = typer.Option(None, help="CIF of a base compound: sample around it"),
        to: Path = typer.Option(None, help="with --base: interpolate from base to this CIF"),
        sigma2: float = typer.Option(
            0.5,
            help="targeted mode: latent variance (voxel; fingerprint uses its square root "
            "as the noise scale in prior standard deviations)",
        ),
        seed: int = typer.Option(None, help="seed of candidate 0 (candidate i uses seed + i)"),
        model: Path = typer.Option(None, help="checkpoint (default: the shipped model)"),
        valid_only: bool = typer.Option(False, help="write CIFs of valid candidates only"),
        elements: str = typer.Option(
            None, help="fingerprint only: allowed elements, e.g. 'Ba,Sr,Ti,O'"
        ),
        workers: int = typer.Option(1, min=1, help="voxel only: decoding processes"),
        prior: str = typer.Option("auto", help="voxel only: auto | fitted | standard"),
    ) -> None:
        """Generate crystals (random per decile, around --base, or --base -> --to) and write
        one CIF per candidate plus summary.csv (formula, sites, lattice, validity, decile,
        seed, model version; the fingerprint generator adds its inversion loss)."""
        from generators.generation_metrics import composition_valid, structure_valid

        kind = _kind(generator)
        if to is not None and base is None:
            raise typer.BadParameter("--to needs --base (interpolation goes from base to --to)")
        if kind == "voxel-vae" and elements:
            raise typer.BadParameter("--elements is an option of the fingerprint generator")
        if kind == "fingerprint" and (workers != 1 or prior != "auto"):
            raise typer.BadParameter("--workers and --prior are options of the voxel generator")
        if sigma2 <= 0:
            raise typer.BadParameter("--sigma2 must be > 0")
        options = (
            {"workers": workers, "prior": prior}
            if kind == "voxel-vae"
            else {"elements": [e.strip() for e in elements.split(",")] if elements else None}
        )
        gen = _load(kind, model, **options)
        structures = [_read_structure(p) for p in (base, to) if p is not None]
        try:
            if base is None:
                mode = "random"
                cands = gen.sample_random(n, 0 if decile is None else decile, seed=seed)
            elif to is None:
                mode = "targeted"
                if kind == "voxel-vae":
                    cands = gen.sample_around(
                        structures[0], n, sigma2, decile, seed, base_id=base.stem
                    )
                else:
                    cands = gen.sample_around(
                        structures[0], n, seed=seed, decile=decile, scale=sigma2**0.5
                    )
            else:
                mode = "interpolation"
                cands = gen.interpolate(structures[0], structures[1], max(n, 2))
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        finally:
            if hasattr(gen, "close"):
                gen.close()
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, c in enumerate(cands):
            has_sites = len(c.structure) > 0
            valid = has_sites and c.is_valid and structure_valid(c.structure)
            name = f"{mode}_{i:04d}_{c.formula if has_sites else 'empty'}"
            written = ""
            if has_sites and (valid or not valid_only):
                written = f"{name}.cif"
                c.structure.to(filename=str(out / written))
            extra = c.provenance.extra
            rows.append(
                {
                    "index": i,
                    "id": c.id,
                    "file": written,
                    "formula": c.formula if has_sites else "",
                    "n_sites": len(c.structure),
                    "a_A": round(c.structure.lattice.a, 4),
                    "valid": valid,
                    "composition_valid": has_sites and composition_valid(c.structure.composition),
                    "mode": mode,
                    "generator": c.provenance.generator,
                    "decile": (c.provenance.condition or {}).get("decile"),
                    "seed": c.provenance.seed,
                    "model_version": c.provenance.model_version,
                    "fingerprint_loss": extra.get("fingerprint_loss", ""),
                }
            )
        if not rows:
            raise _fail("the generator returned no candidates (see its rejection counts)")
        with open(out / "summary.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        valid = sum(r["valid"] for r in rows)
        dropped = n - len(rows) if mode != "interpolation" else 0
        note = f", {dropped} dropped (no acceptable composition)" if dropped > 0 else ""
        console.print(
            f"{len(rows)} {mode} candidates from {kind}, {valid} valid{note}; "
            f"wrote {out}/summary.csv"
        )

    @app.command("reconstruct")
    def reconstruct_cmd(
        data: str = typer.Option(..., "--data", "-d", help=CSV_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="folder for <material_id>.cif"),
        generator: str = typer.Option("voxel", "--generator", "-g", help=GENERATOR_HELP),
        limit: int = typer.Option(None, min=1, help="only the first N crystals"),
        json_out: Path = typer.Option(None, "--json", help="write the figures here"),
        model: Path = typer.Option(None, help="voxel only: checkpoint (default: shipped)"),
        threads: int = typer.Option(None, min=1, help="torch CPU threads"),
    ) -> None:
        """Reconstruct each crystal of DATA and score it as CDVAE does.

        fingerprint: invert the crystal's own fingerprint given only its composition (the
        lattice is found, not given). voxel: encode -> posterior mean -> decode. Writes
        DIR/<material_id>.cif and, with --json, match_rate (StructureMatcher stol 0.5,
        angle_tol 10, ltol 0.3), match_rate_lattice (also a within 1 %), mean_rms and the
        median seconds per crystal."""
        import torch
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from generators.evaluation import reconstruction_figures

        kind = _kind(generator)
        if kind == "fingerprint" and model is not None:
            raise typer.BadParameter("--model: the fingerprint inversion needs no trained model")
        if threads:
            torch.set_num_threads(threads)
        records = _records(data)[:limit]
        if kind == "fingerprint":
            from generators.data import select_cubic

            records, report = select_cubic(records, max_atoms=40)
            if report.dropped:
                console.print(f"skipped non-cubic or unusable: {report.dropped}")
        gen = _load(kind, model) if kind == "voxel-vae" else None
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"reconstructing ({kind})", total=len(records))
            figures, recon = reconstruction_figures(
                kind, gen, records, progress=lambda done: bar.update(task, completed=done)
            )
        out.mkdir(parents=True, exist_ok=True)
        for rec, r in zip(records, recon, strict=True):
            if r.structure is not None and len(r.structure):
                r.structure.to(filename=str(out / f"{rec.source_id}.cif"))
        console.print(
            f"{figures['n']} crystals: match rate {figures['match_rate']:.3f}, with the lattice "
            f"within 1 % {figures['match_rate_lattice']:.3f}, mean RMS "
            f"{figures['mean_rms'] if figures['mean_rms'] is None else round(figures['mean_rms'], 4)}"
            f", median {figures['median_seconds_per_structure']:.2f} s per crystal"
        )
        if json_out:
            _write_json(json_out, {"generator": kind, "data": data, **figures})

    @evaluate_app.command("generator")
    def evaluate_generator_cmd(
        data: str = typer.Option(..., "--data", "-d", help=CSV_HELP + " (held-out split used)"),
        generator: str = typer.Option("voxel", "--generator", "-g", help=GENERATOR_HELP),
        json_out: Path = typer.Option(None, "--json", help="write the figures here"),
        per_decile: int = typer.Option(100, min=1, help="random samples per decile"),
        model: Path = typer.Option(None, help="checkpoint (default: the shipped model)"),
        seed: int = typer.Option(0, help="sampling seed"),
        workers: int = typer.Option(1, min=1, help="processes for the CrystalNN fingerprints"),
        threads: int = typer.Option(None, min=1, help="torch CPU threads"),
    ) -> None:
        """Generation metrics as CDVAE reports them: structural and composition validity,
        uniqueness and novelty of the valid samples (against the model's training split of
        DATA), COV-R / COV-P against its held-out split with the ceiling that as many real
        training crystals reach, and candidates/s end to end."""
        import torch

        from generators.evaluation import sampling_figures, split_records

        kind = _kind(generator)
        if threads:
            torch.set_num_threads(threads)
        gen = _load(kind, model)
        records = _records(data)
        if kind == "fingerprint":
            from generators.data import select_cubic

            records, _ = select_cubic(records, max_atoms=40)
        held, train, from_model = split_records(gen, records, data)
        if not from_model:
            console.print(
                "[yellow]none of DATA is in the model's held-out split: all of it is the "
                "reference, and novelty has no training set to compare with[/]"
            )
        console.print(
            f"{kind}: {per_decile} samples x {gen.n_deciles} deciles; reference {len(held)} "
            f"held-out crystals; training {len(train)}"
        )
        figures, _ = sampling_figures(gen, held, train, per_decile, seed, workers)
        if hasattr(gen, "close"):
            gen.close()
        for key in (
            "struct_valid",
            "comp_valid",
            "valid",
            "uniqueness",
            "novelty",
            "cov_recall",
            "cov_precision",
            "ceiling_cov_recall",
            "ceiling_cov_precision",
            "candidates_per_s",
            "valid_candidates_per_s",
        ):
            value = figures.get(key)
            console.print(f"  {key:24s} {'-' if value is None else f'{value:.3f}'}")
        if json_out:
            _write_json(
                json_out,
                {
                    "generator": kind,
                    "model_version": gen.model_version,
                    "data": data,
                    "per_decile": per_decile,
                    "seed": seed,
                    **figures,
                },
            )

    @train_app.command("fingerprint")
    def train_fingerprint_cmd(
        data: list[str] = typer.Option(
            ..., "--data", "-d", help=CSV_HELP + "; repeat for several (each is its own scale)"
        ),
        out: Path = typer.Option(..., "--out", "-o", help="checkpoint to write (.pt)"),
        epochs: int = typer.Option(None, help="total epochs (default 300)"),
        lr: float = typer.Option(None, help="learning rate (default 1e-3)"),
        beta: float = typer.Option(None, help="KL weight (default 1)"),
        latent: int = typer.Option(None, help="latent dimension (default 32)"),
        max_minutes: float = typer.Option(None, help="stop cleanly after this wall time"),
        resume: Path = typer.Option(None, help="continue from this checkpoint"),
        seed: int = typer.Option(None, help="seed of weights and order"),
        threads: int = typer.Option(None, help="CPU threads"),
    ) -> None:
        """Train the fingerprint CVAE on cubic crystals (<= 10 sites): fingerprints are
        computed once and cached; the 10 % per-source validation split, the per-source decile
        edges with their energy scales, and the fitted latent prior go into the checkpoint.
        A `.resume.pt` with the optimizer state is written beside it every 2 minutes."""
        from pydantic import ValidationError

        from generators.fingerprint.train import TrainSettings, train

        overrides = {
            "epochs": epochs,
            "lr": lr,
            "beta": beta,
            "latent_dim": latent,
            "max_minutes": max_minutes,
            "seed": seed,
            "threads": threads,
        }
        try:
            settings = TrainSettings(**{k: v for k, v in overrides.items() if v is not None})
            train(data, out, settings, resume=resume, log=console.print)
        except ValidationError as exc:
            raise _fail(str(exc)) from exc
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise _fail(str(exc)) from exc
