"""Every private SQLAlchemy attribute the package uses still exists on the installed version."""

from __future__ import annotations

import inspect

import pytest

from yokedcache_sa.orm import _compat


@pytest.mark.parametrize(
    ("owner", "name"),
    _compat.PRIVATE_ATTRIBUTES,
    ids=[f"{o.__name__}.{n}" for o, n in _compat.PRIVATE_ATTRIBUTES],
)
def test_private_attribute_exists(owner: type, name: str) -> None:
    assert (
        hasattr(owner, name)
        or name in getattr(owner, "__slots__", ())
        or any(name in getattr(k, "__annotations__", {}) for k in owner.__mro__)
        or _assigned_in_init(owner, name)
    ), f"SQLAlchemy no longer has {owner.__name__}.{name}: update yokedcache_sa/orm/_compat.py"


def _assigned_in_init(owner: type, name: str) -> bool:
    """An instance attribute the class's ``__init__`` sets (no class attribute, no annotation)."""
    try:
        init = owner.__init__  # type: ignore[misc]  # the class's own or inherited __init__
        return f"self.{name} =" in inspect.getsource(init)
    except (OSError, TypeError):  # compiled: no source to read
        return False


def test_bind_reused_passes_other_get_bind_calls_on() -> None:
    """Inside ``bind_reused``, a flush's ``get_bind(mapper)`` (positional) reaches the
    session's own get_bind (it raised a TypeError: SQLAlchemy's test_autoflush_implicit)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.orm import Session

    from tests.orm.ormkit import User

    engine = create_engine("sqlite://")
    s = Session(engine)
    with _compat.bind_reused(s, {"clause": None}, engine):
        assert s.get_bind(inspect(User)) is engine
    assert "get_bind" not in s.__dict__
