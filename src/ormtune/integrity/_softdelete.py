"""Soft delete: rows marked ``deleted_at`` disappear from every ORM read, with one opt-out.

How it works: a ``do_orm_execute`` listener on :class:`~sqlalchemy.orm.Session` adds one
:func:`~sqlalchemy.orm.with_loader_criteria` option (``deleted_at IS NULL`` for every class
that uses :class:`SoftDeleteMixin`) to each ORM SELECT, UPDATE and DELETE. That is
SQLAlchemy's own documented recipe; the option reaches joins, ``has()``/``any()``, subqueries,
UNION members and CTEs, and (being propagated to loaders) lazy, selectin, joined and subquery
loads of relationships, many-to-many included. :func:`include_deleted` is the opt-out: an
option that travels the same way, so relationships loaded from an opted-out statement are
opted out too. Refreshes of expired instances, which SQLAlchemy keeps out of loader criteria,
get the same condition as a WHERE clause, so a row soft-deleted since it was loaded reads as
gone (``ObjectDeletedError``), exactly as a row hard-deleted elsewhere would. On SQLAlchemy
2.0, whose has()/any() build their EXISTS outside the ORM, each EXISTS (nested ones too) gets
the condition directly.

A relationship whose ``secondary`` is the table of a class using the mixin (an association
class) links only through live association rows: the condition is part of the relationship's
secondary join from mapper configuration on, so every path through it has it.
:func:`include_deleted` brings deleted links back with the rest: the condition is a construct
that compiles to ``TRUE`` in a statement carrying the option.

``session.get()`` answers from the identity map without SQL and without any event, so a
soft-deleted instance must not stay there: the flush that soft-deletes an instance (whichever
way ``deleted_at`` was set) takes it out of the session, as SQLAlchemy does for a flushed
``session.delete()``. See the README's table of exactly what ``session.get`` returns.

The listeners are installed when the first class using the mixin is defined.
"""

from __future__ import annotations

import datetime
import weakref
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import Boolean, DateTime, Exists, Index, Select, String, and_, event, inspect, text
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import (
    Mapped,
    Mapper,
    ORMExecuteState,
    Session,
    UserDefinedOption,
    mapped_column,
    with_loader_criteria,
)
from sqlalchemy.sql import visitors
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import Alias, TableClause

from ormtune.integrity._context import current_actor

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.orm import UOWTransaction
    from sqlalchemy.orm.util import LoaderCriteriaOption

__all__ = [
    "TIMESTAMP",
    "IncludeDeleted",
    "SoftDeleteByMixin",
    "SoftDeleteMixin",
    "include_deleted",
    "is_deleted",
    "is_soft_deletable",
    "restore",
    "soft_delete",
    "unique_among_live",
    "utcnow",
]

_DETACH_KEY = "ormtune_soft_deleted"


TIMESTAMP = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
"""The column type of every ormtune timestamp: timezone-aware where the database has that
(PostgreSQL), microseconds everywhere (MariaDB's DATETIME drops them unless asked). MariaDB
and SQLite return naive datetimes; ormtune always writes UTC."""


def utcnow() -> datetime.datetime:
    """The current time in UTC, timezone-aware: what ormtune stamps rows with."""
    return datetime.datetime.now(datetime.UTC)


_CRITERIA: LoaderCriteriaOption | None = None  # made once the mixin is first used


def _filter_deleted(state: ORMExecuteState) -> None:
    """Add the soft-delete criteria to an ORM SELECT / UPDATE / DELETE, unless opted out."""
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if any(isinstance(option, IncludeDeleted) for option in state.user_defined_options):
        return
    statement: Any = state.statement
    if state.is_column_load:
        # SQLAlchemy deliberately leaves refreshes (expired attributes, session.refresh, and
        # session.get of an expired instance) out of with_loader_criteria; a row deleted
        # since it was loaded must read as gone there too, as a hard-deleted one would.
        for mapper in state.all_mappers:
            if issubclass(mapper.class_, SoftDeleteMixin):
                statement = statement.where(mapper.class_.deleted_at.is_(None))
        state.statement = statement
        return
    # Relationship loads and refreshes carry the option propagated from the statement that
    # loaded their parent; adding it twice would only repeat the criteria in the SQL.
    criteria = _CRITERIA
    if criteria is None or any(
        option is criteria for option in getattr(statement, "_with_options", ())
    ):
        return
    if _EXISTS_NEEDS_CRITERIA:
        statement = _filter_exists(statement)
    state.statement = statement.options(criteria)


