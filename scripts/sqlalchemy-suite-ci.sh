#!/usr/bin/env bash
# SQLAlchemy's own ORM tests (the whole test/orm of the installed version) with CachingSession
# swapped in, against a plain-Session run of the same tree; every difference must be on the
# allow-list (emitted SQL only). Both modes run at once, one process each (each mode's order
# is the same as when run alone). Exit 0: no unexpected failure; 1: a behaviour difference;
# 2: the run could not be made (e.g. the SQLAlchemy sdist could not be downloaded).
set -uo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/sqlalchemy_suite.py --json --parallel
