"""CLI: Voxel generator training, sampling and evaluation.

Heavy imports (torch, pymatgen) happen inside the commands so `crystalloop --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()

DATA_HELP = (
    "Training data: a perov_5-style CSV(.gz) with a 'cif' column, 'matminer:NAME' "
    "(flla_2015|elastic_tensor|dielectric_constant), or a folder of CIFs. Repeat for several. "
    "Cubic cells are kept; the encoded grids are cached by content hash."
)


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def _settings(**overrides):
    from generators.voxel.training_settings import GeneratorSettings

    return GeneratorSettings(**{k: v for k, v in overrides.items() if v is not None})


def _load(data: list[str], property_key: str, max_records: int | None):
    from generators.voxel.data_cache import load_voxel_data

    try:
        return load_voxel_data(data, property_key=property_key, max_records=max_records)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise _fail(str(exc)) from exc


def register(app: typer.Typer) -> None:
    """Add `train unet|vae|prior|decoding|fingerprint`, `sample`, `reconstruct` and
    `evaluate generator|voxel` to the main app."""
    train_app = typer.Typer(
        help="Train the generators: voxel (first the UNet, then the VAE; then prior and "
        "decoding) or the fingerprint CVAE.",
        no_args_is_help=True,
    )
    evaluate_app = typer.Typer(
        help="Measure trained models against the paper's figures.", no_args_is_help=True
    )

    @train_app.command("unet")
    def train_unet_cmd(
        data: list[str] = typer.Option(..., "--data", "-d", help=DATA_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="checkpoint to write (.pt)"),
        epochs: int = typer.Option(None, help="passes over the training split"),
        lr: float = typer.Option(None, help="learning rate (paper default 3e-6)"),
        batch: int = typer.Option(None, help="batch size (paper default 10)"),
        channels: str = typer.Option(None, help="channels per level, e.g. '8,16,32'"),
        stem_pool: bool = typer.Option(
            None,
            "--stem-pool/--no-stem-pool",
            help="convolve at half resolution and below, full resolution via 1x1 (~5x cheaper)",
        ),
        class_weight_power: float = typer.Option(
            None, help="species weights = voxel counts**-power (paper: 1.0, inverse frequency)"
        ),
        max_minutes: float = typer.Option(None, help="stop cleanly after this wall time"),
        resume: Path = typer.Option(None, help="continue from this checkpoint"),
        seed: int = typer.Option(None, help="seed of weights, order and augmentation"),
        threads: int = typer.Option(None, help="CPU threads (default: all cores)"),
        val_every: int = typer.Option(None, help="validate every N steps"),
        max_records: int = typer.Option(None, help="use only the first N records per source"),
        property_key: str = typer.Option(
            "formation_energy_per_atom", "--property", help="property kept with the data"
        ),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ) -> None:
        """Train the 3D UNet that turns a density map into species and occupancy."""
        from generators.voxel.train_unet import train_unet

        settings = _settings(
            unet_epochs=epochs,
            unet_lr=lr,
            unet_batch=batch,
            max_minutes=max_minutes,
            seed=seed,
            threads=threads,
            val_every=val_every,
            property=property_key,
            unet_channels=_channels(channels),
            unet_stem_pool=stem_pool,
            unet_class_weight_power=class_weight_power,
        )
        voxel_data = _load(data, property_key, max_records)
        try:
            result = train_unet(
                voxel_data, out, settings, resume=resume, progress=not quiet, log=console.print
            )
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from exc
        console.print(f"wrote {result.path} after {result.steps} steps ({result.seconds:.0f} s)")

    @train_app.command("vae")
    def train_vae_cmd(
        data: list[str] = typer.Option(..., "--data", "-d", help=DATA_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="checkpoint to write (.pt)"),
        unet: Path = typer.Option(
            None,
            help="trained UNet checkpoint for the perceptual loss; without it the "
            "perceptual term is off (a warm-up you can resume later with --unet)",
        ),
        epochs: int = typer.Option(None, help="passes over the training split"),
        lr: float = typer.Option(None, help="learning rate (paper default 1e-4)"),
        batch: int = typer.Option(None, help="batch size (paper default 20)"),
        alpha: float = typer.Option(None, help="perceptual weight (paper default 1.0)"),
        beta: float = typer.Option(None, help="KL weight (paper default 0.0005)"),
        latent: int = typer.Option(None, help="latent dimension (paper default 256)"),
        channels: str = typer.Option(None, help="encoder channels per level, e.g. '8,16,32,64,64'"),
        freeze_batchnorm: bool = typer.Option(
            None,
            "--freeze-batchnorm/--no-freeze-batchnorm",
            help="batch norm uses (and keeps) its running statistics while training: optimises "
            "what sampling computes; use when continuing a trained model",
        ),
        species_head: bool = typer.Option(
            None,
            "--species-head/--no-species-head",
            help="the VAE also carries the species matrix (embedding in, per-voxel species "
            "logits out) and sampling reads elements from it instead of the UNet; with "
            "--resume of a paper-style VAE the head is added and its weights kept",
        ),
        species_weight: float = typer.Option(
            None, help="weight of the species term (default 0.01, times n^3 voxels)"
        ),
        property_key: str = typer.Option(
            "formation_energy_per_atom", "--property", help="conditioning property (deciles)"
        ),
        max_minutes: float = typer.Option(None, help="stop cleanly after this wall time"),
        resume: Path = typer.Option(None, help="continue from this checkpoint"),
        seed: int = typer.Option(None, help="seed of weights, order and augmentation"),
        threads: int = typer.Option(None, help="CPU threads (default: all cores)"),
        val_every: int = typer.Option(None, help="validate every N steps"),
        max_records: int = typer.Option(None, help="use only the first N records per source"),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ) -> None:
        """Train the conditional DFC-VAE (needs the trained UNet for the perceptual loss).

        Example, the shipped model's last round: add the species head to a trained VAE and
        continue it with batch norm frozen (then again with --resume vae5.pt --lr 1e-4):

          crystalloop train vae --data ../shared/data/perov_5/val.csv.gz --out vae5.pt
            --resume vae.pt --unet unet.pt --species-head --freeze-batchnorm --lr 3e-4
            --batch 10 --alpha 0.01 --max-minutes 48
        """
        from generators.voxel.train_vae import train_vae

        settings = _settings(
            vae_epochs=epochs,
            vae_lr=lr,
            vae_batch=batch,
            alpha=alpha,
            beta=beta,
            latent_dim=latent,
            vae_channels=_channels(channels),
            vae_freeze_batchnorm=freeze_batchnorm,
            vae_species_head=species_head,
            vae_species_weight=species_weight,
            property=property_key,
            max_minutes=max_minutes,
            seed=seed,
            threads=threads,
            val_every=val_every,
        )
        voxel_data = _load(data, property_key, max_records)
        try:
            result = train_vae(
                voxel_data,
                unet,
                out,
                settings,
                resume=resume,
                progress=not quiet,
                log=console.print,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from exc
        console.print(f"wrote {result.path} after {result.steps} steps ({result.seconds:.0f} s)")

    @train_app.command("prior")
    def train_prior_cmd(
        data: list[str] = typer.Option(..., "--data", "-d", help=DATA_HELP),
        vae: Path = typer.Option(..., "--vae", help="VAE checkpoint to add the prior to"),
        out: Path = typer.Option(None, "--out", "-o", help="write here (default: in place)"),
        property_key: str = typer.Option(
            "formation_energy_per_atom", "--property", help="the VAE's conditioning property"
        ),
        max_records: int = typer.Option(None, help="use only the first N records per source"),
    ) -> None:
        """Fit the random-sampling latent prior to a trained VAE's training posteriors."""
        from generators.voxel.prior import add_latent_prior

        voxel_data = _load(data, property_key, max_records)
        try:
            prior = add_latent_prior(vae, voxel_data, out)
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from exc
        console.print(f"latent prior fitted on {prior['n_fitted']} structures -> {out or vae}")

    @train_app.command("decoding")
    def train_decoding_cmd(
        data: list[str] = typer.Option(..., "--data", "-d", help=DATA_HELP),
        vae: Path = typer.Option(..., "--vae", help="VAE checkpoint to store the settings in"),
        unet: Path = typer.Option(None, "--unet", help="UNet checkpoint (default: beside --vae)"),
        out: Path = typer.Option(None, "--out", "-o", help="write here (default: in place)"),
        limit: int = typer.Option(200, min=1, help="training structures to score each setting on"),
        property_key: str = typer.Option(
            "formation_energy_per_atom", "--property", help="the VAE's conditioning property"
        ),
        max_records: int = typer.Option(None, help="use only the first N records per source"),
    ) -> None:
        """Tune watershed smoothing and minimum region size for this model's generated grids.

        Grid search on training structures (never the held-out split) by the mean EMD of
        encode -> VAE -> UNet -> decode; the choice is stored in the VAE checkpoint and used by
        every later `sample`, `evaluate` and campaign. Run it after the VAE's last stage.
        """
        from rich.progress import Progress

        from generators.voxel.decode_tuning import add_decoding_settings

        voxel_data = _load(data, property_key, max_records)
        with Progress(console=console) as bar:
            task = bar.add_task("scoring decoding settings", total=None)
            try:
                result = add_decoding_settings(
                    vae,
                    voxel_data,
                    unet,
                    out,
                    limit,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            except (FileNotFoundError, ValueError) as exc:
                raise _fail(str(exc)) from exc
        best, before = result["best"], result["representation_defaults"]
        console.print(
            f"on {result['n_structures']} training structures: {result['settings']} -> "
            f"EMD {best['mean_emd_A']:.3f} A, |dN| {best['mean_abs_delta_n']:.2f}"
            + (
                f" (representation defaults: EMD {before['mean_emd_A']:.3f} A, "
                f"|dN| {before['mean_abs_delta_n']:.2f})"
                if before
                else ""
            )
            + f" -> {out or vae}"
        )

    from generators.commands import register_on

    register_on(app, train_app, evaluate_app)
    _register_evaluation(evaluate_app)
    app.add_typer(train_app, name="train")
    app.add_typer(evaluate_app, name="evaluate")


def _channels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise typer.BadParameter(
            f"channels must be comma-separated integers, got {text!r}"
        ) from exc
    if not values or min(values) < 1:
        raise typer.BadParameter("channels must be positive")
    return values


def _register_evaluation(evaluate_app: typer.Typer) -> None:
    """`evaluate voxel` (the paper's figures)."""

    @evaluate_app.command("voxel")
    def evaluate_voxel_cmd(
        model: Path = typer.Option(None, help="model dir or vae.pt (default: shipped model)"),
        data: list[str] = typer.Option(
            None,
            "--data",
            "-d",
            help="evaluation data (default: the model's training source; its held-out split "
            "stored in the checkpoint is used)",
        ),
        json_out: Path = typer.Option(None, "--json", help="write the figures here"),
        per_decile: int = typer.Option(100, min=0, help="random samples per decile (0: skip)"),
        limit: int = typer.Option(None, help="held-out structures to use (default: all; 0: skip)"),
        seed: int = typer.Option(0, help="sampling seed"),
        threads: int = typer.Option(None, help="CPU threads (default: all cores)"),
        workers: int = typer.Option(None, min=1, help="decoding processes (default 1)"),
    ) -> None:
        """The voxel generator against Court et al.'s figures: reconstruction (EMD, lattice
        MAE, |dN|, UNet recall) and random sampling (validity, charge balance, speed). CDVAE's
        metrics for either generator: `crystalloop evaluate generator`."""
        from generators.voxel.evaluate import run_evaluation

        try:
            run_evaluation(
                str(model) if model else None,
                data or None,
                str(json_out) if json_out else None,
                per_decile,
                limit,
                seed,
                threads,
                workers=workers,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from exc


def _read_cif(path: Path, structure_cls):
    if not path.is_file():
        raise FileNotFoundError(f"no such CIF file: {path}")
    try:
        return structure_cls.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a user input problem
        raise ValueError(f"cannot read {path} as a crystal: {exc}") from exc
