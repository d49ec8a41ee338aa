"""Fixtures of the integration tests: ``stack`` binds a test to SQLite + memory and to
PostgreSQL + Redis; ``astack`` is the same for async tests (it disposes the async engine in
the test's event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integrations.kit import STACKS, Stack, open_stack


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from open_stack(request.param, tmp_path)


@pytest.fixture
async def astack(stack: Stack) -> AsyncIterator[Stack]:
    try:
        yield stack
    finally:
        await stack.aengine.dispose()
