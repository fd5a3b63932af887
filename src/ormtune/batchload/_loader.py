"""The batch load: on the first lazy load of a relationship in a cohort, load it for the cohort.

A one-to-many that ``selectinload`` would load without the parents is loaded directly from the
children's table (``_direct.py``), unless a member has expired attributes. Every other shape
takes the re-select path: SQLAlchemy's own ``selectinload`` does the loading, so the object
graph is exactly what ``selectinload`` gives (identities, per-parent ``order_by``, secondary
tables, inheritance, composite keys). It needs parent rows to hang the children on, so the
batch re-selects the cohort's parents by primary key with ``selectinload(R)``: for objects
already in the identity map SQLAlchemy only fills in what is not loaded, and ``selectinload``
skips every parent whose ``R`` is already loaded, so nothing the application set is ever
overwritten. The lazy load that triggered the batch is then answered from what the batch
loaded, without SQL of its own.
"""

from __future__ import annotations

import inspect as pyinspect
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, select, tuple_
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import MANYTOONE, load_only, loading, selectinload
from sqlalchemy.orm.base import instance_state

from ormtune.batchload._direct import direct_plan, load_directly, loose_keys
from ormtune.batchload._handover import (
    Batch,
    is_stale_batched,
    rebatch_limit,
    rebatch_source,
)
from ormtune.batchload._options import (
    DEFAULT_CHUNK_SIZE,
    AutoloadOption,
    BatchMarker,
    Settings,
    carried,
    wants_lone_batches,
)
from ormtune.batchload._targets import load_targets, target_plan
from ormtune.batchload._writes import backing_off
from ormtune.querylog import (
    AutoloadBatch,
    Cohort,
    emit,
    join_runs_since,
    run_cohort,
    run_mark,
    shared_cohort,
    signals_wanted,
    tracking_cohorts,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Result
    from sqlalchemy.orm import ORMExecuteState, RelationshipProperty, Session
    from sqlalchemy.orm.state import InstanceState

    from ormtune.querylog import LazyLoad

__all__ = ["batch_load"]

# Bound parameters one re-select of parents may use: under every supported driver's limit
# (SQLite 32766, asyncpg 32767, PostgreSQL and MariaDB 65535).
_MAX_PARAMETERS = 30_000
_SELECTINLOAD_HAS_CHUNKSIZE = "chunksize" in pyinspect.signature(selectinload).parameters


def _members(lazy: LazyLoad, cohort: Cohort) -> list[InstanceState[Any]]:
    """The cohort members whose relationship the batch loads, the trigger first: those that may
    be loaded by the batch that the trigger's lazy load starts."""
    trigger, prop = lazy.state, lazy.relationship
    # What every member is checked against, read once (this runs for every member of a batch).
    key = prop.key
    session_id = trigger.session_id
    identity_token = trigger.identity_token
    load_options = trigger.load_options
    manager = trigger.manager
    parent = prop.parent
    members = [trigger]
    members += [
        member
        for member in cohort.states()
        if member is not trigger
        and member.key is not None  # persistent: never batch a pending object
        and member.session_id == session_id
        # InstanceState.deleted, for a member of the trigger's (attached) session
        and not member._deleted
        and member.identity_token == identity_token
        and member.load_options == load_options
        and key not in member.dict  # loaded, or set by the application: leave it
        and (member.manager is manager or member.mapper.isa(parent))
        # An explicit per-object loader, or an earlier batch's rows still to hand over (unless
        # they went stale): leave it
        and (key not in member.callables or is_stale_batched(member.callables[key], member))
    ]
    return members


def _one_target(members: list[InstanceState[Any]], prop: RelationshipProperty[Any]) -> bool:
    """For a many-to-one: do all members point at the same target (so that the plain lazy load
    fetches it once and the identity map serves the rest)?"""
    if prop.direction is not MANYTOONE:
        return False
    targets: set[tuple[Any, ...]] = set()
    for member in members:
        keys = []
        for local, _remote in prop.local_remote_pairs:
            attribute = member.mapper.get_property_by_column(local).key
            if attribute not in member.dict:
                return False  # expired or deferred: unknown without a query
            keys.append(member.dict[attribute])
        targets.add(tuple(keys))
        if len(targets) > 1:
            return False
    return True


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _reselect(
    orm_state: ORMExecuteState,
    lazy: LazyLoad,
    members: list[InstanceState[Any]],
    settings: Settings,
) -> None:
    prop = lazy.relationship
    mapper = prop.parent
    pk_columns = mapper.primary_key
    identities = [member.identity for member in members]
    attribute = prop.class_attribute
    if _SELECTINLOAD_HAS_CHUNKSIZE:
        load = selectinload(attribute, chunksize=settings.chunk_size)
        per_select = _MAX_PARAMETERS // len(pk_columns)
    else:  # SQLAlchemy 2.0: selectinload chunks by 500; chunk the parents for other sizes
        load = selectinload(attribute)
        per_select = settings.chunk_size
        if settings.chunk_size >= DEFAULT_CHUNK_SIZE:
            per_select = _MAX_PARAMETERS // len(pk_columns)
    loads: list[Any] = [load]
    if not any(member.expired_attributes for member in members):
        # Only the keys are needed to hang the children on. Members with expired attributes
        # get whole rows instead: the re-select then refreshes them once, instead of leaving
        # each expired column to be loaded on its own later.
        keys = [mapper.get_property_by_column(column).class_attribute for column in pk_columns]
        loads.append(load_only(*keys))
    options: list[Any] = [*loads, BatchMarker(loads, settings)]
    options += (
        opt for opt in lazy.state.load_options if isinstance(opt, AutoloadOption) or carried(opt)
    )
    for chunk in _chunks(identities, per_select):
        if len(pk_columns) == 1:
            criterion = pk_columns[0].in_([identity[0] for identity in chunk])
        else:
            criterion = tuple_(*pk_columns).in_([tuple(identity) for identity in chunk])
        statement = select(mapper).where(criterion).options(*options)
        # The lazy load that started this batch has already autoflushed (or deliberately not).
        orm_state.session.execute(
            statement,
            execution_options={"autoflush": False},
            bind_arguments=orm_state.bind_arguments,
        ).all()


def _runid() -> int:
    """A number below the run id of every query run from now on (SQLAlchemy numbers each
    query's run; an object a query creates or refreshes carries its number)."""
    counter = getattr(loading, "_new_runid", None)
    return int(counter()) if counter is not None else 1 << 62


def _defer_loaded(
    session: Session,
    prop: RelationshipProperty[Any],
    members: list[InstanceState[Any]],
    source: Batch | None,
    runid: int,
) -> None:
    """After a re-select (``selectinload`` commits every member's value): leave each member
    but the trigger its value until it is read, as the direct batches do. A many-to-one
    target the re-select loaded (run id above ``runid``) autoflushes at its first read."""
    key = prop.key
    batch = Batch(prop, session, source, members[0].load_options)
    trigger_target = None if prop.uselist else members[0].dict.get(key)
    for member in members[1:]:
        value = member.dict.pop(key, _MISSING)
        if value is _MISSING:
            continue
        if prop.uselist:
            value._sa_adapter.invalidated = True  # as SQLAlchemy retires an expired collection
            value = list(value)
        elif (
            value is not None
            and value is not trigger_target
            and (instance_state(value).runid or 0) > runid
        ):
            batch.unclaimed.add(id(value))
        batch.defer(member, value)


_MISSING = object()


def _autoflushes(orm_state: ORMExecuteState) -> bool:
    return bool(getattr(orm_state.load_options, "_autoflush", True))


_markers: dict[Settings, BatchMarker] = {}


def _direct_options(lazy: LazyLoad, settings: Settings) -> list[Any]:
    """The direct batch's options: a marker with no loader options of ours to vouch for, and
    what the lazy load it replaces would have carried."""
    marker = _markers.get(settings)
    if marker is None:
        marker = _markers[settings] = BatchMarker([], settings)
    options: list[Any] = [marker]
    options += (
        opt for opt in lazy.state.load_options if isinstance(opt, AutoloadOption) or carried(opt)
    )
    return options


def _result_for(state: InstanceState[Any], prop: RelationshipProperty[Any]) -> Result[Any] | None:
    """What the triggering lazy load would have returned, built from the batch's work."""
    if prop.key not in state.dict:
        return None
    value = state.dict[prop.key]
    objects = list(value) if prop.uselist else ([] if value is None else [value])
    rows = [(obj,) for obj in objects]
    return IteratorResult(SimpleResultMetaData([prop.key]), iter(rows))


def batch_load(
    orm_state: ORMExecuteState, lazy: LazyLoad, settings: Settings
) -> Result[Any] | None:
    """Load ``lazy.relationship`` for every eligible member of the cohort and answer the
    triggering lazy load; None (the plain lazy load goes ahead) when there is nothing to batch
    or anything looks out of the ordinary."""
    prop = lazy.relationship
    if getattr(prop.mapper.class_, "__hash__", None) is None:
        return None  # lazy loads de-duplicate their rows by hashing the objects
    if prop.secondary is not None and not isinstance(prop.secondary, Table):
        # A join or subquery as the secondary: selectinload has been seen to build a wrong
        # query for it (SQLAlchemy's main branch drops a primaryjoin condition and repeats a
        # table), so the lazy load, which renders the relationship as written, does it.
        return None
    if prop in loose_keys:
        return None  # its keys were matched loosely by the database (see load_directly)
    session = orm_state.session
    cohort = run_cohort(lazy.state, session.identity_map)
    if cohort is None:
        return None  # loaded by no query, or before autoload() began
    source = rebatch_source(lazy.state.callables.get(prop.key))
    if source is None and backing_off(session, prop):
        return None  # its batches in this session ended unused: plain for a while
    members = _members(lazy, cohort)
    if source is not None:
        members = members[: rebatch_limit(source)]
    plan = direct_plan(prop)
    targets = target_plan(prop) if plan is None else None
    expired = any(member.expired_attributes for member in members)
    lone = len(members) < 2 or _one_target(members, prop)
    if lone and (
        (plan is None and targets is None)
        or expired
        or not wants_lone_batches(lazy.state.load_options)
    ):
        # Nothing to batch with: the plain lazy load does the same work, unless the objects'
        # options want a top-level statement (the query cache serves those, not lazy loads)
        # and a direct batch can make one.
        return None
    # SQLAlchemy autoflushes after the do_orm_execute hooks: a direct batch flushes (or not)
    # where the lazy load it replaces would have.
    execution_options: dict[str, Any] = {"autoflush": _autoflushes(orm_state)}
    if tracking_cohorts():  # unused-eager detection: its cohorts are recorded row by row
        execution_options.update(shared_cohort())
    # String keys (see textual_keys): the direct batches check their rows' keys, but the
    # re-select's selectinload matches rows to parents by their Python values, where the
    # database may have matched them loosely (a collation). Such members are left plain.
    textual = plan.textual if plan is not None else targets is not None and targets.textual
    if textual and expired:
        return None
    mark = run_mark()
    if expired or (plan is None and targets is None):
        # Members with expired attributes take the re-select too: it refreshes them all in
        # one go, where each would otherwise refresh on its own at its next attribute access.
        runid = _runid()
        _reselect(orm_state, lazy, members, settings)
        _defer_loaded(session, prop, members, source, runid)
    elif plan is not None:
        load_directly(
            session,
            prop,
            plan,
            members,
            _direct_options(lazy, settings),
            min(settings.chunk_size, _MAX_PARAMETERS // plan.key_width),
            execution_options,
            orm_state.bind_arguments,
            source,
        )
    elif targets is not None and not load_targets(
        session,
        prop,
        targets,
        members,
        _direct_options(lazy, settings),
        min(settings.chunk_size, _MAX_PARAMETERS // targets.key_width),
        execution_options,
        orm_state.bind_arguments,
        source,
    ):
        if lone or textual:
            return None  # nothing was loaded: the plain lazy load goes ahead
        runid = _runid()
        _reselect(orm_state, lazy, members, settings)
        _defer_loaded(session, prop, members, source, runid)
    join_runs_since(mark, session.identity_map)  # the batch's chunks: one cohort
    if signals_wanted() and not lone:
        emit(AutoloadBatch(f"{prop.parent.class_.__name__}.{prop.key}", len(members)))
    return _result_for(lazy.state, prop)
