"""The direct many-to-one batch: the targets loaded straight from their own table by key.

When a many-to-one joins the parents' foreign key to the target's primary key and nothing
else, ``selectinload`` does not join the parents ("load only child"): it reads each parent's
foreign key, selects the targets whose primary key is among them, and commits each parent's
attribute. The direct batch does the same from the cohort, and, as the lazy loads it replaces
would, takes a target already in the identity map from there instead of selecting it again.
Whether a relationship qualifies, and the columns and ``IN`` expression to use, come from
SQLAlchemy's own ``selectin`` strategy for it; anything else takes the re-select path.

Being a top-level statement on the targets' table, it is one a cached statement's objects
can read through the cache (the parents' re-select never can: they are in the session).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import MANYTOONE
from sqlalchemy.orm.attributes import set_committed_value

from ormtune.batchload._direct import (
    _rows,
    loose_keys,
    omitted_join_query,
    textual_keys,
    with_options,
)
from ormtune.batchload._handover import Batch

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import RelationshipProperty, Session
    from sqlalchemy.orm.state import InstanceState

__all__ = ["TargetPlan", "load_targets", "target_plan"]


@dataclass(frozen=True, slots=True, eq=False)
class TargetPlan:
    """How to load one many-to-one for many parents: one statement per chunk of keys."""

    statement: Select[Any]  # ``primary_keys`` is the expanding parameter of the targets' keys
    key_width: int  # leading columns of each row: the target's primary key
    single_column: bool  # one key column: keys are bound as scalars, not 1-tuples
    lookup: tuple[str, ...]  # the parents' attributes holding the target's key, in order
    textual: bool  # a key column is a string: the database may match it loosely (textual_keys)


_plans: dict[RelationshipProperty[Any], TargetPlan | None] = {}


def _plan(prop: RelationshipProperty[Any]) -> TargetPlan | None:
    if prop.direction is not MANYTOONE or prop.secondary is not None or prop.uselist:
        return None
    found = omitted_join_query(prop)
    if found is None:
        return None
    info, statement = found
    if getattr(info, "load_only_child", False) is not True:
        return None
    key_columns = list(info.pk_cols)
    lookup_columns = list(getattr(info, "child_lookup_cols", ()))
    if len(key_columns) != len(lookup_columns) or len(key_columns) != len(prop.mapper.primary_key):
        return None
    lookup = []
    for column in lookup_columns:
        try:
            lookup.append(prop.parent.get_property_by_column(column).key)
        except Exception:  # not mapped on the parent: leave it to selectinload
            return None
    return TargetPlan(
        statement, len(key_columns), bool(info.zero_idx), tuple(lookup), textual_keys(prop)
    )


def target_plan(prop: RelationshipProperty[Any]) -> TargetPlan | None:
    """The plan for ``prop``, or None when it must take the re-select path (memoised; two
    threads that race make the same plan)."""
    if prop not in _plans:
        _plans[prop] = _plan(prop)
    return _plans[prop]


def _present(session: Session, prop: RelationshipProperty[Any], key: Any, token: Any) -> Any:
    """The target with ``key`` if the identity map holds it loaded, as a lazy load takes it."""
    mapper = prop.mapper
    found = session.identity_map.get(
        mapper.identity_key_from_primary_key(tuple(key), identity_token=token)
    )
    if found is None or not isinstance(found, mapper.class_):
        return None
    state: InstanceState[Any] = found._sa_instance_state
    if state.expired or state.deleted or state.was_deleted:
        return None  # a lazy load would refresh or skip it: let the query decide
    return found


def load_targets(
    session: Session,
    prop: RelationshipProperty[Any],
    plan: TargetPlan,
    members: list[InstanceState[Any]],
    options: list[Any],
    chunk_size: int,
    execution_options: dict[str, Any],
    bind_arguments: dict[str, Any] | None,
    source: Batch | None,
) -> bool:
    """Load ``prop`` for ``members`` with ``plan`` (the trigger's, the first member's,
    committed, each other member's left until it is read); False (nothing done) when a
    member's foreign key is not loaded, so the re-select must do it."""
    by_key: dict[tuple[Any, ...], list[InstanceState[Any]]] = {}
    nulls: list[InstanceState[Any]] = []
    for member in members:
        values = member.dict
        if any(attribute not in values for attribute in plan.lookup):
            return False
        key = tuple(values[attribute] for attribute in plan.lookup)
        if None in key:
            nulls.append(member)
        else:
            by_key.setdefault(key, []).append(member)
    token = members[0].identity_token
    found: dict[tuple[Any, ...], Any] = {}
    wanted = []
    for key in by_key:
        present = _present(session, prop, key, token)
        if present is not None:
            found[key] = present
        else:
            wanted.append(key)
    statement = with_options(plan.statement, options)
    width = plan.key_width
    batch: Batch | None = None  # made after the first query (it may autoflush)
    for start in range(0, len(wanted), chunk_size):
        chunk = wanted[start : start + chunk_size]
        keys = [key[0] for key in chunk] if plan.single_column else chunk
        result = session.execute(
            statement,
            {"primary_keys": keys},
            execution_options=execution_options,
            bind_arguments=bind_arguments,
        )
        if batch is None:
            batch = Batch(prop, session, source, members[0].load_options)
        requested = set(chunk)
        for row in _rows(result):
            key = tuple(row[:width])
            if key not in requested:
                # A target the database matched loosely (a case-insensitive or space-padding
                # collation): only it knows which members point at it. Hand nothing over:
                # every member takes the plain lazy load, and so does the relationship from
                # now on (the targets selected stay in the identity map, as loaded objects).
                loose_keys.add(prop)
                return True
            target = found[key] = row[width]
            # Selected here, where the first plain lazy load reading it would have
            # autoflushed first: its first reader does.
            batch.unclaimed.add(id(target))
    if plan.textual and any(key not in found for key in wanted):
        # A key with no target of its own: missing, or matched loosely by another key's
        # target. Only the database can tell; the plain lazy load asks it.
        loose_keys.add(prop)
        return True
    if batch is None:
        batch = Batch(prop, session, source, members[0].load_options)
    name = prop.key
    trigger = members[0]
    for key, states in [*by_key.items(), ((None,), nulls)]:
        target = found.get(key)
        for member in states:
            obj = member.obj()
            if obj is None or name in member.dict or member.deleted or member.key is None:
                continue  # gone, loaded meanwhile (never overwritten), or deleted by a flush
            if member.session_id != session.hash_key:
                continue
            if member is trigger:
                batch.unclaimed.discard(id(target))  # its lazy load autoflushed
                set_committed_value(obj, name, target)
            else:
                batch.defer(member, target)
    return True
