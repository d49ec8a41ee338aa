"""The differential tester: random programs run against a plain Session and a CachingSession.

Each side owns a copy of the same schema with the same rows; every step applies one operation
to both (the same session slot on each side) and asserts the results are equal in the normal
form of ``ops.norm``: values and their Python types, row shapes and keys, identity-map
semantics, and the class of a raised exception. Up to ``SLOTS`` sessions per side are open at
once and interleaved. Writes go to at most one open transaction per side at a time (a second
writer would only wait on the first one's row locks), so a write step aimed at another slot
runs in the slot that already writes; so do locking reads (``with_for_update``), which take
row locks too. A slot's transaction may begin at an isolation level of its own
(``begin_isolated``), so snapshot-isolated readers interleave with another slot's commits.

The caching side must also *serve hits*: the test asserts it sent fewer statements than the
plain side and that the cache counted hits, so it cannot pass by never caching.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable
from typing import Any, cast

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import QueuePool

from tests.differential import ops
from tests.differential.conftest import Pair, Side
from tests.differential.schema import reseed
from yokedcache_sa.orm import CachingSession

SLOTS = 3
REPLAYED = 6

slots = st.integers(0, SLOTS - 1)
user_ids = st.integers(1, 6)
address_ids = st.integers(1, 6)
group_ids = st.integers(1, 2)
employee_ids = st.integers(1, 5)
ages = st.sampled_from([20, 26, 30, 41])
maybe_age = st.none() | ages
names = st.sampled_from(["alice", "bob", "zed"])
# what follows a write: most write steps commit, so later reads meet invalidated entries
endings = st.sampled_from([None, "commit", "commit", "rollback"])
suffixes = st.sampled_from(["x", "y", "@x", "q"])
syncs = st.sampled_from(["auto", "fetch", False])
sizes = st.integers(1, 3)
refreshed = st.sampled_from([("name",), ("age", "name"), ("addresses",), ("groups", "age")])
ratios = st.none() | st.sampled_from([0.5, -1.25, 1e-3])
flags = st.none() | st.booleans()
# isolation levels a slot's next transaction may ask for (SQLite has no REPEATABLE READ)
isolations = st.sampled_from(["REPEATABLE READ", "READ COMMITTED", "SERIALIZABLE"])


def _commit(_state: Any, s: Session) -> None:
    s.commit()  # a CachingSession's commit returns an awaitable marker: not compared


class _SideState:
    """The sessions one side has open, by slot, and their savepoint stacks."""

    def __init__(self, side: Side, maker: Callable[[], Session]) -> None:
        self.side = side
        self.maker = maker
        self.sessions: list[Session | None] = [None] * SLOTS
        self.savepoints: list[list[SessionTransaction]] = [[] for _ in range(SLOTS)]
        # what each slot's steps returned, held until the session closes: the identity map is
        # weak, and objects it drops at the garbage collector's whim would make runs differ
        self.held: list[list[Any]] = [[] for _ in range(SLOTS)]

    def session(self, slot: int, start_snapshot: bool) -> Session:
        s = self.sessions[slot]
        if s is None:
            s = self.sessions[slot] = self.maker()
        if start_snapshot and not s.in_transaction():
            # Known bug (test_snapshot_begun_by_a_hit): a snapshot-isolated transaction whose
            # first read is a cache hit has no snapshot yet and later reads newer rows than
            # the plain side's. Starting the snapshot with a real read keeps that one
            # divergence from ending most programs on MariaDB and SQLite.
            users = self.side.models.table("users")
            s.connection().exec_driver_sql(f"SELECT COUNT(*) FROM {users}").all()
        return s

    def close_all(self) -> None:
        for i, s in enumerate(self.sessions):
            if s is not None:
                s.close()
            self.sessions[i] = None
            self.savepoints[i] = []
            self.held[i] = []


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...], held: list[Any]) -> tuple[Any, str]:
    """What is compared — ("ok", normal form) or ("raise", exception class name), with the
    SQLAlchemy warnings — and, for the report only, the exception's message."""
    detail = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn(*args)
            held.append(value)
            out: Any = ("ok", ops.norm(value))
        except Exception as exc:  # the class is what is compared
            out = ("raise", type(exc).__name__)
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    sa_warnings = sorted({w.category.__name__ for w in caught if "sqlalchemy" in w.filename})
    return (out, sa_warnings), detail


