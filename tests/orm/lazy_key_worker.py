"""Print the cache keys one process stores for a get and a lazy load (run as a script)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from tests.orm.ormkit import User
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.orm import CachingSession

cache = YokedCache(CacheConfig(key_prefix="lazykeys"))
Session = sessionmaker(create_engine(sys.argv[1]), class_=CachingSession, cache=cache)
with Session() as s:
    user = s.get(User, 1)
    assert user is not None
    emails = [a.email for a in user.addresses]
keys = sorted(cache.backend._entries)  # type: ignore[attr-defined]
print(json.dumps({"keys": keys, "emails": emails}))
