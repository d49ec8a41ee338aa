"""PostgreSQL change notification: invalidate the cache when writers outside its sessions commit.

Install the triggers once per database (:func:`install`, or
``python -m yokedcache_sa.pgnotify install --url ...``), then run one listener per process::

    from yokedcache_sa.pgnotify import start_listener

    listener = start_listener(cache, engine)   # a thread with its own connection
    ...
    listener.stop()

Needs the ``pg-notify`` extra (psycopg 3): ``pip install 'yokedcache_sa[pg-notify]'``.
Added in 0.2.
"""

from __future__ import annotations

from .conninfo import DEFAULT_CHANNEL as DEFAULT_CHANNEL
from .conninfo import PgNotifyError as PgNotifyError
from .installer import TRIGGER_PREFIX as TRIGGER_PREFIX
from .installer import NotifyStatus as NotifyStatus
from .installer import install as install
from .installer import installed as installed
from .installer import uninstall as uninstall
from .listener import ListenerStats as ListenerStats
from .listener import NotifyListener as NotifyListener
from .listener import start_listener as start_listener
from .payloads import tags_of_payload as tags_of_payload

__all__ = [
    "DEFAULT_CHANNEL",
    "TRIGGER_PREFIX",
    "ListenerStats",
    "NotifyListener",
    "NotifyStatus",
    "PgNotifyError",
    "install",
    "installed",
    "start_listener",
    "tags_of_payload",
    "uninstall",
]
