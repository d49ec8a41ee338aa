"""Lazy resolution of names from the ORM and integration layers."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CachingSession": "yokedcache_sa.orm",
    "CachingQuery": "yokedcache_sa.orm",
    "FromCache": "yokedcache_sa.orm",
    "NoCache": "yokedcache_sa.orm",
    "instrument_session": "yokedcache_sa.orm",
    "cached": "yokedcache_sa.functions",
    "cached_dependency": "yokedcache_sa.integrations.fastapi",
    "cache_router": "yokedcache_sa.integrations.fastapi",
}


def resolve(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'yokedcache_sa' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
