#!/usr/bin/env bash
# The ORM suites on the lowest SQLAlchemy that pyproject.toml admits (`sqlalchemy>=X`), in a
# venv of their own (.venv-floor): the main run (scripts/test.sh) covers the newest release.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PY=${PYTHON:-python3}
floor=$(sed -n 's/^ *"sqlalchemy>=\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
[ -n "$floor" ] || { echo "no sqlalchemy>= floor in pyproject.toml" >&2; exit 1; }
if ! .venv-floor/bin/python -c "import sqlalchemy, sys, aiomysql; sys.exit(sqlalchemy.__version__ != '$floor')" 2>/dev/null; then
  "$PY" -m venv .venv-floor
  .venv-floor/bin/python -m pip install -q --upgrade pip
  .venv-floor/bin/python -m pip install -q -e ".[dev]" "sqlalchemy==$floor"
fi
echo "SQLAlchemy $(.venv-floor/bin/python -c 'import sqlalchemy; print(sqlalchemy.__version__)')"
exec .venv-floor/bin/python -m pytest -q -p no:cacheprovider tests/orm "$@"
