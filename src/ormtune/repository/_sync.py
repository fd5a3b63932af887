"""``Repository[Model]``: the data-access layer over one mapped class, on a sync ``Session``.

This class holds the only implementation; :class:`~ormtune.repository.AsyncRepository` runs
these same methods through ``AsyncSession.run_sync``, so the two cannot drift apart.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

from sqlalchemy import ColumnElement, delete, func, insert, inspect, select, update
from sqlalchemy import tuple_ as sql_tuple

from ormtune.exceptions import ConfigurationError, NotFoundError, UnknownFieldError
from ormtune.integrity import (
    AUDIT_KEYS_OPTION,
    SoftDeleteByMixin,
    SoftDeleteMixin,
    current_actor,
    is_soft_deletable,
    restore,
    soft_delete,
    utcnow,
)
from ormtune.integrity import include_deleted as include_deleted_option
from ormtune.repository._errors import translating
from ormtune.repository._query import (
    LoadSpec,
    OrderSpec,
    Page,
    check_keyset,
    decode_cursor,
    encode_cursor,
    fields_of,
    keyset_where,
    loader_options,
    mapper_of,
    order_columns,
    top_relationships,
    where_from_filters,
)
from ormtune.repository._upsert import upsert_statement

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapper, Session

    from ormtune.caching import CacheOption

__all__ = ["Repository"]

M = TypeVar("M")

_UNSET: Any = object()


def model_from_generic(cls: type, base: type) -> type[Any] | None:
    """``Payment`` for ``class PaymentRepository(Repository[Payment])``."""
    for orig in getattr(cls, "__orig_bases__", ()):
        origin = get_origin(orig)
        if isinstance(origin, type) and issubclass(origin, base):
            args = get_args(orig)
            if args and isinstance(args[0], type):
                return args[0]
    return None


class Repository(Generic[M]):
    """Reads and writes of one model, with declared eager loads and translated errors.

    Subclass it per model; the model comes from the type argument (or a ``model`` attribute)::

        class PaymentRepository(Repository[Payment]):
            load = [Payment.user, (Payment.job, Job.client)]

        payments = PaymentRepository(session).list(filters={"status": "paid"})

    Every read applies ``load`` (collections by ``selectinload``, scalar relationships by
    ``joinedload``) unless a call passes ``load=`` of its own (``load=()``: none). Writes flush,
    so database errors surface at the call as :class:`~ormtune.exceptions.DuplicateKeyError`,
    :class:`~ormtune.exceptions.ForeignKeyError` or another
    :class:`~ormtune.exceptions.ConstraintError`; committing stays the caller's (or the
    :class:`~ormtune.repository.Service`'s) business. Models with
    :class:`~ormtune.integrity.SoftDeleteMixin` are soft-deleted by :meth:`delete`.
    """

    model: ClassVar[type[Any]]
    load: ClassVar[Sequence[LoadSpec]] = ()
    order_by: ClassVar[Sequence[OrderSpec]] = ()
    chunk_size: ClassVar[int] = 1000
    cache: ClassVar[CacheOption | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" not in cls.__dict__:
            model = model_from_generic(cls, Repository)
            if model is not None:
                cls.model = model

    def __init__(
        self,
        session: Session,
        model: type[M] | None = None,
        *,
        load: Sequence[LoadSpec] | None = None,
        cache: CacheOption | None = None,
    ) -> None:
        resolved = model or getattr(type(self), "model", None)
        if resolved is None:
            raise ConfigurationError(
                f"{type(self).__name__} has no model: subclass Repository[Model], set "
                "model = Model, or pass the model to the constructor"
            )
        self.session = session
        self.model: type[M] = resolved  # type: ignore[misc]
        self.mapper: Mapper[M] = mapper_of(resolved)
        self.declared_load: Sequence[LoadSpec] = type(self).load if load is None else load
        # Reads carry ormtune.cache() when asked for (cache = ormtune.cache(ttl=60)).
        self.cache_option: CacheOption | None = type(self).cache if cache is None else cache
        self.soft_delete = is_soft_deletable(resolved)
        self.default_order: Sequence[OrderSpec] = type(self).order_by
        self.metadata = self.mapper.local_table.metadata  # type: ignore[attr-defined]

    # -- statement pieces --------------------------------------------------------------------

    def _options(self, load: Sequence[LoadSpec] | None, deleted: bool) -> list[Any]:
        options: list[Any] = loader_options(self.declared_load if load is None else load)
        if deleted:
            options.append(include_deleted_option())
        if self.cache_option is not None:
            options.append(self.cache_option)
        return options

    def _plain_options(self, deleted: bool) -> list[Any]:
        """Options of reads that load no objects (count, exists)."""
        return self._options((), deleted)

    def _where(
        self, where: Sequence[ColumnElement[bool]], filters: Mapping[str, object] | None
    ) -> list[ColumnElement[bool]]:
        return [*where, *where_from_filters(self.mapper, filters)]

    def _pk_attrs(self) -> list[Any]:
        return [
            getattr(self.model, self.mapper.get_property_by_column(c).key)
            for c in self.mapper.primary_key
        ]

    def _check_values(self, values: Mapping[str, object], what: str) -> None:
        valid = set(self.mapper.attrs.keys())
        for name in values:
            if name not in valid:
                choices = sorted(valid)
                raise UnknownFieldError(
                    f"{self.model.__name__} has no field {name!r} ({what}); "
                    f"valid fields: {', '.join(choices)}",
                    field=name,
                    valid=choices,
                )

    def _not_found(self, key: object) -> NotFoundError:
        return NotFoundError(
            f"No {self.model.__name__} with key {key!r}", model=self.model, key=key
        )

    def _resolve(self, key_or_instance: object, *, deleted: bool) -> M:
        if isinstance(key_or_instance, self.model):
            state = inspect(key_or_instance)
            if not state.detached:
                return cast("M", key_or_instance)
            # a detached instance (soft-deleted and taken out of the session): load it again
            key_or_instance = state.identity[0] if len(state.identity) == 1 else state.identity
        return self.get(key_or_instance, load=(), include_deleted=deleted)

    # -- reads -------------------------------------------------------------------------------

    def get_or_none(
        self, key: object, *, load: Sequence[LoadSpec] | None = None, include_deleted: bool = False
    ) -> M | None:
        """The row with primary key ``key`` (a tuple for composite keys), or ``None``.

        Answered from the identity map when the instance is there with its declared loads
        done; otherwise one SELECT with them. A soft-deleted instance is never returned
        unless ``include_deleted``.
        """
        options = self._options(load, include_deleted)
        instance = self.session.get(self.model, key, options=options)
        if instance is None:
            return None
        if self.soft_delete and not include_deleted and getattr(instance, "deleted_at", None):
            return None
        specs = self.declared_load if load is None else load
        unloaded = inspect(instance).unloaded
        if any(name in unloaded for name in top_relationships(specs)):
            pk = self._pk_attrs()
            values = key if isinstance(key, tuple) else (key,)
            statement = select(self.model).where(*(a == v for a, v in zip(pk, values, strict=True)))
            self.session.execute(statement.options(*options)).unique().all()
        return cast("M", instance)

    def get(
        self, key: object, *, load: Sequence[LoadSpec] | None = None, include_deleted: bool = False
    ) -> M:
        """The row with primary key ``key``; :class:`~ormtune.exceptions.NotFoundError` if
        there is none (or it is soft-deleted)."""
        instance = self.get_or_none(key, load=load, include_deleted=include_deleted)
        if instance is None:
            raise self._not_found(key)
        return instance

    def get_many(
        self,
        keys: Iterable[object],
        *,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        """The rows with these primary keys, in the order given, in one query (per 500 keys);
        missing keys are left out."""
        wanted = list(keys)
        pk = self._pk_attrs()
        found: dict[object, M] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            where = pk[0].in_(chunk) if len(pk) == 1 else sql_tuple(*pk).in_(chunk)
            statement = (
                select(self.model).where(where).options(*self._options(load, include_deleted))
            )
            for instance in self.session.scalars(statement).unique():
                identity = inspect(instance).identity
                found[identity[0] if len(pk) == 1 else identity] = instance
        return [found[k] for k in wanted if k in found]

    def _select(
        self,
        where: Sequence[ColumnElement[bool]],
        filters: Mapping[str, object] | None,
        order_by: Sequence[OrderSpec] | None,
        load: Sequence[LoadSpec] | None,
        deleted: bool,
    ) -> tuple[Any, builtins.list[tuple[Any, bool, str | None]]]:
        terms = order_columns(self.mapper, order_by if order_by is not None else self.default_order)
        statement = (
            select(self.model)
            .where(*self._where(where, filters))
            .order_by(*(c.desc() if descending else c for c, descending, _ in terms))
            .options(*self._options(load, deleted))
        )
        return statement, terms

    def list(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        order_by: Sequence[OrderSpec] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        """Rows matching ``where`` expressions and ``filters``, ordered (primary key last, as
        a tie-breaker), with offset pagination."""
        statement, _ = self._select(where, filters, order_by, load, include_deleted)
        statement = statement.limit(limit).offset(offset)
        return cast("builtins.list[M]", self.session.scalars(statement).unique().all())

    def page(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        order_by: Sequence[str] | None = None,
        limit: int = 50,
        after: str | None = None,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> Page[M]:
        """Keyset (cursor) pagination: ``limit`` rows after the cursor ``after``.

        Unlike offsets, a keyset page costs the same at any depth and never skips or repeats a
        row when rows are inserted or deleted between pages. ``order_by`` names non-null
        fields (``"-created_at"``); the primary key is added as a tie-breaker.
        """
        statement, terms = self._select(where, filters, order_by, load, include_deleted)
        check_keyset(self.mapper, terms)
        if after is not None:
            dialect = self.session.get_bind(mapper=self.mapper).dialect.name
            values = decode_cursor(self.mapper, terms, after, dialect)
            statement = statement.where(keyset_where(terms, values))
        rows = cast(
            "builtins.list[M]", self.session.scalars(statement.limit(limit + 1)).unique().all()
        )
        items = rows[:limit]
        cursor = encode_cursor(self.mapper, terms, items[-1]) if len(rows) > limit else None
        return Page(items, cursor)

    def count(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        include_deleted: bool = False,
    ) -> int:
        """How many rows match."""
        statement = select(func.count()).select_from(self.model).where(*self._where(where, filters))
        statement = statement.options(*self._plain_options(include_deleted))
        return int(self.session.scalar(statement) or 0)

    def list_and_count(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        order_by: Sequence[OrderSpec] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        load: Sequence[LoadSpec] | None = None,
        include_deleted: bool = False,
    ) -> tuple[builtins.list[M], int]:
        """One page and the total number of matching rows, in one query (a window count)
        plus the declared loads; a second query only when the page is past the end."""
        statement, _ = self._select(where, filters, order_by, load, include_deleted)
        statement = statement.add_columns(func.count().over().label("ormtune_total"))
        rows = self.session.execute(statement.limit(limit).offset(offset)).unique().all()
        if rows:
            return [cast("M", row[0]) for row in rows], int(rows[0][1])
        if not offset:
            return [], 0
        return [], self.count(*where, filters=filters, include_deleted=include_deleted)

    def exists(
        self,
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        include_deleted: bool = False,
    ) -> bool:
        """Whether any row matches (one query that stops at the first)."""
        statement = select(*self._pk_attrs()).where(*self._where(where, filters)).limit(1)
        statement = statement.options(*self._plain_options(include_deleted))
        return self.session.execute(statement).first() is not None

    # -- writes ------------------------------------------------------------------------------

    def create(self, **values: Any) -> M:
        """Add one row and flush it (so its key is known and errors surface here)."""
        self._check_values(values, "in create()")
        instance: M = self.model(**values)
        self.session.add(instance)
        with translating(self.metadata):
            self.session.flush()
        return instance

    def create_many(
        self, rows: Iterable[Mapping[str, Any]], *, chunk_size: int | None = None
    ) -> builtins.list[M]:
        """Insert many rows with one multi-row INSERT ... RETURNING per chunk (rows of one
        chunk should name the same fields); returns the new instances, in input order."""
        size = chunk_size or self.chunk_size
        pending = builtins.list(rows)
        created: builtins.list[M] = []
        statement = insert(self.model).returning(self.model)
        pk = [self.mapper.get_property_by_column(c).key for c in self.mapper.primary_key]
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            for row in chunk:
                self._check_values(row, "in create_many()")
            with translating(self.metadata):
                batch = builtins.list(self.session.scalars(statement, chunk).all())
            # RETURNING's row order is not promised; put the rows back in input order: by the
            # given keys, or else by the new keys (assigned in VALUES order).
            by_key = {tuple(getattr(obj, k) for k in pk): obj for obj in batch}
            if all(all(row.get(k) is not None for k in pk) for row in chunk):
                created.extend(by_key[tuple(row[k] for k in pk)] for row in chunk)
            else:
                created.extend(by_key[key] for key in sorted(by_key))
        return created

    def update(self, key_or_instance: object, **values: Any) -> M:
        """Set fields of one row (given by key or instance) and flush."""
        self._check_values(values, "in update()")
        instance = self._resolve(key_or_instance, deleted=False)
        for name, value in values.items():
            setattr(instance, name, value)
        with translating(self.metadata):
            self.session.flush()
        return instance

    def update_many(
        self,
        values: Mapping[str, Any],
        *where: ColumnElement[bool],
        filters: Mapping[str, object] | None = None,
        include_deleted: bool = False,
    ) -> int:
        """One bulk ORM UPDATE of every matching row; returns how many it matched."""
        self._check_values(values, "in update_many()")
        statement = update(self.model).where(*self._where(where, filters)).values(**values)
        if include_deleted:
            statement = statement.options(include_deleted_option())
        with translating(self.metadata):
            result = self.session.execute(statement)
        return int(getattr(result, "rowcount", 0))

    def upsert(
        self,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        conflict: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> builtins.list[M]:
        """Insert rows, or update the ones whose ``conflict`` fields (a unique key) exist:
        ``ON CONFLICT DO UPDATE`` on PostgreSQL and SQLite, ``ON DUPLICATE KEY UPDATE`` on
        MariaDB / MySQL. ``update`` names the fields to overwrite (default: every given field
        but the key). Returns the rows as they are now, in input order."""
        batch = [rows] if isinstance(rows, Mapping) else builtins.list(rows)
        for row in batch:
            self._check_values(row, "in upsert()")
        for name in conflict:
            if name not in fields_of(self.mapper):
                self._check_values({name: None}, "in upsert(conflict=...)")
        bind = self.session.get_bind(mapper=self.mapper)
        result: builtins.list[M] = []
        for start in range(0, len(batch), self.chunk_size):
            chunk = batch[start : start + self.chunk_size]
            statement, returns = upsert_statement(
                self.mapper, bind.dialect, chunk, conflict, update
            )
            options = {"populate_existing": True, AUDIT_KEYS_OPTION: tuple(conflict)}
            with translating(self.metadata):
                if returns:
                    result.extend(self.session.scalars(statement, chunk, execution_options=options))
                    continue
                self.session.execute(statement, chunk, execution_options=options)
            result.extend(self._reload_by(conflict, chunk))
        return result

    def _reload_by(
        self, names: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> builtins.list[M]:
        attrs = [getattr(self.model, n) for n in names]
        keys = [tuple(row[n] for n in names) for row in rows]
        where = (
            attrs[0].in_([k[0] for k in keys]) if len(attrs) == 1 else sql_tuple(*attrs).in_(keys)
        )
        statement = select(self.model).where(where).execution_options(populate_existing=True)
        found = {
            tuple(getattr(obj, n) for n in names): obj for obj in self.session.scalars(statement)
        }
        return [found[k] for k in keys if k in found]

    def delete(self, key_or_instance: object) -> None:
        """Delete one row: soft (``deleted_at``) for soft-deletable models, else for real.

        A soft-deleted instance leaves the session at the flush (see the README: it keeps its
        loaded attributes, and ``session.get`` no longer returns it)."""
        instance = self._resolve(key_or_instance, deleted=False)
        if self.soft_delete:
            soft_delete(cast("SoftDeleteMixin", instance))
        else:
            self.session.delete(instance)
        with translating(self.metadata):
            self.session.flush()

    def hard_delete(self, key_or_instance: object) -> None:
        """Delete one row for real (soft-deleted or not)."""
        instance = self._resolve(key_or_instance, deleted=True)
        self.session.delete(instance)
        with translating(self.metadata):
            self.session.flush()

    def restore(self, key_or_instance: object) -> M:
        """Make a soft-deleted row live again; returns it."""
        if not self.soft_delete:
            raise ConfigurationError(f"{self.model.__name__} does not use SoftDeleteMixin")
        instance = self._resolve(key_or_instance, deleted=True)
        restore(cast("SoftDeleteMixin", instance))
        with translating(self.metadata):
            self.session.flush()
        return instance

    def delete_where(
        self, *where: ColumnElement[bool], filters: Mapping[str, object] | None = None
    ) -> int:
        """Delete every matching row with one bulk statement (an UPDATE of ``deleted_at`` for
        soft-deletable models); returns how many. Soft-deleted instances in the identity map
        leave the session, as with :meth:`delete`."""
        criteria = self._where(where, filters)
        if not self.soft_delete:
            with translating(self.metadata):
                result = self.session.execute(delete(self.model).where(*criteria))
            return int(getattr(result, "rowcount", 0))
        now = utcnow()
        values: dict[str, Any] = {"deleted_at": now}
        if issubclass(self.model, SoftDeleteByMixin):
            values["deleted_by"] = current_actor()
        statement = update(self.model).where(*criteria).values(**values)
        with translating(self.metadata):
            result = self.session.execute(
                statement, execution_options={"synchronize_session": "fetch"}
            )
        for instance in builtins.list(self.session.identity_map.values()):
            if isinstance(instance, self.model) and getattr(instance, "deleted_at", None) == now:
                self.session.expunge(instance)
        return int(getattr(result, "rowcount", 0))
