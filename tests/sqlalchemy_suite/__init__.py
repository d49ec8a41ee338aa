"""SQLAlchemy's own ORM suite with CachingSession swapped in (scripts/sqlalchemy_suite.py)."""
