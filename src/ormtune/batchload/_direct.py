"""The direct batch: a simple one-to-many loaded straight from the children's table.

When a one-to-many joins the children's foreign key to the parents' primary key and nothing
else, ``selectinload`` does not join the parents at all ("omit join"): it selects the children
whose foreign key is in the parents' identities, groups the rows by that key and commits each
parent's collection, in the relationship's ``order_by``. The direct batch does the same from
the cohort's identities, so it needs neither a re-select of the parents nor partial population
of every parent. Whether a relationship qualifies, and the columns and ``IN`` expression to use,
come from SQLAlchemy's own ``selectin`` strategy for it; anything else (many-to-one,
many-to-many, joins on other columns or with extra criteria, aliased targets, a SQLAlchemy
whose strategy looks different) takes the re-select path, which is ``selectinload`` itself.
"""

from __future__ import annotations

import threading
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, bindparam, select
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import ONETOMANY
from sqlalchemy.orm.attributes import set_committed_value

from ormtune.batchload._handover import Batch

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import RelationshipProperty, Session
    from sqlalchemy.orm.state import InstanceState

__all__ = [
    "DirectPlan",
    "direct_plan",
    "load_directly",
    "loose_keys",
    "omitted_join_query",
    "textual_keys",
    "with_options",
]


@dataclass(frozen=True, slots=True, eq=False)
class DirectPlan:
    """How to load one relationship for many parents in one statement per chunk of keys."""

    statement: Select[Any]  # ``primary_keys`` is the expanding parameter of the parents' keys
    key_width: int  # leading columns of each row: the parent's identity, as the foreign key
    single_column: bool  # one key column: keys are bound as scalars, not 1-tuples
    textual: bool  # a key column is a string: the database may match it loosely (textual_keys)


_plans: dict[RelationshipProperty[Any], DirectPlan | None] = {}
_plans_lock = threading.Lock()


def omitted_join_query(prop: RelationshipProperty[Any]) -> tuple[Any, Select[Any]] | None:
    """SQLAlchemy's ``selectin`` query info for ``prop`` when it leaves the other side's table
    out of the query, and the statement that selects by key (the ``primary_keys`` expanding
    parameter): the key columns, then the entity. None for every other case."""
    # SQLAlchemy's own selectin strategy decides whether the other table can be left out of
    # the query; read its decision rather than repeating it.
    strategy = prop._get_strategy((("lazy", "selectin"),))
    info = getattr(strategy, "_query_info", None)
    if getattr(strategy, "omit_join", None) is not True or info is None:
        return None
    if getattr(info, "load_with_join", True):
        return None
    entity = prop.entity
    if entity.is_aliased_class or entity is not prop.mapper or not list(info.pk_cols):
        return None
    statement = (
        select(*info.pk_cols, entity)
        .select_from(entity)
        .where(info.in_expr.in_(bindparam("primary_keys")))
    )
    return info, statement


def _plan(prop: RelationshipProperty[Any]) -> DirectPlan | None:
    if prop.direction is not ONETOMANY or prop.secondary is not None:
        return None
    found = omitted_join_query(prop)
    if found is None:
        return None
    info, statement = found
    if getattr(info, "load_only_child", True):
        return None
    key_columns = list(info.pk_cols)
    if len(key_columns) != len(prop.parent.primary_key):
        return None
    if prop.order_by:
        statement = statement.order_by(*prop.order_by)
    return DirectPlan(statement, len(key_columns), bool(info.zero_idx), textual_keys(prop))


# (id of a plan's statement, id of an option) -> (both, and the statement with the option): a
# batch whose only option is its marker (one per Settings) runs the same statement object every
# time, so SQLAlchemy computes its cache key once (it keeps it on the object), not per batch.
# Bounded by plans times settings; the entry holds both objects, so their ids stay theirs.
_with_option: dict[tuple[int, int], tuple[Select[Any], object, Select[Any]]] = {}


def with_options(statement: Select[Any], options: list[Any]) -> Select[Any]:
    """``statement`` with ``options``; the same object again for the same lone option."""
    if len(options) != 1:
        return statement.options(*options) if options else statement
    option = options[0]
    key = (id(statement), id(option))
    found = _with_option.get(key)
    if found is not None and found[0] is statement and found[1] is option:
        return found[2]
    optioned = statement.options(option)
    _with_option[key] = (statement, option, optioned)
    return optioned


