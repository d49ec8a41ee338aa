"""``python -m yokedcache_sa.pgnotify``: see :mod:`yokedcache_sa.pgnotify.cli`."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
