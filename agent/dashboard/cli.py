"""CLI: `crystalloop dashboard` - serve the read-only campaign dashboard.

Why the host check lives here, before anything binds: a dashboard reachable from the network
without a token would show every campaign to anyone on it, so a non-loopback ``--host`` is
refused unless ``CRYSTALLOOP_DASHBOARD_TOKEN`` is set (``agent.dashboard.security``).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

console = Console()

HELP = (
    "Serve a read-only web dashboard over the store the daemon writes (embedded store, or "
    "MongoDB with $CRYSTALLOOP_MONGO_URI): campaigns, per-cycle plots, the candidates table "
    "with CSV/CIF downloads, each crystal in 3D, the DFT queue, model versions and the policy "
    "benchmark. Binds 127.0.0.1; another --host needs $CRYSTALLOOP_DASHBOARD_TOKEN, which "
    "every request must then carry (header, or ?token= once). Works offline: every asset is "
    "served by the dashboard itself."
)


def dashboard(
    port: int = typer.Option(8050, help="TCP port"),
    host: str = typer.Option("127.0.0.1", help="address to bind (non-loopback needs a token)"),
    uri: str | None = typer.Option(None, help="mongodb:// URI (default: env or embedded store)"),
    database: str | None = typer.Option(None, help="database name"),
    refresh: float = typer.Option(5.0, help="seconds between a page's refreshes (0: never)"),
    replay: Path | None = typer.Option(
        None, help="replay benchmark JSON for the policies page (default: the repository's)"
    ),
) -> None:
    """Serve the campaign dashboard (read-only) on http://HOST:PORT/."""
    from agent.dashboard.app import DEFAULT_REPLAY, create_app
    from agent.dashboard.security import TOKEN_ENV, check_bind
    from agent.dashboard.source import StoreSource

    token = os.environ.get(TOKEN_ENV) or None
    refused = check_bind(host, token)
    if refused:
        console.print(f"[red]error:[/red] {refused}")
        raise typer.Exit(2)
    try:
        source = StoreSource(uri, database)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    app = create_app(source, token=token, refresh=refresh, replay=replay or DEFAULT_REPLAY)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"dashboard on http://{shown}:{port}/ over {source.where()}"
        + (" (token required)" if token else "")
        + " - Ctrl-C stops it"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    app.command("dashboard", help=HELP)(dashboard)
