#!/usr/bin/env bash
# The test suite against real PostgreSQL, MariaDB and Redis on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