def _check(what: str, results: list[tuple[Any, str]]) -> None:
    (plain, plain_detail), (cached, cached_detail) = results
    assert plain == cached, (
        f"{what}:\n  plain:  {plain!r} {plain_detail}\n  cached: {cached!r} {cached_detail}"
    )


class DifferentialMachine(RuleBasedStateMachine):
    """Random programs; ``pair`` is set on a subclass per database and cache backend."""

    pair: Pair

    def __init__(self) -> None:
        super().__init__()
        pair = self.pair
        assert pair.cache is not None
        for side in (pair.plain, pair.cached):
            reseed(side.engine, side.models)
        pair.cache.clear_sync()
        plain = sessionmaker(pair.plain.engine)
        cached = sessionmaker(pair.cached.engine, class_=CachingSession, cache=pair.cache)
        self.sides = (_SideState(pair.plain, plain), _SideState(pair.cached, cached))
        self.writing: list[bool] = [False] * SLOTS
        self.recent: list[tuple[ops.Op, tuple[Any, ...], bool]] = []
        self.start_snapshot = False  # hits before the snapshot: fixed, exercised

    # -- the one step that compares -----------------------------------------------------------

    def both(self, slot: int, op: ops.Op, *args: Any, fresh: bool = False) -> bool:
        """Apply *op* in *slot* on both sides, assert equal outcomes; True if it raised.

        ``fresh`` runs it in a session of its own, closed right after, instead of the slot's.
        """
        results = []
        for state in self.sides:
            models = state.side.models
            if fresh:
                with state.maker() as s:
                    results.append(_outcome(op, (models, s, *args), []))
                continue
            s = state.session(slot, self.start_snapshot)
            results.append(_outcome(op, (models, s, *args), state.held[slot]))
        _check(f"{op.__name__}{args} in slot {slot} on {self.pair.db}", results)
        failed = bool(results[0][0][0][0] == "raise")
        return failed

    def read(self, slot: int, op: ops.Op, *args: Any, fresh: bool = False) -> None:
        """A read step; remembered so that later writes replay it."""
        self.both(slot, op, *args, fresh=fresh)
        step = (op, args, fresh)
        if step in self.recent:
            self.recent.remove(step)
        self.recent.append(step)
        del self.recent[:-REPLAYED]

    def replay(self, slot: int) -> None:
        """Run the recent reads again in *slot*: after a write (read-your-writes) and after a
        commit (invalidation), each of them is a chance for a stale entry to show."""
        for op, args, fresh in list(self.recent):
            self.both(slot, op, *args, fresh=fresh)

    def writer_slot(self, slot: int) -> int:
        """*slot*, or the slot whose transaction writes already (one writer per side)."""
        for other in range(SLOTS):
            if other != slot and self.writing[other]:
                return other
        return slot

    def write(self, slot: int, op: ops.Op, *args: Any, end: str | None = None) -> None:
        slot = self.writer_slot(slot)
        self.writing[slot] = True
        self.both(slot, op, *args)
        if end == "commit":
            self.commit(slot)
        elif end == "rollback":
            self.rollback(slot)
        else:
            self.replay(slot)

    def control(self, slot: int, name: str, fn: Callable[[_SideState, Session], Any]) -> None:
        results = []
        for state in self.sides:
            s = state.session(slot, self.start_snapshot)
            results.append(_outcome(fn, (state, s), state.held[slot]))
        _check(f"{name} in slot {slot} on {self.pair.db}", results)

    def teardown(self) -> None:
        for state in self.sides:
            state.close_all()
        # a connection still checked out after every session closed holds locks (a leak)
        held = [cast(QueuePool, state.side.engine.pool).checkedout() for state in self.sides]
        assert held[1] == held[0], f"connections still checked out (plain, cached): {held}"

    # -- reads --------------------------------------------------------------------------------

    @rule(slot=slots, uid=user_ids)
    def get_user(self, slot: int, uid: int) -> None:
        self.read(slot, ops.get_user, uid)

    @rule(slot=slots, uid=user_ids)
    def get_twice(self, slot: int, uid: int) -> None:
        self.read(slot, ops.get_twice, uid)

    @rule(slot=slots, uid=user_ids)
    def get_then_select(self, slot: int, uid: int) -> None:
        self.read(slot, ops.get_then_select, uid)

    @rule(slot=slots, eid=employee_ids)
    def get_employee(self, slot: int, eid: int) -> None:
        self.read(slot, ops.get_employee, eid)

    @rule(slot=slots, lo=ages, limit=st.integers(1, 4), desc=st.booleans())
    def users_where(self, slot: int, lo: int, limit: int, desc: bool) -> None:
        self.read(slot, ops.users_where, lo, limit, desc)

    @rule(slot=slots, name=names)
    def user_by_name(self, slot: int, name: str) -> None:
        self.read(slot, ops.user_by_name, name)

    @rule(slot=slots, lo=ages)
    def user_columns(self, slot: int, lo: int) -> None:
        self.read(slot, ops.user_columns, lo)

    @rule(slot=slots, lo=ages)
    def query_all(self, slot: int, lo: int) -> None:
        self.read(slot, ops.query_all, lo)

    @rule(slot=slots, name=names)
    def query_first(self, slot: int, name: str) -> None:
        self.read(slot, ops.query_first, name)

    @rule(slot=slots, lo=ages)
    def query_count(self, slot: int, lo: int) -> None:
        self.read(slot, ops.query_count, lo)

    @rule(slot=slots, uid=user_ids)
    def query_one_or_none(self, slot: int, uid: int) -> None:
        self.read(slot, ops.query_one_or_none, uid)

    @rule(slot=slots, suffix=suffixes)
    def join_addresses(self, slot: int, suffix: str) -> None:
        self.read(slot, ops.join_addresses, suffix)

    @rule(slot=slots, gid=group_ids)
    def join_groups(self, slot: int, gid: int) -> None:
        self.read(slot, ops.join_groups, gid)

    @rule(slot=slots, gid=group_ids)
    def query_count_groups(self, slot: int, gid: int) -> None:
        self.read(slot, ops.query_count_groups, gid)

    @rule(slot=slots, hi=user_ids)
    def selectin_users(self, slot: int, hi: int) -> None:
        self.read(slot, ops.selectin_users, hi)

    @rule(slot=slots, hi=user_ids)
    def joined_users(self, slot: int, hi: int) -> None:
        self.read(slot, ops.joined_users, hi)

    @rule(slot=slots, uid=user_ids)
    def lazy_addresses(self, slot: int, uid: int) -> None:
        self.read(slot, ops.lazy_addresses, uid)

    @rule(slot=slots, aid=address_ids)
    def lazy_user_of_address(self, slot: int, aid: int) -> None:
        self.read(slot, ops.lazy_user_of_address, aid)

    @rule(slot=slots, gid=group_ids)
    def lazy_group_users(self, slot: int, gid: int) -> None:
        self.read(slot, ops.lazy_group_users, gid)

    @rule(slot=slots, lo=ages)
    def params_stmt(self, slot: int, lo: int) -> None:
        self.read(slot, ops.params_stmt, lo)

    @rule(slot=slots, lo=ages)
    def query_params(self, slot: int, lo: int) -> None:
        self.read(slot, ops.query_params, lo)

    @rule(slot=slots, lo=ages)
    def stmt_params(self, slot: int, lo: int) -> None:
        self.read(slot, ops.stmt_params, lo)

    @rule(slot=slots, uid=user_ids)
    def raiseload_addresses(self, slot: int, uid: int) -> None:
        self.read(slot, ops.raiseload_addresses, uid)

    @rule(slot=slots, suffix=suffixes)
    def selectin_filtered(self, slot: int, suffix: str) -> None:
        self.read(slot, ops.selectin_filtered, suffix)

    @rule(slot=slots, lo=ages)
    def user_mappings(self, slot: int, lo: int) -> None:
        self.read(slot, ops.user_mappings, lo)

    @rule(slot=slots, uid=user_ids)
    def populate_existing(self, slot: int, uid: int) -> None:
        self.read(slot, ops.populate_existing, uid)

    @rule(slot=slots, uid=user_ids)
    def refresh_user(self, slot: int, uid: int) -> None:
        self.read(slot, ops.refresh_user, uid)

    @rule(slot=slots)
    def items(self, slot: int) -> None:
        self.read(slot, ops.items)

    @rule(slot=slots)
    def item_columns(self, slot: int) -> None:
        self.read(slot, ops.item_columns)

    @rule(slot=slots, hi=user_ids)
    def text_rows(self, slot: int, hi: int) -> None:
        self.read(slot, ops.text_rows, hi)

    @rule(slot=slots, hi=user_ids)
    def text_entities(self, slot: int, hi: int) -> None:
        self.read(slot, ops.text_entities, hi)

    @rule(slot=slots)
    def aggregates(self, slot: int) -> None:
        self.read(slot, ops.aggregates)

    @rule(slot=slots)
    def addresses_per_user(self, slot: int) -> None:
        self.read(slot, ops.addresses_per_user)

    @rule(slot=slots)
    def count_addresses(self, slot: int) -> None:
        self.read(slot, ops.count_addresses)

    @rule(slot=slots)
    def employees(self, slot: int) -> None:
        self.read(slot, ops.employees)

    @rule(slot=slots, lo=st.integers(0, 120))
    def managers(self, slot: int, lo: int) -> None:
        self.read(slot, ops.managers, lo)

    @rule(slot=slots)
    def users_with_addresses(self, slot: int) -> None:
        self.read(slot, ops.users_with_addresses)

    @rule(slot=slots, uid=user_ids)
    def has_address(self, slot: int, uid: int) -> None:
        self.read(slot, ops.has_address, uid)

    @rule(slot=slots)
    def user_address_pairs(self, slot: int) -> None:
        self.read(slot, ops.user_address_pairs)

    @rule(slot=slots)
    def legacy_columns(self, slot: int) -> None:
        self.read(slot, ops.legacy_columns)

    @rule(slot=slots)
    def identity_map(self, slot: int) -> None:
        self.read(slot, ops.identity_map)

    @rule(slot=slots, size=sizes)
    def yield_per_partitions(self, slot: int, size: int) -> None:
        self.read(slot, ops.yield_per_partitions, size)

    @rule(slot=slots, size=sizes)
    def stream_partitions(self, slot: int, size: int) -> None:
        self.read(slot, ops.stream_partitions, size)

    @rule(slot=slots, size=sizes)
    def query_yield_per(self, slot: int, size: int) -> None:
        self.read(slot, ops.query_yield_per, size)

    @rule(slot=slots, lo=ages)
    def result_shapes(self, slot: int, lo: int) -> None:
        self.read(slot, ops.result_shapes, lo)

    @rule(slot=slots, uid=user_ids)
    def get_populate_existing(self, slot: int, uid: int) -> None:
        self.read(slot, ops.get_populate_existing, uid)

    @rule(slot=slots, uid=user_ids, attrs=refreshed)
    def refresh_attrs(self, slot: int, uid: int, attrs: tuple[str, ...]) -> None:
        self.read(slot, ops.refresh_attrs, uid, attrs)

    # -- locking reads: they take row locks, so they run in the writing slot, as writes do ---

    @rule(slot=slots, uid=user_ids)
    def get_for_update(self, slot: int, uid: int) -> None:
        self.write(slot, ops.get_for_update, uid)

    @rule(slot=slots, lo=ages)
    def select_for_update(self, slot: int, lo: int) -> None:
        self.write(slot, ops.select_for_update, lo)

    # -- writes -------------------------------------------------------------------------------

    @rule(slot=slots, uid=user_ids, name=names, age=maybe_age, end=endings)
    def add_user(self, slot: int, uid: int, name: str, age: int | None, end: str | None) -> None:
        self.write(slot, ops.add_user, uid, name, age, end=end)

    @rule(slot=slots, uid=user_ids, name=names, age=maybe_age, flush=st.booleans(), end=endings)
    def set_user(
        self, slot: int, uid: int, name: str, age: int | None, flush: bool, end: str | None
    ) -> None:
        self.write(slot, ops.set_user, uid, name, age, flush, end=end)

    @rule(slot=slots, uid=user_ids, end=endings)
    def delete_user(self, slot: int, uid: int, end: str | None) -> None:
        self.write(slot, ops.delete_user, uid, end=end)

    @rule(
        slot=slots,
        aid=address_ids,
        uid=user_ids,
        email=st.sampled_from(["n@x", "n@y"]),
        end=endings,
    )
    def add_address(self, slot: int, aid: int, uid: int, email: str, end: str | None) -> None:
        self.write(slot, ops.add_address, aid, uid, email, end=end)

    @rule(slot=slots, aid=address_ids, uid=user_ids, end=endings)
    def move_address(self, slot: int, aid: int, uid: int, end: str | None) -> None:
        self.write(slot, ops.move_address, aid, uid, end=end)

    @rule(slot=slots, uid=user_ids, gid=group_ids, end=endings)
    def toggle_group(self, slot: int, uid: int, gid: int, end: str | None) -> None:
        self.write(slot, ops.toggle_group, uid, gid, end=end)

    @rule(slot=slots, uid=user_ids, age=ages, sync=syncs, end=endings)
    def stmt_update_age(self, slot: int, uid: int, age: int, sync: Any, end: str | None) -> None:
        self.write(slot, ops.stmt_update_age, uid, age, sync, end=end)

    @rule(slot=slots, lo=ages, end=endings)
    def stmt_bump_ages(self, slot: int, lo: int, end: str | None) -> None:
        self.write(slot, ops.stmt_bump_ages, lo, end=end)

    @rule(slot=slots, uid=user_ids, end=endings)
    def stmt_delete_addresses(self, slot: int, uid: int, end: str | None) -> None:
        self.write(slot, ops.stmt_delete_addresses, uid, end=end)

    @rule(slot=slots, gid=group_ids, name=names, end=endings)
    def stmt_insert_group(self, slot: int, gid: int, name: str, end: str | None) -> None:
        self.write(slot, ops.stmt_insert_group, gid, name, end=end)

    @rule(slot=slots, uid=user_ids, name=names, end=endings)
    def text_rename(self, slot: int, uid: int, name: str, end: str | None) -> None:
        self.write(slot, ops.text_rename, uid, name, end=end)

    @rule(slot=slots, aid=address_ids, uid=user_ids, end=endings)
    def text_insert_address(self, slot: int, aid: int, uid: int, end: str | None) -> None:
        self.write(slot, ops.text_insert_address, aid, uid, end=end)

    @rule(slot=slots, gid=group_ids, name=names, end=endings)
    def conn_rename_group(self, slot: int, gid: int, name: str, end: str | None) -> None:
        self.write(slot, ops.conn_rename_group, gid, name, end=end)

    @rule(slot=slots, uid=user_ids, name=names, end=endings)
    def query_update_name(self, slot: int, uid: int, name: str, end: str | None) -> None:
        self.write(slot, ops.query_update_name, uid, name, end=end)

    @rule(slot=slots, aid=address_ids, end=endings)
    def query_delete_address(self, slot: int, aid: int, end: str | None) -> None:
        self.write(slot, ops.query_delete_address, aid, end=end)

    @rule(slot=slots, eid=employee_ids, budget=st.integers(0, 120), end=endings)
    def set_budget(self, slot: int, eid: int, budget: int, end: str | None) -> None:
        self.write(slot, ops.set_budget, eid, budget, end=end)

    @rule(slot=slots, eid=employee_ids, budget=st.integers(0, 120), end=endings)
    def add_manager(self, slot: int, eid: int, budget: int, end: str | None) -> None:
        self.write(slot, ops.add_manager, eid, budget, end=end)

    @rule(slot=slots, eid=employee_ids, end=endings)
    def delete_employee(self, slot: int, eid: int, end: str | None) -> None:
        self.write(slot, ops.delete_employee, eid, end=end)

    @rule(slot=slots, uid=user_ids, name=names, end=endings)
    def merge_user(self, slot: int, uid: int, name: str, end: str | None) -> None:
        self.write(slot, ops.merge_user, uid, name, end=end)

    @rule(slot=slots, iid=st.integers(1, 3), ratio=ratios, flag=flags, end=endings)
    def set_item(
        self, slot: int, iid: int, ratio: float | None, flag: bool | None, end: str | None
    ) -> None:
        self.write(slot, ops.set_item, iid, ratio, flag, end=end)

    @rule(slot=slots, uid=user_ids, load=st.booleans(), end=endings)
    def merge_detached(self, slot: int, uid: int, load: bool, end: str | None) -> None:
        """An object read (maybe from the cache) in a session of its own, merged into the
        slot's session with or without loading (a write when it differs)."""

        def fn(state: _SideState, s: Session) -> Any:
            with state.maker() as other:
                u = other.get(state.side.models.User, uid)
            return None if u is None else s.merge(u, load=load)

        slot = self.writer_slot(slot)
        self.writing[slot] = True
        self.control(slot, f"merge_detached({uid}, load={load})", fn)
        if end == "commit":
            self.commit(slot)
        elif end == "rollback":
            self.rollback(slot)

    # -- transactions and session lifecycle ---------------------------------------------------

    @rule(slot=slots)
    def commit(self, slot: int) -> None:
        self.control(slot, "commit", _commit)
        self.writing[slot] = False
        for state in self.sides:
            state.savepoints[slot] = []
        self.replay((slot + 1) % SLOTS)

    @rule(slot=slots)
    def rollback(self, slot: int) -> None:
        self.control(slot, "rollback", lambda _st, s: s.rollback())
        self.writing[slot] = False
        for state in self.sides:
            state.savepoints[slot] = []

    @rule(slot=slots)
    def close(self, slot: int) -> None:
        self.control(slot, "close", lambda _st, s: s.close())
        self.writing[slot] = False
        for state in self.sides:
            state.savepoints[slot] = []
            state.sessions[slot] = None
            state.held[slot] = []

    @rule(slot=slots)
    def expire_all(self, slot: int) -> None:
        self.control(slot, "expire_all", lambda _st, s: s.expire_all())

    @rule(slot=slots)
    def begin_nested(self, slot: int) -> None:
        def fn(state: _SideState, s: Session) -> None:
            state.savepoints[slot].append(s.begin_nested())

        self.control(slot, "begin_nested", fn)

    @rule(slot=slots, level=isolations)
    def begin_isolated(self, slot: int, level: str) -> None:
        """Begin the slot's next transaction at *level* (nothing if one is open): snapshot
        isolation with interleaved commits of the other slots."""
        if self.pair.db == "sqlite":
            level = "SERIALIZABLE"  # SQLite's only level besides READ UNCOMMITTED
        elif self.pair.db == "mariadb" and level == "SERIALIZABLE":
            # every InnoDB SELECT is then a locking read: readers would only make the writing
            # slot wait out innodb_lock_wait_timeout, on both sides alike
            level = "REPEATABLE READ"

        # Whether a transaction is open is the plain side's answer for both: a session that
        # served only hits has not begun one (docs/orm.md, "session state")
        opened = self.sides[0].session(slot, self.start_snapshot).in_transaction()

        def fn(_state: _SideState, s: Session) -> Any:
            if opened:
                return None
            s.connection(execution_options={"isolation_level": level})
            return level

        self.control(slot, f"begin {level}", fn)

    @rule(slot=slots, commit=st.booleans())
    def end_savepoint(self, slot: int, commit: bool) -> None:
        def fn(state: _SideState, s: Session) -> Any:
            stack = state.savepoints[slot]
            if not stack:
                return None
            sp = stack.pop()
            if not sp.is_active:
                return "inactive"
            if commit:
                sp.commit()
            else:
                sp.rollback()
            return True

        self.control(slot, f"savepoint {'release' if commit else 'rollback'}", fn)


