"""The campaign store: every piece of state the daemon and the dashboard need, in one database.

Collections (identical on MongoDB and on the embedded SQLite backend), each with its module:

- ``campaigns``    ``_id`` = name; config, state, current cycle, stop request (campaigns).
- ``candidates``   ``_id`` = candidate id; structure (pymatgen dict), fingerprint, formula,
                   provenance, predictions, filter verdicts, score, status, cycle, timestamps
                   (candidates; status changes in transitions, the lifecycle in lifecycle).
- ``calculations`` DFT task documents, ``candidate_id`` link, formation energy, e_above_hull
                   (calculations).
- ``models``       surrogate versions: training size, hold-out metrics, weights id, deployed
                   (models).
- ``events``       append-only audit log: one document per status transition (and more kinds)
                   (events).
- ``cycles``       per-cycle statistics (events).
- ``locks``        one document per campaign driven by a daemon (locks, ``agent.store.lock``).

Connection choice, indexes and retries are in ``agent.store.connection``.
"""

from __future__ import annotations

from agent.store.calculations import CalculationsMixin
from agent.store.campaigns import CampaignsMixin
from agent.store.candidates import CandidatesMixin, InsertReport
from agent.store.connection import COLLECTIONS, INDEXES, StoreConnection, now
from agent.store.events import EventsMixin
from agent.store.lifecycle import STATUSES, TRANSITIONS, InvalidTransition, Status
from agent.store.locks import LocksMixin
from agent.store.models import ModelsMixin
from agent.store.transitions import TransitionsMixin

__all__ = [
    "COLLECTIONS",
    "INDEXES",
    "STATUSES",
    "TRANSITIONS",
    "InsertReport",
    "InvalidTransition",
    "Status",
    "Store",
    "now",
]


class Store(
    CampaignsMixin,
    CandidatesMixin,
    TransitionsMixin,
    CalculationsMixin,
    ModelsMixin,
    EventsMixin,
    LocksMixin,
    StoreConnection,
):
    """The crystalloop database. Open with ``Store.connect()``; all methods retry while the
    store is unreachable (``StoreSettings.retry_seconds``), then raise ``StoreUnavailable``."""