# Relationships whose batches met keys the database matched loosely (see load_directly): left
# to the plain lazy load for good. Relationships live as long as their mappers.
loose_keys: set[RelationshipProperty[Any]] = set()


def textual_keys(prop: RelationshipProperty[Any]) -> bool:
    """Whether ``prop`` joins on a string column: one a collation may compare loosely
    (``'abc' = 'ABC'`` case-insensitively, ``'a' = 'a '`` with space padding), where the
    database, not Python, says which rows match."""
    for pair in prop.local_remote_pairs or ():
        for column in pair:
            type_ = getattr(column, "type", None)
            impl = getattr(type_, "impl_instance", None)  # a TypeDecorator's own type
            if isinstance(impl if impl is not None else type_, String):
                return True
    return False


def direct_plan(prop: RelationshipProperty[Any]) -> DirectPlan | None:
    """The direct plan for ``prop``, or None when it must take the re-select path (memoised)."""
    try:
        return _plans[prop]
    except KeyError:
        pass
    plan = _plan(prop)
    with _plans_lock:
        _plans[prop] = plan
    return plan


def _rows(result: Any) -> Any:
    # Joined eager loads of collections on the children make the ORM insist on unique();
    # otherwise rows are taken as they come, as selectinload does.
    context = getattr(result, "context", None)
    requires = getattr(context, "requires_uniquing", None)
    if requires is False:
        return result
    return result.unique()


def load_directly(
    session: Session,
    prop: RelationshipProperty[Any],
    plan: DirectPlan,
    members: list[InstanceState[Any]],
    options: list[Any],
    chunk_size: int,
    execution_options: dict[str, Any],
    bind_arguments: dict[str, Any] | None,
    source: Batch | None,
) -> None:
    """Load ``prop`` for ``members`` with ``plan``'s statement, one query per ``chunk_size``
    parents; commit the trigger's (the first member's) collection as ``selectinload`` does,
    and leave each other parent its own until it is read (:class:`Batch`)."""
    trigger = members[0]
    batch: Batch | None = None  # made after the first query (it may autoflush)
    statement = with_options(plan.statement, options)
    width = plan.key_width
    key = prop.key
    uselist = prop.uselist
    empty: Any = () if uselist else None
    for start in range(0, len(members), chunk_size):
        chunk = members[start : start + chunk_size]
        identities = [member.key[1] for member in chunk if member.key is not None]
        keys = [identity[0] for identity in identities] if plan.single_column else identities
        result = session.execute(
            statement,
            {"primary_keys": keys},
            execution_options=execution_options,
            bind_arguments=bind_arguments,
        )
        if batch is None:
            batch = Batch(prop, session, source, members[0].load_options)
        # The children by their parent's identity: by its one key value when it has one (no
        # tuple to build and hash per row), else by the tuple of its values.
        children: defaultdict[Any, list[Any]] = defaultdict(list)
        if width == 1:
            for row in _rows(result):
                children[row[0]].append(row[1])
        else:
            for row in _rows(result):
                children[tuple(row[:width])].append(row[width])
        if not children.keys() <= set(keys):
            # A row whose key equals no parent's exactly: the database matched it loosely (a
            # case-insensitive or space-padding collation), and only it knows which parent's it
            # is. This chunk's parents take the plain lazy load, which asks the database, and
            # so does the relationship from now on.
            loose_keys.add(prop)
            continue
        session_key = session.hash_key
        for member, identity in zip(chunk, identities, strict=True):
            obj = member.obj()
            if obj is None or key in member.dict:
                continue  # gone, or loaded meanwhile (never overwritten)
            member_key = member.key
            if member_key is None or member_key[1] != identity or member._deleted:
                continue  # a flush deleted it or changed its key: a plain lazy load
            if member.session_id != session_key:
                continue  # it left the session: a plain lazy load
            found = children.get(identity[0] if width == 1 else tuple(identity), empty)
            if not uselist and found:
                if len(found) > 1:
                    warnings.warn(
                        f"Multiple rows returned with uselist=False for eagerly-loaded "
                        f"attribute '{prop}' ",
                        SAWarning,
                        stacklevel=2,
                    )
                found = found[0]
            if member is trigger:
                set_committed_value(obj, key, found)
            else:
                batch.defer(member, found)  # its own list (or the empty tuple)
