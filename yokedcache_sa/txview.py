"""What one transaction may be served and stored under: :class:`TransactionView`.

The ORM layer reports facts about a transaction ("a database transaction began on this
bind, snapshot-isolated or not", "a statement on it took the database snapshot", "a miss
observed this snapshot before running"); the view turns them into the two numbers the
protocol needs (docs/consistency.md, rule 6):

- the *horizon* a lookup passes to :meth:`YokedCache.lookup_sync` — ``None`` when the
  transaction is not snapshot-isolated, :data:`NOTHING_VALID` while its snapshot does not
  exist yet, else the write sequence observed before the snapshot began;
- the :class:`~.tags.Snapshot` a result computed in it is stored under — capped at the
  horizon, or none at all when nothing computed in it is provably fresh.

A *bind* is whatever the caller uses to tell databases apart (the ORM passes engines); the
view only hashes it. No I/O: where an observation of the store is needed, :meth:`begin`
says so and :meth:`observed` takes its result.

Added in 0.x.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Final

from .tags import Snapshot

__all__ = ["NOTHING_VALID", "TransactionView", "serves_nothing"]

NOTHING_VALID: Final = -1
"""A horizon no entry satisfies (tag versions are >= 0): nothing is served."""


def serves_nothing(horizon: int | None) -> bool:
    """Whether no entry can be served under *horizon* (its transaction has no snapshot yet)."""
    return horizon == NOTHING_VALID


class TransactionView:
    """The snapshot facts of one transaction and the horizon derived from them.

    Made fresh for every transaction (the ORM's session state makes one at each reset).
    """

    # Class-level defaults: a view is made for every transaction (most of which only read
    # from the cache), so making one sets nothing; the first fact replaces what it changes.
    horizon: int | None = None
    """The write sequence observed before the transaction's snapshot began, once known."""
    snapshot_isolated: bool = False
    """Some database transaction of it reads one snapshot (REPEATABLE READ, SERIALIZABLE)."""
    _seq_before_begin: int | None = None
    _begun: bool = False
    _no_store: bool = False
    # per bind begun in this transaction: is it snapshot-isolated; the binds whose database
    # snapshot exists; the binds whose every SELECT is a locking read (empty and shared
    # until a fact replaces them with the view's own)
    _isolated: Mapping[Hashable, bool] = MappingProxyType({})
    _snapshots: frozenset[Hashable] = frozenset()
    _locking: frozenset[Hashable] = frozenset()
    _joined: frozenset[Hashable] = frozenset()  # joined a snapshot older than the horizon

    # facts reported by the caller ---------------------------------------------------------

    def before_read(self, snapshot: Snapshot | None) -> None:
        """A miss observed *snapshot* and is about to run its statement (which may begin the
        database transaction: then this is the horizon, see :meth:`begin`)."""
        if snapshot is not None and not self._begun:
            self._seq_before_begin = snapshot.seq

    def read_done(self) -> None:
        """The statement announced by :meth:`before_read` has run: when it began no database
        transaction (its answer came from elsewhere), its observation is not this one's."""
        if not self._begun:
            self._seq_before_begin = None

    def begin(
        self,
        bind: Hashable,
        *,
        isolated: bool,
        ran_sql: bool = False,
        locking_reads: bool = False,
    ) -> bool:
        """A database transaction began on *bind*.

        Args:
            isolated: it reads one snapshot.
            ran_sql: it joined a database transaction that had already run SQL (its snapshot
                may predate anything observed now: nothing computed in it is stored).
            locking_reads: every SELECT on it is a locking read of the latest rows (InnoDB
                under SERIALIZABLE): none takes a snapshot, so nothing is served on it.

        Returns True when the horizon must come from an observation of the store made now:
        pass its result (None when the store could not be asked) to :meth:`observed`.
        """
        joined = ran_sql and self._begun and bind not in self._isolated
        self._isolated = {**self._isolated, bind: isolated}
        if locking_reads:
            self._locking = self._locking | {bind}
        if isolated:
            self.snapshot_isolated = True
            if joined:
                # its snapshot may predate the horizon another bind observed: nothing is
                # provably of it
                self._joined = self._joined | {bind}
                self._no_store = True
        if self.snapshot_isolated and self.horizon is None and not self._begun:
            if ran_sql:
                self._no_store = True
            elif self._seq_before_begin is not None:
                self.horizon = self._seq_before_begin
            else:
                return True
        self._began()
        return False

    def observed(self, snapshot: Snapshot | None) -> None:
        """The observation :meth:`begin` asked for (None: the store could not be asked)."""
        if snapshot is None:
            self._no_store = True
        else:
            self.horizon = snapshot.seq
        self._began()

    def _began(self) -> None:
        self._begun = True
        self._seq_before_begin = None

    def awaits_snapshot(self, bind: Hashable) -> bool:
        """Whether a plain SELECT of a table on *bind* would take the transaction's snapshot
        now (then report it with :meth:`snapshot_taken`)."""
        return (
            bind not in self._snapshots
            and self._isolated.get(bind, False)
            and bind not in self._locking
        )

    def snapshot_taken(self, bind: Hashable) -> None:
        """A statement on *bind* took (or is about to take) the transaction's database
        snapshot."""
        self._snapshots = self._snapshots | {bind}

    def snapshot_untaken(self, bind: Hashable) -> None:
        """The statement reported by :meth:`snapshot_taken` failed: the snapshot on *bind*
        may not exist (nothing is served there until another read takes it)."""
        self._snapshots = self._snapshots - {bind}

    # what the caller asks -----------------------------------------------------------------

    def isolation(self, bind: Hashable) -> bool | None:
        """Whether the transaction on *bind* is snapshot-isolated; None before it began."""
        return self._isolated.get(bind)

    def isolation_and_horizon(self, bind: Hashable) -> tuple[bool | None, int | None]:
        """``(isolation(bind), lookup_horizon(bind, isolated))`` in one call, where a
        transaction not begun on *bind* is taken as statement-level (the caller predicts
        otherwise and asks :meth:`lookup_horizon` again)."""
        isolated = self._isolated.get(bind)
        if bind in self._snapshots:
            return isolated, self.lookup_horizon(bind, bool(isolated))
        return isolated, NOTHING_VALID if isolated else None

    def has_snapshot(self, bind: Hashable) -> bool:
        """Whether the database snapshot on *bind* exists (a consistent read has run)."""
        return bind in self._snapshots

    def lookup_horizon(self, bind: Hashable, isolated: bool) -> int | None:
        """The horizon a lookup on *bind* must respect, where *isolated* says whether the
        transaction on it is (or, not begun yet, will be) snapshot-isolated.

        Before the snapshot exists nothing is served: it may be taken after a commit that
        cached data predates, so the first read goes to the database and starts it.
        """
        if bind in self._snapshots:
            if bind in self._joined:
                return NOTHING_VALID
            return self.horizon if self.horizon is not None else NOTHING_VALID
        return NOTHING_VALID if isolated else None

    def horizon_of(self, bind: Hashable) -> int | None:
        """The horizon of the snapshot on *bind*; None while it does not exist (or is not
        known): what :func:`~.peek.peek_sync` judges an entry by."""
        if bind in self._joined and bind in self._snapshots:
            return NOTHING_VALID
        return self.horizon if bind in self._snapshots else None

    def store_snapshot(self, snapshot: Snapshot) -> Snapshot | None:
        """The snapshot to store a result computed in this transaction under, having observed
        *snapshot* before computing it; None when nothing computed here is provably fresh
        (the horizon is unknown, or the transaction joined one that had already read)."""
        if self._no_store:
            return None
        seq = snapshot.seq
        if self.snapshot_isolated:
            if self.horizon is None:
                return None
            seq = min(seq, self.horizon)
        return Snapshot(snapshot.epoch, seq) if seq >= 0 else None
