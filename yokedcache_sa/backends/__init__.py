"""Cache stores: bytes in, bytes out, plus the atomic tag-version steps."""

from __future__ import annotations

from .base import Backend as Backend
from .base import Fetched as Fetched
from .base import StoreOutcome as StoreOutcome
from .memory import MemoryBackend as MemoryBackend

__all__ = ["Backend", "Fetched", "MemoryBackend", "StoreOutcome"]
