"""Running a campaign as a daemon: one lock per campaign, graceful SIGTERM, detaching.

SIGTERM and SIGINT only set a flag: the loop finishes the step it is in (a step never leaves
half-written state behind) and exits. SIGKILL gives no warning; the loop's phases are written
to be repeatable, so the next `crystalloop run` resumes from the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.components import Components
from agent.config import CampaignConfig
from agent.loop import CampaignRunner
from agent.store import LockHeld, Store, crystalloop_home
from agent.store.lock import pid_alive


class StopFlag:
    """Set by SIGTERM/SIGINT (or by the lock heartbeat losing its lease)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> bool:
        return self.event.is_set()

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def open_store(config: CampaignConfig) -> Store:
    return Store.connect(config.store.uri, database=config.store.database)


class CampaignInvalid(ValueError):
    """The campaign cannot run as configured; found before anything was written."""


def check_campaign(config: CampaignConfig, components: Components) -> None:
    """Build what the configuration alone decides - generators (a generator that can produce
    nothing is an error), base compounds, pseudopotentials for the allowed elements, the
    surrogate, a FireWorks launchpad - so a bad option fails now, with one message, instead
    of inside a cycle after the campaign was stored. Built parts are kept for the run."""
    from agent.components import ComponentError, _base_structure

    for slot in components.generators:
        try:
            slot.impl  # noqa: B018 - building it is the check
        except ComponentError as exc:
            raise CampaignInvalid(str(exc)) from exc
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CampaignInvalid(f"generator {slot.config.name!r}: {exc}") from exc
        for base in slot.config.base_compounds:
            try:
                _base_structure(base)
            except (ComponentError, OSError, ValueError) as exc:
                raise CampaignInvalid(f"generator {slot.config.name!r}: {exc}") from exc
    if config.filters.elements:
        from dft.pseudos import MissingPseudoError, pseudopotentials_for
        from dft.settings import DFTSettings

        try:
            pseudopotentials_for(
                config.filters.elements, DFTSettings(**config.dft.settings_overrides())
            )
        except MissingPseudoError as exc:
            raise CampaignInvalid(f"filters.elements: {exc}") from exc
    from policies.surrogate import PROPERTIES as HEADS

    if config.objective.property not in (*HEADS, "e_above_hull"):
        raise CampaignInvalid(
            f"objective.property {config.objective.property!r}: the surrogate predicts "
            f"{', '.join(HEADS)} (and e_above_hull, from the formation energy)"
        )
    try:
        components.known  # noqa: B018 - indexes filters.known_sources (reads each file once)
    except ComponentError as exc:
        raise CampaignInvalid(str(exc)) from exc
    try:
        components.surrogate  # noqa: B018
    except (OSError, ValueError, RuntimeError) as exc:
        raise CampaignInvalid(f"surrogate: {exc}") from exc
    source = config.retraining.replay_source
    if config.retraining.enabled and source:
        # the trainer reads it only at the first retraining, long after the campaign started
        from generators.data.readers import matminer_path

        try:
            if source.startswith("matminer:"):
                matminer_path(source.split(":", 1)[1])
            elif not Path(source).is_file():
                raise FileNotFoundError(f"no such file {source}")
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise CampaignInvalid(f"retraining.replay_source: {exc}") from exc
    if config.dft.backend == "fireworks":
        try:
            components.backend  # noqa: B018
        except Exception as exc:  # noqa: BLE001 - whatever LaunchPad.auto_load raises
            raise CampaignInvalid(f"dft.backend fireworks: {type(exc).__name__}: {exc}") from exc


def run_campaign(
    config: CampaignConfig,
    report: Callable[[str], None] = print,
    components: Components | None = None,
    install_signals: bool = True,
    poll_interval: float = 2.0,
) -> dict[str, Any]:
    """Drive `config`'s campaign in this process until it completes or is stopped.

    Raises ``CampaignInvalid`` before touching the store when the configuration cannot run,
    and ``agent.loop.CampaignFailed`` (the campaign then stored as failed) when a cycle fails.
    """
    components = components or Components(config)
    check_campaign(config, components)
    stop = StopFlag()
    if install_signals:
        stop.install()
    store = open_store(config)
    try:
        with store.acquire_lock(config.name, ttl=60.0) as lock:
            if lock.took_over:
                report(f"took over a stale lock from {lock.took_over.get('owner')}")
            runner = CampaignRunner(
                config,
                store,
                components,
                should_stop=lambda: stop() or lock.lost.is_set(),
                report=report,
                poll_interval=poll_interval,
            )
            components.refresh_surrogate(store, config.name)
            return runner.run()
    finally:
        store.close()


def log_path(campaign: str) -> Path:
    folder = crystalloop_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{campaign}.log"


def detach(config_path: Path, campaign: str) -> tuple[int, Path]:
    """Start `crystalloop run CONFIG` in its own session, logging to a file; returns pid, log."""
    log = log_path(campaign)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(config_path.resolve())],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid, log


def request_stop(store: Store, campaign: str) -> str:
    """Ask the daemon to stop after its current step; signal it too when it runs on this host."""
    if not store.request_stop(campaign):
        raise KeyError(f"no campaign {campaign!r} in {store.describe()}")
    holder = store.lock_holder(campaign)
    if not holder:
        return "no daemon holds the campaign; it will not start new work"
    import socket

    pid = int(holder.get("pid") or 0)
    if holder.get("host") == socket.gethostname() and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        return f"sent SIGTERM to daemon pid {pid}; it stops after its current step"
    return f"stop requested in the store for the daemon on {holder.get('host')}"


__all__ = [
    "CampaignInvalid",
    "LockHeld",
    "StopFlag",
    "check_campaign",
    "detach",
    "open_store",
    "request_stop",
    "run_campaign",
]