# SQLAlchemy 2.0 compiles the EXISTS of has() / any() outside the ORM, so loader criteria
# never reach it (2.1 fixed that); on 2.0 each such EXISTS, at any depth, gets the condition
# here.
_EXISTS_NEEDS_CRITERIA = tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2]) < (2, 1)


def _soft_deletable_tables() -> set[TableClause]:
    """Every table mapped by a class that uses :class:`SoftDeleteMixin`: the objects, not their
    names, since another MetaData may hold a table of the same name without ``deleted_at``."""
    tables: set[TableClause] = set()
    pending: list[type] = [SoftDeleteMixin]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        table = getattr(cls, "__table__", None)
        if isinstance(table, TableClause):
            tables.add(table)
    return tables


def _live_condition(element: object, tables: set[TableClause]) -> Any:
    target = element.element if isinstance(element, Alias) else element
    if isinstance(target, TableClause) and target in tables:
        return element.c.deleted_at.is_(None)  # type: ignore[attr-defined]
    return None


def _exists_conditions(exists: Exists, tables: set[TableClause]) -> list[Any]:
    """The live-row conditions for the tables an EXISTS selects from itself (what has() and
    any() put in its FROM: the target and any secondary), not those it correlates to."""
    inner: Any = exists.element
    while not isinstance(inner, Select) and hasattr(inner, "element"):
        inner = inner.element
    froms = getattr(inner, "_from_obj", ())
    return [c for f in froms if (c := _live_condition(f, tables)) is not None]


def _clauses(statement: Any) -> Iterator[Any]:
    """Where has() / any() can be: WHERE, HAVING, ORDER BY, the columns, subqueries selected
    from, join conditions.
    Looking only there (tables are skipped) keeps this check cheap on every statement."""
    if (where := getattr(statement, "whereclause", None)) is not None:
        yield where
    yield from getattr(statement, "_having_criteria", ())
    yield from getattr(statement, "_order_by_clauses", ())
    for element in (*getattr(statement, "_raw_columns", ()), *getattr(statement, "_from_obj", ())):
        if not isinstance(element, TableClause):  # columns, subqueries, aliases of them
            yield element
    for join in getattr(statement, "_setup_joins", ()):
        if join[1] is not None:
            yield join[1]


def _filter_exists(statement: Any) -> Any:
    """SQLAlchemy 2.0 only: every has()/any() EXISTS in ``statement``, nested ones included
    (which sit inside parts that replacement traversals must skip), filtered for live rows."""
    found = [
        element
        for part in _clauses(statement)
        for element in visitors.iterate(part)
        if isinstance(element, Exists)
    ]
    if not found:
        return statement
    tables = _soft_deletable_tables()
    if not any(_exists_conditions(e, tables) for e in found):
        return statement

    def visit_unary(element: Any) -> None:
        # cloned_traverse hands over a fresh copy whose inner EXISTS are already done
        if isinstance(element, Exists) and (conditions := _exists_conditions(element, tables)):
            element.element = element.where(*conditions).element

    return visitors.cloned_traverse(statement, {}, {"unary": visit_unary})


_LINKS_FILTERED: weakref.WeakSet[object] = weakref.WeakSet()  # relationships already done


class _LiveLink(FunctionElement[bool]):
    """``<secondary>.deleted_at IS NULL`` in a relationship's secondary join; always true in a
    statement that uses :func:`include_deleted` (which is part of the statement's cache key,
    so the two never share a compiled form). A function element, so that SQLAlchemy's
    aliasing of the join reaches the column inside."""

    type = Boolean()
    name = "ormtune_live_link"
    inherit_cache = True


