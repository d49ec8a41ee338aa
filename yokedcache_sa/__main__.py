"""``python -m yokedcache_sa``: the command line (see :mod:`yokedcache_sa.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
