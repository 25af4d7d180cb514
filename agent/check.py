"""`crystalloop check FILE`: validate a campaign completely and say what it would do.

A campaign costs hours of DFT; a misspelt option found in cycle 3 costs them twice. The check
is the one `run` makes before it writes anything (`agent.daemon.check_campaign`: every
section and generator option, the objective against the surrogate's heads, pseudopotentials
for the allowed elements, known-crystal sources, the FireWorks launchpad), followed by a plain
account of the campaign. It connects to no store and writes nothing, anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from agent.config import CampaignConfig
from agent.daemon_cli import _checked_components, _load, console


def _generator_line(slot: Any) -> str:
    g = slot.config
    impl = slot.impl
    version = getattr(impl, "model_version", None)
    what = f"{g.candidates_per_cycle} from {g.name}" + (f" ({version})" if version else "")
    if g.mode == "around-base":
        return f"{what}, around {', '.join(g.base_compounds)}"
    ranges = ""
    if hasattr(impl, "decile_ranges") and g.deciles:
        lo = impl.decile_ranges(min(g.deciles))
        hi = impl.decile_ranges(max(g.deciles))
        parts = []
        for scale in lo:
            a, b = lo[scale][0], hi[scale][1]
            low = "-inf" if a is None else f"{a:.2f}"
            high = "+inf" if b is None else f"{b:.2f}"
            parts.append(f"[{low}, {high}] eV/atom on {scale.split(':')[0].split(' (')[0]}")
        ranges = "; formation energy " + " and ".join(parts)
    elif hasattr(impl, "decile_range") and g.deciles:
        a = impl.decile_range(min(g.deciles))[0]
        b = impl.decile_range(max(g.deciles))[1]
        low = "-inf" if a is None else f"{a:.2f}"
        high = "+inf" if b is None else f"{b:.2f}"
        ranges = f"; formation energy [{low}, {high}] eV/atom on its training data's scale"
    deciles = ",".join(str(d) for d in g.deciles)
    return f"{what}, deciles {deciles} of {g.condition_property}{ranges}"


def describe(config: CampaignConfig, components: Any) -> list[str]:
    """What the campaign would do, one line per stage."""
    from dft.pseudos import recommended_ecutwfc
    from dft.settings import DFTSettings

    f, acq, dft, budgets = config.filters, config.acquisition, config.dft, config.budgets
    lines = [f"{config.name}: valid. Per cycle it would"]
    for slot in components.generators:
        lines.append(f"  generate {_generator_line(slot)}")
    steps = []
    if f.elements:
        steps.append(f"elements {'-'.join(f.elements)}")
    if f.min_distance is not None:
        steps.append(f"distances > {f.min_distance} A")
    around_base = any(g.mode == "around-base" for g in config.generators)
    steps += [name for name, on in (("charge balance", f.charge_balance),
                                    ("base stoichiometry", f.stoichiometry and around_base),
                                    ("new in this campaign", f.novelty),
                                    ("no repeats in a cycle", f.batch_duplicates)) if on]  # fmt: skip
    if components.known is not None:
        steps.append(f"not one of {len(components.known):,} known crystals")
    if f.property_window is not None and around_base:
        steps.append(f"within {f.property_window:.0%} of the base's predicted value")
    lines.append(f"  screen: {', '.join(steps) or 'no filters'}")
    obj = config.objective
    goal = (
        f"minimise {obj.property}"
        if obj.goal == "minimise"
        else f"{obj.property} in [{obj.min}, {obj.max}]"
    )
    params = ", ".join(f"{k} {v}" for k, v in acq.params.items())
    lines.append(
        f"  rank with the CGCNN ensemble ({components.surrogate_version or 'shipped default'}), "
        f"policy {acq.policy}{f' ({params})' if params else ''}, objective {goal}"
        + (", diverse batches" if acq.diversity else "")
    )
    lines.append(
        f"  select {config.batch_size}"
        + (", one per formula" if acq.one_per_formula else ", polymorphs allowed")
    )
    settings = DFTSettings(**dft.settings_overrides())
    ecut = (
        f"{recommended_ecutwfc(f.elements, settings):.0f} Ry for {'-'.join(f.elements)}"
        if f.elements and dft.ecutwfc == "auto"
        else str(dft.ecutwfc) + (" Ry" if dft.ecutwfc != "auto" else " (from the elements)")
    )
    lines.append(
        f"  relax with pw.x {dft.calculation} ({dft.backend} backend, {dft.max_concurrent} at "
        f"once, {dft.max_seconds:.0f} s per job): {dft.pseudo_family}, ecutwfc {ecut}, "
        f"{dft.kpoint_density:g} k-points per reciprocal atom"
        + f", {dft.convergence} thresholds"
        + (", CHGNet pre-relaxation" if dft.chgnet_prerelax else "")
        + (f", symmetrized within {dft.symprec} A" if dft.symprec else "")
    )
    stops = [f"{budgets.max_dft_calculations} DFT calculations"]
    if budgets.max_wall_time:
        stops.append(f"{budgets.max_wall_time:.0f} s")
    if config.stopping.max_cycles:
        stops.append(f"{config.stopping.max_cycles} cycles")
    if config.stopping.patience:
        stops.append(f"{config.stopping.patience} cycles without a discovery")
    lines.append(f"  stop after {' or '.join(stops)}")
    r = config.retraining
    lines.append(
        f"  fine-tune the surrogate every {r.every_n_results} DFT results"
        + (
            f" + {r.replay_size} replayed from {r.replay_source}; deploy only if its "
            f"{r.folds}-fold CV MAE is not worse and its MAE on {r.anchor_size} held-out "
            f"{r.replay_source} crystals rises < {r.anchor_tolerance} eV/atom"
            if r.replay_source
            else f"; deploy only if its {r.folds}-fold CV MAE is not worse"
        )
        if r.enabled
        else "  never retrain"
    )
    lines.append(
        f"  discoveries: new, below the elements, within {obj.hull_tolerance} eV/atom "
        "of the campaign's hull" + (" and in the window" if obj.goal == "window" else "")
    )
    store = config.store.uri or "the embedded store (CRYSTALLOOP_HOME/store)"
    lines.append(f"  store results in {store}, database {config.store.database}")
    return lines


def check(
    config_path: Path = typer.Argument(..., help="campaign YAML (`crystalloop init` writes one)"),
) -> None:
    """Validate a campaign file completely and print what it would do; writes nothing.

    Checks every section and option (a misspelt key or a generator option that does not
    exist is named), builds the generators and the surrogate, checks the objective against
    the surrogate's heads, the pseudopotentials for filters.elements and the known-crystal
    sources. Exit 0 when `crystalloop run FILE` would start; 2 with one message when not.
    """
    config = _load(config_path)
    components = _checked_components(config)
    for line in describe(config, components):
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
