"""The crystalloop store: campaigns, candidates, calculations, models, events, cycles, locks.

``Store.connect()`` opens MongoDB when a ``mongodb://`` URI is configured (argument, campaign
config, ``CRYSTALLOOP_MONGO_URI``) and otherwise the embedded, file-persistent store under
``CRYSTALLOOP_HOME/store`` - same API, same tests.
"""

from agent.store.fingerprint import fingerprint
from agent.store.lock import CampaignLock, LockHeld, LockLost
from agent.store.retry import StoreUnavailable
from agent.store.settings import StoreSettings, crystalloop_home
from agent.store.store import (
    STATUSES,
    TRANSITIONS,
    InsertReport,
    InvalidTransition,
    Status,
    Store,
    now,
)

__all__ = [
    "STATUSES",
    "TRANSITIONS",
    "CampaignLock",
    "InsertReport",
    "InvalidTransition",
    "LockHeld",
    "LockLost",
    "Status",
    "Store",
    "StoreSettings",
    "StoreUnavailable",
    "crystalloop_home",
    "fingerprint",
    "now",
]
