"""Run a flow of steps: the generic sync and async drivers of a sans-IO generator.

A flow is a generator that yields steps and receives each step's result (or has its
exception thrown in at the ``yield``); the caller says how a step is performed. The stampede
state machine (:mod:`yokedcache_sa.stampede`), ``@cached`` (:mod:`yokedcache_sa.functions`) and
the Redis backend's command sequences are such flows. Cache operations against a backend have
their own drivers, with the circuit breaker: :mod:`yokedcache_sa.drivers`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["run_steps_async", "run_steps_sync"]

S = TypeVar("S")
T = TypeVar("T")


def run_steps_sync(
    flow: Generator[S, Any, T], perform: Callable[..., Any], *, spread: bool = False
) -> T:
    """Run a flow of non-backend steps: each yielded step is *perform*-ed and its result
    (or exception) sent back in. With *spread*, steps are argument tuples:
    ``perform(*step)`` (a Redis command for ``execute_command``)."""
    try:
        step = next(flow)
        while True:
            try:
                result = perform(*step) if spread else perform(step)  # type: ignore[misc]
            except BaseException as exc:  # cancellation too: the flow's cleanups must run
                step = flow.throw(exc)
                continue
            step = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the flow's return value is T


async def run_steps_async(
    flow: Generator[S, Any, T], perform: Callable[..., Awaitable[Any]], *, spread: bool = False
) -> T:
    """Async twin of :func:`run_steps_sync`: *perform* returns an awaitable."""
    try:
        step = next(flow)
        while True:
            try:
                result = await (perform(*step) if spread else perform(step))  # type: ignore[misc]
            except BaseException as exc:  # cancellation too: the flow's cleanups must run
                step = flow.throw(exc)
                continue
            step = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the flow's return value is T
