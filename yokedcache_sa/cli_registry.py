"""The subcommand registry of the ``yokedcache-sa`` command, and how results are printed.

:func:`register` adds a subcommand written in Python (``(args, out) -> exit code``),
:func:`register_external` one run by a ``main(argv) -> int`` elsewhere. The built-in
subcommands are in :mod:`.cli_commands`, the entry point in :mod:`.cli`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "COMMANDS",
    "FAILURE",
    "OK",
    "USAGE",
    "Command",
    "Output",
    "UsageError",
    "fail",
    "process_info",
    "register",
    "register_external",
]

OK, FAILURE, USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument: exit code 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its arguments and what it does.

    ``run(args, out)`` returns the exit code; ``external`` names a ``module:function``
    taking the remaining argv instead (its own parser, its own help).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace, Output], int] | None = None
    external: str | None = None


COMMANDS: dict[str, Command] = {}


def register(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Callable[[argparse.Namespace, Output], int]], Callable[..., int]]:
    """Decorator: add a subcommand whose function takes ``(args, out)`` and returns an exit
    code."""

    def add(fn: Callable[[argparse.Namespace, Output], int]) -> Callable[..., int]:
        COMMANDS[name] = Command(name, help, configure, fn)
        return fn

    return add


def register_external(name: str, target: str, help: str) -> None:
    """Add a subcommand run by ``target`` (``"package.module:main"``, ``main(argv) -> int``).

    Example: ``register_external("pg-notify", "yokedcache_sa.pgnotify.cli:main", "…")``.
    """
    COMMANDS[name] = Command(name, help, external=target)


# -- output --------------------------------------------------------------------------------


def process_info() -> dict[str, Any]:
    """Which process answers: pid and host name."""
    return {"pid": os.getpid(), "hostname": socket.gethostname()}


class Output:
    """Prints a result as JSON (``--json``) or as indented ``name: value`` lines."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stdout

    def emit(self, doc: dict[str, Any]) -> None:
        if self.as_json:
            self.stream.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        else:
            self._lines(doc, 0)

    def _lines(self, doc: dict[str, Any], depth: int) -> None:
        pad = "  " * depth
        for k, v in doc.items():
            if isinstance(v, dict) and v:
                self.stream.write(f"{pad}{k}:\n")
                self._lines(v, depth + 1)
            elif isinstance(v, list | tuple):
                self.stream.write(f"{pad}{k}: {', '.join(map(str, v)) if v else '-'}\n")
            else:
                self.stream.write(f"{pad}{k}: {'-' if v is None or v == {} else v}\n")


def fail(message: str) -> None:
    """Print *message* on stderr, prefixed with the command's name."""
    sys.stderr.write(f"yokedcache-sa: {message}\n")