def _settings(long: bool) -> settings:
    factor = 10 if long else 1
    # YOKEDCACHE_DIFF_EXAMPLES=N: exactly N programs (size a hunt to the time there is)
    examples = int(os.environ.get("YOKEDCACHE_DIFF_EXAMPLES", "0")) or 30 * factor
    return settings(
        max_examples=examples,
        stateful_step_count=30 * (2 if long else 1),
        deadline=None,
        derandomize=not long,
        database=None,
        # YOKEDCACHE_DIFF_NO_SHRINK=1 reports the first failing program as found: when one
        # failure leaves state behind (a leaked connection), shrinking blames later programs
        phases=[Phase.explicit, Phase.generate]
        if os.environ.get("YOKEDCACHE_DIFF_NO_SHRINK")
        else [Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        report_multiple_bugs=False,
    )


def test_plain_and_cached_sessions_agree(pair: Pair, diff_long: bool) -> None:
    machine = type("Machine", (DifferentialMachine,), {"pair": pair})
    # No cyclic garbage collection during the run: which unreferenced objects the weak
    # identity map still holds must not depend on when the collector happens to run.
    gc.disable()
    try:
        run_state_machine_as_test(machine, settings=_settings(diff_long))
    finally:
        gc.enable()
        gc.collect()
    assert pair.cache is not None
    stats = pair.cache.get_stats_sync()
    assert stats.hits > 0, "the caching side never served a hit: the test proves nothing"
    assert pair.cached.statements < pair.plain.statements, (
        f"the caching side sent {pair.cached.statements} statements, the plain side "
        f"{pair.plain.statements}: no reads were served from the cache"
    )
