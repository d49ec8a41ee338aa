"""The SQLAlchemy ORM layer: cached reads, table tracking, commit-time invalidation."""

from __future__ import annotations

from .catalog import refresh_catalog as refresh_catalog
from .dependents import declare_dependency as declare_dependency
from .explain import Explanation as Explanation
from .explain import aexplain as aexplain
from .explain import explain as explain
from .options import FromCache as FromCache
from .options import NoCache as NoCache
from .routines import declare_function as declare_function
from .session import CachingQuery as CachingQuery
from .session import CachingSession as CachingSession
from .session import instrument_session as instrument_session
from .session import listen_on_session as listen_on_session
from .session import state_of as state_of
from .watch import watch_engine as watch_engine

__all__ = [
    "CachingQuery",
    "CachingSession",
    "Explanation",
    "FromCache",
    "NoCache",
    "aexplain",
    "declare_dependency",
    "declare_function",
    "explain",
    "instrument_session",
    "listen_on_session",
    "refresh_catalog",
    "state_of",
    "watch_engine",
]
