"""The raw-SQL scanner: what a SQL string writes, calls and reads.

Pure (no SQLAlchemy, no I/O) and conservative: what it cannot account for is reported as
unknown (None) and the caller invalidates everything or does not cache. The lexer is
:mod:`.sqllex`, writes and calls :mod:`.sqlwrites`, the reads of a query :mod:`.sqlreads`;
this module is where the ORM layer and the tests import them from.
"""

from __future__ import annotations

from .sqllex import Name as Name
from .sqlreads import Reads as Reads
from .sqlreads import scan_reads as scan_reads
from .sqlwrites import Scan as Scan
from .sqlwrites import scan_fragment as scan_fragment
from .sqlwrites import scan_sql as scan_sql

__all__ = ["Name", "Reads", "Scan", "scan_fragment", "scan_reads", "scan_sql"]
