"""Two identical copies of one small schema, told apart by a table-name prefix.

The differential tester maps the same model shapes twice: the plain copy is read and written
only through plain Sessions (the oracle), the cached copy only through CachingSessions. Both
start from the same rows and receive the same operations, so any difference in what they
return is the cache's doing.
"""

from __future__ import annotations

import datetime as dt
import uuid as uuid_mod
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Uuid,
    event,
    insert,
)
from sqlalchemy.orm import DeclarativeBase, mapped_column, relationship


@dataclass
class Models:
    """One copy of the schema: mapped classes, the association table, real table names."""

    prefix: str
    metadata: MetaData
    User: Any
    Address: Any
    Group: Any
    Employee: Any
    Manager: Any
    Item: Any
    user_groups: Table

    def table(self, logical: str) -> str:
        """The real name of a logical table (``users`` -> ``<prefix>users``)."""
        return self.prefix + logical


def build(prefix: str, inline_subclass: bool = True) -> Models:
    """Map a fresh copy of the schema whose tables are named ``<prefix><name>``.

    ``inline_subclass`` makes queries of ``Employee`` load ``Manager``'s columns in the same
    statement; without it they are loaded on first access (see test_regressions.py).
    """
    poly_load = {"polymorphic_load": "inline"} if inline_subclass else {}

    class Base(DeclarativeBase):
        pass

    p = prefix
    user_groups = Table(
        p + "user_groups",
        Base.metadata,
        Column("user_id", ForeignKey(p + "users.id", ondelete="CASCADE"), primary_key=True),
        Column("group_id", ForeignKey(p + "groups.id", ondelete="CASCADE"), primary_key=True),
    )

    class User(Base):
        __tablename__ = p + "users"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        name = mapped_column(String(30), nullable=False)
        age = mapped_column(Integer, nullable=True)
        addresses = relationship(
            "Address", back_populates="user", order_by="Address.id", passive_deletes=True
        )
        groups = relationship(
            "Group",
            secondary=user_groups,
            back_populates="users",
            order_by="Group.id",
            passive_deletes=True,
        )

    class Address(Base):
        __tablename__ = p + "addresses"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        user_id = mapped_column(ForeignKey(p + "users.id", ondelete="CASCADE"), nullable=False)
        email = mapped_column(String(40), nullable=False)
        user = relationship("User", back_populates="addresses")

    class Group(Base):
        __tablename__ = p + "groups"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        name = mapped_column(String(30), nullable=False)
        users = relationship(
            "User",
            secondary=user_groups,
            back_populates="groups",
            order_by="User.id",
            passive_deletes=True,
        )

    class Employee(Base):
        __tablename__ = p + "employees"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        name = mapped_column(String(30), nullable=False)
        type = mapped_column(String(20), nullable=False)
        __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}

    class Manager(Employee):
        __tablename__ = p + "managers"
        id = mapped_column(ForeignKey(p + "employees.id", ondelete="CASCADE"), primary_key=True)
        budget = mapped_column(Integer, nullable=False)
        __mapper_args__ = {"polymorphic_identity": "manager", **poly_load}

    class Item(Base):
        """Column types whose Python values a cache must give back exactly."""

        __tablename__ = p + "items"
        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        made = mapped_column(DateTime, nullable=True)
        day = mapped_column(Date, nullable=True)
        flag = mapped_column(Boolean, nullable=True)
        ratio = mapped_column(Float, nullable=True)
        data = mapped_column(JSON, nullable=True)
        uid = mapped_column(Uuid, nullable=True)

    return Models(p, Base.metadata, User, Address, Group, Employee, Manager, Item, user_groups)


def seed_rows(m: Models) -> list[tuple[Any, list[dict[str, Any]]]]:
    return [
        (
            m.User.__table__,
            [
                {"id": 1, "name": "alice", "age": 30},
                {"id": 2, "name": "bob", "age": None},
                {"id": 3, "name": "carol", "age": 25},
                {"id": 4, "name": "dave", "age": 41},
            ],
        ),
        (m.Group.__table__, [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]),
        (
            m.Address.__table__,
            [
                {"id": 1, "user_id": 1, "email": "a1@x"},
                {"id": 2, "user_id": 1, "email": "a2@y"},
                {"id": 3, "user_id": 3, "email": "c@x"},
            ],
        ),
        (
            m.user_groups,
            [
                {"user_id": 1, "group_id": 1},
                {"user_id": 1, "group_id": 2},
                {"user_id": 3, "group_id": 2},
            ],
        ),
        (
            m.Employee.__table__,
            [
                {"id": 1, "name": "eve", "type": "employee"},
                {"id": 2, "name": "mallory", "type": "manager"},
                {"id": 3, "name": "trent", "type": "manager"},
            ],
        ),
        (m.Manager.__table__, [{"id": 2, "budget": 100}, {"id": 3, "budget": 50}]),
        (
            m.Item.__table__,
            [
                {
                    "id": 1,
                    "made": dt.datetime(2024, 1, 2, 3, 4, 5),
                    "day": dt.date(2024, 2, 29),
                    "flag": True,
                    "ratio": 0.25,
                    "data": {"a": [1, 2], "b": None, "c": "é"},
                    "uid": uuid_mod.UUID("1b4e28ba-2fa1-41d2-883f-0016d3cca427"),
                },
                {
                    "id": 2,
                    "made": None,
                    "day": None,
                    "flag": False,
                    "ratio": None,
                    "data": [1, "two", 3.5],
                    "uid": None,
                },
            ],
        ),
    ]


def reseed(engine: Engine, m: Models) -> None:
    """Delete every row and insert the seed rows (a plain connection: no cache involved)."""
    with engine.begin() as conn:
        for table in reversed(m.metadata.sorted_tables):
            conn.execute(table.delete())
        for table, rows in seed_rows(m):
            conn.execute(insert(table), rows)


def sqlite_engine_setup(engine: Engine) -> None:
    """Foreign keys on, WAL (readers and one writer side by side) and real SAVEPOINTs.

    pysqlite's own transaction handling breaks SAVEPOINT; the documented recipe turns it off
    and emits BEGIN from SQLAlchemy's ``begin`` event instead.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=200")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


def unique_prefix(kind: str) -> str:
    return f"yd{kind}{uuid_mod.uuid4().hex[:6]}_"
