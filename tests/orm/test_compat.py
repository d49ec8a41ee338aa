"""Every private SQLAlchemy attribute the package uses still exists on the installed version."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest
import sqlalchemy

import yokedcache_sa
from yokedcache_sa.orm import _compat

SA_VERSION = tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2])


@pytest.mark.parametrize(
    ("owner", "name"),
    _compat.PRIVATE_ATTRIBUTES,
    ids=[f"{o.__name__}.{n}" for o, n in _compat.PRIVATE_ATTRIBUTES],
)
def test_private_attribute_exists(owner: type, name: str) -> None:
    if name in _compat.SINCE_2_1 and SA_VERSION < (2, 1):
        assert not hasattr(owner, name)  # listed as newer than the floor: it still is
        return
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


# private names of the standard library's own protocols (NamedTuple, Enum)
_STDLIB = frozenset({"_replace", "_asdict", "_fields", "_make", "_value_", "_name_"})


def _defined_names(tree: ast.AST) -> set[str]:
    """Private names a module of ours defines: functions, classes, attributes it assigns,
    slots and keyword arguments it declares."""
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(n.name)
            if not isinstance(n, ast.ClassDef):
                out.update(a.arg for a in (*n.args.args, *n.args.kwonlyargs))
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            out.add(n.attr)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, ast.alias):
            out.add(n.asname or n.name.rsplit(".", 1)[-1])
        elif (
            isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in n.targets)
            and isinstance(n.value, ast.Tuple | ast.List)
        ):
            out.update(
                e.value
                for e in n.value.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            )
    return out


def _private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._name`` (x not self/cls) and ``getattr(x, "_name")`` in a module."""
    out = []
    for n in ast.walk(tree):
        if (
            isinstance(n, ast.Attribute)
            and n.attr.startswith("_")
            and not n.attr.startswith("__")
            and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
        ):
            out.append((n.lineno, n.attr))
        elif (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id in ("getattr", "hasattr", "setattr")
            and len(n.args) >= 2
            and isinstance(n.args[1], ast.Constant)
            and isinstance(n.args[1].value, str)
            and n.args[1].value.startswith("_")
            and not n.args[1].value.startswith("__")
        ):
            out.append((n.lineno, n.args[1].value))
    return out


def test_private_sqlalchemy_names_are_used_only_through_compat() -> None:
    """Outside ``_compat.py`` the package reads or writes no private name it does not define
    itself: each private SQLAlchemy attribute has one accessor there, listed in
    ``PRIVATE_ATTRIBUTES`` and checked above."""
    package = pathlib.Path(yokedcache_sa.__file__).parent
    trees = {p: ast.parse(p.read_text()) for p in sorted(package.rglob("*.py"))}
    ours: set[str] = set(_STDLIB).union(*(_defined_names(t) for t in trees.values()))
    listed = {name for _owner, name in _compat.PRIVATE_ATTRIBUTES}
    found = [
        f"{p.relative_to(package.parent)}:{line}: {name}"
        for p, tree in trees.items()
        if p.name not in ("_compat.py", "_compat_loading.py", "_compat_binds.py")
        for line, name in _private_uses(tree)
        if name in listed or name not in ours
    ]
    assert not found, "private SQLAlchemy names used outside orm/_compat*.py:\n" + "\n".join(found)


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
