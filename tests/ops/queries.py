"""Statements the CLI's ``explain`` imports in tests (module:attribute)."""

from __future__ import annotations

import os

from sqlalchemy import Column, Integer, MetaData, String, Table, select

metadata = MetaData()
items = Table(
    os.environ.get("YC_OPS_TABLE", "ycops_items"),
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(20)),
)

by_id = select(items).where(items.c.id == 1)


def named() -> object:
    return select(items.c.name).where(items.c.name == "a")


not_a_statement = 42