@compiles(_LiveLink)
def _compile_live_link(element: _LiveLink, compiler: Any, **kw: Any) -> str:
    statement = getattr(compiler, "statement", None)
    if any(isinstance(o, IncludeDeleted) for o in getattr(statement, "_with_options", ())):
        return str(compiler.process(sqlalchemy.true(), **kw))
    (column,) = element.clauses
    return str(compiler.process(column.is_(None), **kw))


def _filter_links(mapper: Mapper[Any], class_: type) -> None:
    """``mapper_configured``: a relationship whose ``secondary`` is the table of a class that
    uses :class:`SoftDeleteMixin` links only through live association rows.

    The condition joins the relationship's secondary join, so every path that joins through
    it has it: lazy, selectin, joined and subquery loads, ``any()``/``has()``, ``join()``; in
    a statement with :func:`include_deleted` (relationship loads inherit it) it is true.
    SQLAlchemy builds a lazy loader's clause when the relationship is initialised, just before
    this event, so lazy loaders built from the old join are given the new one.
    """
    tables = _soft_deletable_tables()
    for prop in mapper.relationships:
        secondary = prop.secondary
        if (
            prop in _LINKS_FILTERED
            or not isinstance(secondary, TableClause)
            or secondary not in tables
            or "deleted_at" not in secondary.c
        ):
            continue
        _LINKS_FILTERED.add(prop)
        join = prop._join_condition
        if join.secondaryjoin is None:
            continue
        join.secondaryjoin = and_(join.secondaryjoin, _LiveLink(secondary.c.deleted_at))
        prop.secondaryjoin = join.secondaryjoin
        strategies: dict[object, Any] = getattr(prop, "_strategies", {})
        for strategy in strategies.values():
            if hasattr(strategy, "_lazywhere"):
                (
                    strategy._lazywhere,
                    strategy._bind_to_col,
                    strategy._equated_columns,
                ) = join.create_lazy_clause()
                (
                    strategy._rev_lazywhere,
                    strategy._rev_bind_to_col,
                    strategy._rev_equated_columns,
                ) = join.create_lazy_clause(reverse_direction=True)


def _note_soft_deletes(session: Session, flush_context: UOWTransaction) -> None:
    """Before the flush's state is reset: which instances does this flush soft-delete?"""
    deleted = []
    for instance in session.dirty:
        if not isinstance(instance, SoftDeleteMixin):
            continue
        history = inspect(instance).attrs.deleted_at.history
        went_live_to_deleted = history.added and history.added[0] is not None
        if went_live_to_deleted and (not history.deleted or history.deleted[0] is None):
            deleted.append(instance)
    if deleted:
        session.info.setdefault(_DETACH_KEY, []).extend(deleted)


def _detach_soft_deleted(session: Session, flush_context: UOWTransaction) -> None:
    """After the flush: take soft-deleted instances out of the session, so that
    ``session.get()`` cannot answer them from the identity map."""
    for instance in session.info.pop(_DETACH_KEY, ()):
        if instance in session:
            session.expunge(instance)


_LISTENERS = (
    ("do_orm_execute", _filter_deleted),
    ("after_flush", _note_soft_deletes),
    ("after_flush_postexec", _detach_soft_deleted),
)


def _live(cls: type[SoftDeleteMixin]) -> Any:
    """The criteria: a module-level function, not a lambda, so that objects loaded under it
    (which keep it among their load options) can still be pickled."""
    return cls.deleted_at.is_(None)


def _install() -> None:
    global _CRITERIA
    if _CRITERIA is None:
        # Propagated to loaders: joined eager loads only apply criteria that propagate, and
        # lazy loads then carry it (ormtune.autoload() batches them with it).
        _CRITERIA = with_loader_criteria(SoftDeleteMixin, _live, include_aliases=True)
    for name, listener in _LISTENERS:
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)
    if not event.contains(Mapper, "mapper_configured", _filter_links):
        event.listen(Mapper, "mapper_configured", _filter_links)


