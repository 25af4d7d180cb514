"""The `crystalloop` command: one entry point, each component registers its own commands."""

from __future__ import annotations

import typer

from agent import check, daemon_cli, store_cli
from agent.dashboard import cli as dashboard_cli
from dft import cli as dft_cli
from generators.data import cli as data_cli
from generators.voxel import cli as voxel_cli
from generators.voxel import commands as voxel_commands
from policies import cli as policies_cli

app = typer.Typer(
    name="crystalloop",
    help=(
        "Autonomous discovery of inorganic crystals: generate candidates by fingerprint "
        "inversion or with a voxel VAE, rank them with a CGCNN ensemble, relax the best with "
        "Quantum ESPRESSO, learn, repeat. Start with `crystalloop init`, `crystalloop check "
        "FILE`, `crystalloop run FILE`."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

for component in (
    store_cli,
    daemon_cli,
    check,
    data_cli,
    voxel_cli,
    voxel_commands,
    policies_cli,
    dft_cli,
    dashboard_cli,
):
    component.register(app)


if __name__ == "__main__":
    app()
