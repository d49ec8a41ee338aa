#!/usr/bin/env bash
# Main job: serve the demo app (SQLite file + memory backend unless DATABASE_URL /
# YOKEDCACHE_REDIS_URL say otherwise), exercise cached reads and writes over HTTP, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m integrations.fastapi_app "$@"
