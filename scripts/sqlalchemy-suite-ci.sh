#!/usr/bin/env bash
# SQLAlchemy's own ORM tests with CachingSession swapped in: the test files that pass fully
# (every difference from a plain-Session run allow-listed as emitted SQL only). Exit 0: no
# unexpected failure; 1: a behaviour difference; 2: the run could not be made (e.g. the
# SQLAlchemy sdist could not be downloaded). The whole test/orm: scripts/sqlalchemy_suite.py.
set -uo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/sqlalchemy_suite.py --json \
  test/orm/test_mapper.py \
  test/orm/test_merge.py \
  test/orm/test_deferred.py \
  test/orm/test_composites.py \
  test/orm/test_expire.py \
  test/orm/test_eager_relations.py \
  test/orm/test_subquery_relations.py \
  test/orm/inheritance/test_polymorphic_rel.py \
  test/orm/inheritance/test_relationship.py \
  test/orm/inheritance/test_assorted_poly.py \
  test/orm/inheritance/test_poly_loading.py \
  test/orm/test_bind.py \
  test/orm/test_events.py \
  test/orm/test_scoping.py \
  test/orm/test_session.py \
  test/orm/test_query.py \
  test/orm/test_loading.py \
  test/orm/test_deprecations.py