class IncludeDeleted(UserDefinedOption):
    """The option :func:`include_deleted` returns; it propagates to relationship loads.

    It is part of the statement's cache key: SQLAlchemy hands loaded objects the options of
    the cached statement matched *by position*, so statements with and without it must never
    share a compiled form.
    """

    propagate_to_loaders = True
    _is_has_cache_key = True

    def _gen_cache_key(self, anon_map: object, bindparams: object) -> tuple[object, ...]:
        return (type(self).__qualname__,)


_INCLUDE_DELETED = IncludeDeleted()


def include_deleted() -> IncludeDeleted:
    """The opt-out: ``select(User).options(include_deleted())`` also returns soft-deleted rows.

    It works wherever loader options do: ``select()``, ORM ``update()``/``delete()``,
    ``session.get(Model, pk, options=[include_deleted()])``. Relationships later loaded from
    the objects it loads (lazily or eagerly) include soft-deleted rows too, and so do
    refreshes of those objects, because SQLAlchemy carries the option along with them.
    """
    return _INCLUDE_DELETED


class SoftDeleteMixin:
    """Adds ``deleted_at`` (timezone-aware, ``NULL`` while the row is live) to a model whose
    rows are then hidden from every ORM read unless a statement uses :func:`include_deleted`.

    ``repository.delete()`` and :func:`soft_delete` set it; :func:`restore` clears it. Use
    :func:`unique_among_live` for unique keys that a deleted row must not block.
    """

    deleted_at: Mapped[datetime.datetime | None] = mapped_column(
        TIMESTAMP, default=None, nullable=True
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install()

    @property
    def is_deleted(self) -> bool:
        """Whether this instance is soft-deleted (``deleted_at`` is set)."""
        return self.deleted_at is not None


class SoftDeleteByMixin(SoftDeleteMixin):
    """:class:`SoftDeleteMixin` plus ``deleted_by``: the actor (see
    :func:`~ormtune.integrity.audit_context`) who soft-deleted the row."""

    deleted_by: Mapped[str | None] = mapped_column(String(255), default=None, nullable=True)


def is_soft_deletable(model: type[object]) -> bool:
    """Whether ``model`` uses :class:`SoftDeleteMixin`."""
    return isinstance(model, type) and issubclass(model, SoftDeleteMixin)


def is_deleted(instance: object) -> bool:
    """Whether ``instance`` is a soft-deleted row (``False`` for models without the mixin)."""
    return isinstance(instance, SoftDeleteMixin) and instance.deleted_at is not None


def soft_delete(instance: SoftDeleteMixin, *, at: datetime.datetime | None = None) -> None:
    """Mark ``instance`` deleted (``deleted_at``, and ``deleted_by`` from the current actor);
    the next flush writes it and takes the instance out of its session."""
    instance.deleted_at = at or utcnow()
    if isinstance(instance, SoftDeleteByMixin):
        instance.deleted_by = current_actor()


def restore(instance: SoftDeleteMixin) -> None:
    """Mark a soft-deleted ``instance`` live again (load it with :func:`include_deleted`)."""
    instance.deleted_at = None
    if isinstance(instance, SoftDeleteByMixin):
        instance.deleted_by = None


def unique_among_live(name: str, *columns: str, deleted_column: str = "deleted_at") -> Index:
    """A unique index over ``columns`` that only live rows take part in, for ``__table_args__``.

    On PostgreSQL and SQLite it is a partial index (``WHERE deleted_at IS NULL``), so a
    soft-deleted row never blocks re-creating its key. MariaDB and MySQL have no partial
    indexes: there the index is an ordinary unique index (deleted rows do block their keys);
    the README shows the MariaDB equivalent (a generated column that is ``NULL`` for deleted
    rows, with the unique index on it).
    """
    where = text(f"{deleted_column} IS NULL")
    return Index(name, *columns, unique=True, postgresql_where=where, sqlite_where=where)
