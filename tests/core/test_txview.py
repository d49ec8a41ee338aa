"""The transaction view: horizons and store snapshots from a transaction's facts. No Redis,
no database: binds are plain strings, observations plain Snapshots."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hs

from yokedcache_sa.keys import MISSING
from yokedcache_sa.state import Lookup
from yokedcache_sa.tags import Snapshot, tag_id
from yokedcache_sa.txview import NOTHING_VALID, TransactionView, serves_nothing


def test_a_transaction_without_snapshot_isolation_has_no_horizon() -> None:
    v = TransactionView()
    assert v.lookup_horizon("pg", isolated=False) is None  # not begun, predicted
    assert v.begin("pg", isolated=False) is False  # no observation needed
    assert v.isolation("pg") is False
    assert v.lookup_horizon("pg", isolated=False) is None
    assert not v.awaits_snapshot("pg")
    assert v.store_snapshot(Snapshot("ep", 9, 3, True)) == Snapshot("ep", 9)


def test_the_sequence_a_miss_observed_before_begin_becomes_the_horizon() -> None:
    v = TransactionView()
    assert v.lookup_horizon("pg", isolated=True) == NOTHING_VALID
    assert serves_nothing(v.lookup_horizon("pg", isolated=True))
    v.before_read(Snapshot("ep", 5))
    assert v.begin("pg", isolated=True) is False  # the miss's observation serves
    assert v.horizon == 5
    # nothing served until a consistent read took the database snapshot
    assert v.lookup_horizon("pg", isolated=True) == NOTHING_VALID
    assert v.horizon_of("pg") is None
    assert v.awaits_snapshot("pg")
    v.snapshot_taken("pg")
    assert not v.awaits_snapshot("pg")
    assert v.has_snapshot("pg")
    assert v.lookup_horizon("pg", isolated=True) == 5
    assert v.horizon_of("pg") == 5
    # a result computed later is stored as of the horizon, never newer
    assert v.store_snapshot(Snapshot("ep", 8)) == Snapshot("ep", 5)
    assert v.store_snapshot(Snapshot("ep", 3)) == Snapshot("ep", 3)
    # a later miss's observation does not move it
    v.before_read(Snapshot("ep", 8))
    assert v.begin("other", isolated=True) is False
    assert v.horizon == 5


def test_a_begin_with_no_prior_observation_asks_for_one() -> None:
    v = TransactionView()
    assert v.begin("pg", isolated=True) is True
    v.observed(Snapshot("ep", 12))
    assert v.horizon == 12
    assert v.begin("pg2", isolated=True) is False


def test_an_observation_that_failed_stores_nothing_in_the_transaction() -> None:
    v = TransactionView()
    assert v.begin("pg", isolated=True) is True
    v.observed(None)
    assert v.horizon is None
    v.snapshot_taken("pg")
    assert v.lookup_horizon("pg", isolated=True) == NOTHING_VALID
    assert v.store_snapshot(Snapshot("ep", 3)) is None


def test_joining_a_transaction_that_already_ran_sql_stores_nothing() -> None:
    v = TransactionView()
    v.before_read(Snapshot("ep", 4))
    assert v.begin("pg", isolated=True, ran_sql=True) is False
    assert v.horizon is None
    assert v.store_snapshot(Snapshot("ep", 4)) is None


def test_locking_reads_never_take_the_snapshot() -> None:
    v = TransactionView()
    v.before_read(Snapshot("ep", 2))
    v.begin("maria", isolated=True, locking_reads=True)
    assert not v.awaits_snapshot("maria")
    assert v.lookup_horizon("maria", isolated=True) == NOTHING_VALID
    assert v.store_snapshot(Snapshot("ep", 6)) == Snapshot("ep", 2)  # still stored


def test_an_isolated_bind_begun_after_a_statement_level_one_stores_nothing() -> None:
    # the horizon is taken at the transaction's first begin only: a snapshot-isolated bind
    # begun later has none it could be proven against
    v = TransactionView()
    v.before_read(Snapshot("ep", 7))
    v.begin("sqlite", isolated=False)
    assert v.begin("pg", isolated=True) is False
    assert v.horizon is None
    assert v.lookup_horizon("sqlite", isolated=False) is None
    assert v.store_snapshot(Snapshot("ep", 11)) is None


def test_negative_sequences_are_never_stored() -> None:
    assert TransactionView().store_snapshot(Snapshot("ep", -1)) is None


def test_a_lookup_depends_on_written_tags_by_their_backend_ids() -> None:
    huge = "table:" + "x" * 200  # its backend id is a hash
    look = Lookup(MISSING, Snapshot("ep", 1), ("*", tag_id(huge), "table:a"))
    assert look.depends_on({huge})
    assert look.depends_on(["table:a", "table:b"])
    assert not look.depends_on({"table:b"})
    assert not look.depends_on(set())


def test_snapshots_with_the_same_versions() -> None:
    assert Snapshot("ep", 1, 4).same_versions(Snapshot("ep", 9, 4, True))
    assert not Snapshot("ep", 1, 4).same_versions(Snapshot("ep", 1, 5))
    assert not Snapshot("ep", 1, 4).same_versions(Snapshot("other", 1, 4))


# -- against the arithmetic the ORM layer did before (reference model) --------------------


class _OldArithmetic:
    """The horizon bookkeeping as ``orm/session.py``'s listeners wrote it, inline."""

    def __init__(self) -> None:
        self.horizon: int | None = None
        self.seq_before_begin: int | None = None
        self.snapshot_isolated = False
        self.isolated: dict[Any, bool] = {}
        self.snapshots: set[Any] = set()
        self.locking: set[Any] = set()
        self.conn_begun = False
        self.no_store = False
        # binds that joined a database transaction which had read before the horizon was
        # observed on another bind (added since: its snapshot may predate the horizon)
        self.joined: set[Any] = set()

    def before_read(self, snap: Snapshot | None) -> None:
        if snap is not None and not self.conn_begun:
            self.seq_before_begin = snap.seq

    def begin(self, bind: str, isolated: bool, ran: bool, locking: bool, obs: Any) -> None:
        if isolated and ran and self.conn_begun and bind not in self.isolated:
            self.joined.add(bind)
            self.no_store = True
        self.isolated[bind] = isolated
        if locking:
            self.locking.add(bind)
        if isolated:
            self.snapshot_isolated = True
        if self.snapshot_isolated and self.horizon is None and not self.conn_begun:
            if ran:
                self.no_store = True
            elif self.seq_before_begin is not None:
                self.horizon = self.seq_before_begin
            elif obs is None:
                self.no_store = True
            else:
                self.horizon = obs.seq
        self.conn_begun = True
        self.seq_before_begin = None

    def executed(self, bind: str) -> None:
        if bind in self.snapshots or not self.isolated.get(bind):
            return
        if bind in self.locking:
            return
        self.snapshots.add(bind)

    def lookup_horizon(self, bind: str, predicted: bool) -> int | None:
        if bind in self.snapshots:
            if bind in self.joined:
                return -1
            return self.horizon if self.horizon is not None else -1
        isolated = self.isolated.get(bind)
        if isolated is None:
            isolated = predicted
        return -1 if isolated else None

    def store(self, snap: Snapshot) -> Snapshot | None:
        if self.no_store:
            return None
        seq = snap.seq
        if self.snapshot_isolated and self.horizon is not None:
            seq = min(seq, self.horizon)
        elif self.snapshot_isolated:
            seq = -1
        return Snapshot(snap.epoch, seq) if seq >= 0 else None


