"""The operations of a random program, and the normal form their results are compared in.

Every operation is a function ``op(models, session, *args)`` that does the same thing to
either copy of the schema; ``norm`` turns what it returned into plain comparable data
(objects become their class name, unloaded attributes, column values with type names and
already-loaded relationships), so the plain copy's answer and the cached copy's answer can be
compared with ``==``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import bindparam, delete, exists, func, insert, or_, select, text, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import CursorResult, Result, Row
from sqlalchemy.orm import Session, joinedload, raiseload, selectinload

from tests.differential.schema import Models
from yokedcache_sa import FromCache

Op = Callable[..., Any]


# -- normal form ------------------------------------------------------------------------------


def rowcount(result: Result[Any]) -> int:
    """The rows a DML statement matched (a Session's ``execute`` types it as a plain Result)."""
    return cast("CursorResult[Any]", result).rowcount


def norm(value: Any, depth: int = 1) -> Any:
    """Comparable plain data: type names kept, objects flattened, Rows keep their keys."""
    if isinstance(value, Row):
        return ("Row", tuple(value._fields), tuple(norm(v, depth) for v in value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(norm(v, depth) for v in value))
    if hasattr(type(value), "_sa_class_manager"):
        return _norm_object(value, depth)
    return (type(value).__name__, value)


def _norm_object(obj: Any, depth: int) -> Any:
    state = sa_inspect(obj)
    unloaded = tuple(sorted(state.unloaded))  # before reading: reading loads expired columns
    status = next(
        s
        for s in ("transient", "pending", "persistent", "deleted", "detached")
        if getattr(state, s)
    )
    cols = tuple((a.key, norm(getattr(obj, a.key))) for a in state.mapper.column_attrs)
    rels: list[Any] = []
    if depth > 0:
        for rel in state.mapper.relationships:
            if rel.key in state.dict:
                loaded = state.dict[rel.key]
                rels.append((rel.key, norm(list(loaded) if rel.uselist else loaded, depth - 1)))
    return (type(obj).__name__, status, unloaded, cols, tuple(rels))


def session_shape(s: Session) -> Any:
    """What the identity map holds, and the pending/dirty/deleted counts."""
    keys = sorted((k[0].__name__, k[1]) for k in list(s.identity_map.keys()))
    return (keys, len(s.new), len(s.dirty), len(s.deleted))


# -- reads ------------------------------------------------------------------------------------


def get_user(m: Models, s: Session, uid: int) -> Any:
    return s.get(m.User, uid)


def get_twice(m: Models, s: Session, uid: int) -> Any:
    a = s.get(m.User, uid)
    b = s.get(m.User, uid)
    return (a is b, a)


def get_then_select(m: Models, s: Session, uid: int) -> Any:
    a = s.get(m.User, uid)
    b = s.scalars(select(m.User).where(m.User.id == uid)).first()
    return (a is b, b)


def get_employee(m: Models, s: Session, eid: int) -> Any:
    return s.get(m.Employee, eid)


def users_where(m: Models, s: Session, lo: int, limit: int, desc: bool) -> Any:
    U = m.User
    order = U.id.desc() if desc else U.id
    return s.scalars(select(U).where(U.age >= lo).order_by(order).limit(limit)).all()


def user_by_name(m: Models, s: Session, name: str) -> Any:
    return s.scalars(select(m.User).where(m.User.name == name).order_by(m.User.id)).first()


def user_columns(m: Models, s: Session, lo: int) -> Any:
    U = m.User
    stmt = select(U.id, U.name, U.age).where(or_(U.age >= lo, U.age.is_(None))).order_by(U.id)
    return s.execute(stmt).all()


def query_all(m: Models, s: Session, lo: int) -> Any:
    return s.query(m.User).filter(m.User.age >= lo).order_by(m.User.id).all()


def query_first(m: Models, s: Session, name: str) -> Any:
    return s.query(m.User).filter(m.User.name == name).order_by(m.User.id).first()


def query_count(m: Models, s: Session, lo: int) -> Any:
    return s.query(m.User).filter(m.User.age > lo).count()


def query_one_or_none(m: Models, s: Session, uid: int) -> Any:
    return s.query(m.User).filter_by(id=uid).one_or_none()


def join_addresses(m: Models, s: Session, suffix: str) -> Any:
    U, A = m.User, m.Address
    stmt = select(U).join(U.addresses).where(A.email.like("%" + suffix)).distinct().order_by(U.id)
    return s.scalars(stmt).all()


def join_groups(m: Models, s: Session, gid: int) -> Any:
    U, G = m.User, m.Group
    return s.scalars(select(U).join(U.groups).where(G.id == gid).order_by(U.id)).all()


def query_count_groups(m: Models, s: Session, gid: int) -> Any:
    return s.query(m.User).join(m.User.groups).filter(m.Group.id == gid).count()


def selectin_users(m: Models, s: Session, hi: int) -> Any:
    U = m.User
    opts = (selectinload(U.addresses), selectinload(U.groups))
    return s.scalars(select(U).options(*opts).where(U.id <= hi).order_by(U.id)).all()


def joined_users(m: Models, s: Session, hi: int) -> Any:
    U = m.User
    stmt = select(U).options(joinedload(U.addresses)).where(U.id <= hi).order_by(U.id)
    return s.scalars(stmt).unique().all()


def lazy_addresses(m: Models, s: Session, uid: int) -> Any:
    u = s.get(m.User, uid)
    return None if u is None else (u, list(u.addresses))


def lazy_user_of_address(m: Models, s: Session, aid: int) -> Any:
    a = s.get(m.Address, aid)
    return None if a is None else (a, a.user)


def lazy_group_users(m: Models, s: Session, gid: int) -> Any:
    g = s.get(m.Group, gid)
    return None if g is None else (g, list(g.users))


def params_stmt(m: Models, s: Session, lo: int) -> Any:
    U = m.User
    stmt = select(U).where(U.age > bindparam("lo")).order_by(U.id)
    return s.scalars(stmt, {"lo": lo}).all()


def query_params(m: Models, s: Session, lo: int) -> Any:
    U = m.User
    return s.query(U).filter(U.age > bindparam("lo")).params(lo=lo).order_by(U.id).all()


def text_rows(m: Models, s: Session, hi: int) -> Any:
    users = m.table("users")
    sql = text(f"SELECT id, name, age FROM {users} WHERE id <= :hi ORDER BY id")
    opts = {"yokedcache": {"tables": [users]}}
    return s.execute(sql, {"hi": hi}, execution_options=opts).all()


def text_entities(m: Models, s: Session, hi: int) -> Any:
    users = m.table("users")
    sql = text(f"SELECT id, name, age FROM {users} WHERE id <= :hi ORDER BY id")
    stmt = select(m.User).from_statement(sql).options(FromCache(tables=[users]))
    return s.scalars(stmt, {"hi": hi}).all()


def aggregates(m: Models, s: Session) -> Any:
    U = m.User
    return s.execute(
        select(
            func.count(U.id), func.sum(U.age), func.avg(U.age), func.max(U.age), func.min(U.name)
        )
    ).one()


def addresses_per_user(m: Models, s: Session) -> Any:
    A = m.Address
    stmt = select(A.user_id, func.count(A.id)).group_by(A.user_id).order_by(A.user_id)
    return s.execute(stmt).all()


def count_addresses(m: Models, s: Session) -> Any:
    return s.scalar(select(func.count()).select_from(m.Address))


def employees(m: Models, s: Session) -> Any:
    return s.scalars(select(m.Employee).order_by(m.Employee.id)).all()


def managers(m: Models, s: Session, lo: int) -> Any:
    M = m.Manager
    return s.scalars(select(M).where(M.budget >= lo).order_by(M.id)).all()


def users_with_addresses(m: Models, s: Session) -> Any:
    U, A = m.User, m.Address
    return s.scalars(select(U).where(U.id.in_(select(A.user_id))).order_by(U.id)).all()


def has_address(m: Models, s: Session, uid: int) -> Any:
    return s.scalar(select(exists().where(m.Address.user_id == uid)))


def user_address_pairs(m: Models, s: Session) -> Any:
    U, A = m.User, m.Address
    return s.execute(select(U, A).join(U.addresses).order_by(A.id)).all()


def legacy_columns(m: Models, s: Session) -> Any:
    U, A = m.User, m.Address
    q = s.query(U.name, func.count(A.id)).outerjoin(U.addresses).group_by(U.id, U.name)
    return q.order_by(U.id).all()


def identity_map(m: Models, s: Session) -> Any:
    return session_shape(s)


# -- writes -----------------------------------------------------------------------------------


def add_user(m: Models, s: Session, uid: int, name: str, age: int | None) -> Any:
    s.add(m.User(id=uid, name=name, age=age))
    s.flush()


def set_user(m: Models, s: Session, uid: int, name: str, age: int | None, flush: bool) -> Any:
    u = s.get(m.User, uid)
    if u is None:
        return None
    u.name, u.age = name, age
    if flush:
        s.flush()
    return True


def delete_user(m: Models, s: Session, uid: int) -> Any:
    u = s.get(m.User, uid)
    if u is None:
        return None
    s.delete(u)
    s.flush()
    return True


def add_address(m: Models, s: Session, aid: int, uid: int, email: str) -> Any:
    s.add(m.Address(id=aid, user_id=uid, email=email))
    s.flush()


def move_address(m: Models, s: Session, aid: int, uid: int) -> Any:
    a = s.get(m.Address, aid)
    if a is None:
        return None
    a.user_id = uid
    s.flush()
    return True


def toggle_group(m: Models, s: Session, uid: int, gid: int) -> Any:
    u, g = s.get(m.User, uid), s.get(m.Group, gid)
    if u is None or g is None:
        return None
    if g in u.groups:
        u.groups.remove(g)
    else:
        u.groups.append(g)
    s.flush()
    return True


def stmt_update_age(m: Models, s: Session, uid: int, age: int, sync: str) -> Any:
    U = m.User
    stmt = update(U).where(U.id == uid).values(age=age)
    return rowcount(s.execute(stmt, execution_options={"synchronize_session": sync}))


def stmt_bump_ages(m: Models, s: Session, lo: int) -> Any:
    U = m.User
    return rowcount(s.execute(update(U).where(U.age >= lo).values(age=U.age + 1)))


def stmt_delete_addresses(m: Models, s: Session, uid: int) -> Any:
    A = m.Address
    return rowcount(s.execute(delete(A).where(A.user_id == uid)))


def stmt_insert_group(m: Models, s: Session, gid: int, name: str) -> Any:
    s.execute(insert(m.Group).values(id=gid, name=name))


def text_rename(m: Models, s: Session, uid: int, name: str) -> Any:
    sql = text(f"UPDATE {m.table('users')} SET name = :n WHERE id = :i")
    return rowcount(s.execute(sql, {"n": name, "i": uid}))


def text_insert_address(m: Models, s: Session, aid: int, uid: int) -> Any:
    sql = text(f"INSERT INTO {m.table('addresses')} (id, user_id, email) VALUES (:a, :u, 't@x')")
    s.execute(sql, {"a": aid, "u": uid})


def conn_rename_group(m: Models, s: Session, gid: int, name: str) -> Any:
    G = m.Group.__table__
    return s.connection().execute(update(G).where(G.c.id == gid).values(name=name)).rowcount


def query_update_name(m: Models, s: Session, uid: int, name: str) -> Any:
    return s.query(m.User).filter(m.User.id == uid).update({"name": name})


def query_delete_address(m: Models, s: Session, aid: int) -> Any:
    return s.query(m.Address).filter(m.Address.id == aid).delete()


def set_budget(m: Models, s: Session, eid: int, budget: int) -> Any:
    e = s.get(m.Employee, eid)
    if not isinstance(e, m.Manager):
        return None
    e.budget = budget
    e.name = e.name[:20] + "+"
    s.flush()
    return True


def add_manager(m: Models, s: Session, eid: int, budget: int) -> Any:
    s.add(m.Manager(id=eid, name=f"m{eid}", budget=budget))
    s.flush()


def delete_employee(m: Models, s: Session, eid: int) -> Any:
    e = s.get(m.Employee, eid)
    if e is None:
        return None
    s.delete(e)
    s.flush()
    return True


def stmt_params(m: Models, s: Session, lo: int) -> Any:
    U = m.User
    stmt = select(U).where(U.age > bindparam("lo")).params(lo=lo).order_by(U.id)
    return s.scalars(stmt).all()


def raiseload_addresses(m: Models, s: Session, uid: int) -> Any:
    U = m.User
    u = s.scalars(select(U).options(raiseload(U.addresses)).where(U.id == uid)).first()
    return None if u is None else (u, list(u.addresses))


def selectin_filtered(m: Models, s: Session, suffix: str) -> Any:
    U, A = m.User, m.Address
    opt = selectinload(U.addresses.and_(A.email.like("%" + suffix)))
    return s.scalars(select(U).options(opt).order_by(U.id)).all()


def user_mappings(m: Models, s: Session, lo: int) -> Any:
    U = m.User
    stmt = select(U.id, U.name.label("who")).where(U.age >= lo).order_by(U.id)
    return [sorted(r.items()) for r in s.execute(stmt).mappings()]


def populate_existing(m: Models, s: Session, uid: int) -> Any:
    stmt = select(m.User).where(m.User.id == uid).execution_options(populate_existing=True)
    return s.scalars(stmt).first()


def refresh_user(m: Models, s: Session, uid: int) -> Any:
    u = s.get(m.User, uid)
    if u is not None:
        s.refresh(u)
    return u


def merge_user(m: Models, s: Session, uid: int, name: str) -> Any:
    return s.merge(m.User(id=uid, name=name, age=None))


def items(m: Models, s: Session) -> Any:
    return s.scalars(select(m.Item).order_by(m.Item.id)).all()


def item_columns(m: Models, s: Session) -> Any:
    It = m.Item
    cols = (It.made, It.day, It.flag, It.ratio, It.data, It.uid)
    return s.execute(select(*cols).order_by(It.id)).all()


def set_item(m: Models, s: Session, iid: int, ratio: float | None, flag: bool | None) -> Any:
    item = s.get(m.Item, iid)
    if item is None:
        return None
    item.ratio, item.flag = ratio, flag
    item.data = {"ratio": ratio, "flag": flag}
    s.flush()
    return True


# -- added for issue #9's second hunt: result APIs, locking reads, merge without load ----------


def yield_per_partitions(m: Models, s: Session, size: int) -> Any:
    U = m.User
    stmt = select(U).order_by(U.id).execution_options(yield_per=size)
    return [list(p) for p in s.scalars(stmt).partitions()]


def stream_partitions(m: Models, s: Session, size: int) -> Any:
    U = m.User
    stmt = select(U.id, U.name).order_by(U.id).execution_options(stream_results=True)
    return [list(p) for p in s.execute(stmt).partitions(size)]


def query_yield_per(m: Models, s: Session, size: int) -> Any:
    return list(s.query(m.User).order_by(m.User.id).yield_per(size))


def result_shapes(m: Models, s: Session, lo: int) -> Any:
    """columns(), tuples(), one_or_none()/first() on one result each."""
    U = m.User
    stmt = select(U.id, U.name, U.age).where(U.age >= lo).order_by(U.id)
    cols = s.execute(stmt).columns(1, 0).all()
    tuples = s.execute(stmt).tuples().all()
    first = s.execute(stmt).first()
    return cols, tuples, first


def get_populate_existing(m: Models, s: Session, uid: int) -> Any:
    return s.get(m.User, uid, populate_existing=True)


def get_for_update(m: Models, s: Session, uid: int) -> Any:
    """A locking read: it must go to the database (and on InnoDB it reads the newest
    committed row, not the transaction's snapshot)."""
    return s.get(m.User, uid, with_for_update=True, populate_existing=True)


def select_for_update(m: Models, s: Session, lo: int) -> Any:
    U = m.User
    stmt = select(U).where(U.age >= lo).order_by(U.id).with_for_update()
    return s.scalars(stmt.execution_options(populate_existing=True)).all()


def refresh_attrs(m: Models, s: Session, uid: int, attrs: tuple[str, ...]) -> Any:
    u = s.get(m.User, uid)
    if u is not None:
        s.refresh(u, list(attrs))
    return u