_binds = hs.sampled_from(["a", "b", "c"])
_snaps = hs.builds(Snapshot, hs.just("ep"), hs.integers(0, 50))
_events = hs.one_of(
    hs.tuples(hs.just("read"), hs.none() | _snaps),
    hs.tuples(
        hs.just("begin"), _binds, hs.booleans(), hs.booleans(), hs.booleans(), hs.none() | _snaps
    ),
    hs.tuples(hs.just("exec"), _binds),
)


@settings(max_examples=400, deadline=None)
@given(hs.lists(_events, max_size=12), _binds, hs.booleans(), _snaps)
def test_the_view_computes_what_the_orm_layer_computed(
    events: list[Any], bind: str, predicted: bool, later: Snapshot
) -> None:
    old, new = _OldArithmetic(), TransactionView()
    for ev in events:
        if ev[0] == "read":
            old.before_read(ev[1])
            new.before_read(ev[1])
        elif ev[0] == "begin":
            _, b, isolated, ran, locking, obs = ev
            old.begin(b, isolated, ran, locking, obs)
            if new.begin(b, isolated=isolated, ran_sql=ran, locking_reads=locking):
                new.observed(obs)
        else:
            old.executed(ev[1])
            if new.awaits_snapshot(ev[1]):
                new.snapshot_taken(ev[1])
        isolated = new.isolation(bind)
        assert new.lookup_horizon(
            bind, predicted if isolated is None else isolated
        ) == old.lookup_horizon(bind, predicted)
        # the read path's one call: the isolation, and the horizon it gives (a transaction
        # not begun taken as statement-level)
        assert new.isolation_and_horizon(bind) == (
            isolated,
            new.lookup_horizon(bind, bool(isolated)),
        )
        assert new.store_snapshot(later) == old.store(later)
        seen = -1 if bind in old.joined else old.horizon
        assert new.horizon_of(bind) == (seen if bind in old.snapshots else None)
        assert new.snapshot_isolated == old.snapshot_isolated
