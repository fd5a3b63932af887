"""Turning an ORM result into plain data, and plain data back into a result in a session.

Stored: each row's plain values, and for entities the column attributes the query loaded
plus the relationships it loaded eagerly (``joinedload``, ``selectinload``, ...), as
references to other stored objects. Only objects the filling query itself created are
stored: an object that was already in the session's identity map may hold values the
database no longer has (or never had), so such a result is not cached.

On a hit, objects are rebuilt the way SQLAlchemy's loader builds them (``loading.py``):
an identity already in the session's identity map is returned as it is, never overwritten;
a new one is created persistent and clean, its eager relationships set, the column
attributes the query did not load expired (so reading them loads them), and the ``load``
event fired as ``Session.merge(load=False)`` fires it, with no query context. The decoding
and checking of an entry is a :class:`Plan`, which a :class:`PlanMemo` keeps for the next hit
on the same bytes when nothing in it can change.

Like ``loading.py``, a hit gives each new object the statement's options that propagate to
loaders (``state.load_options``) and the path it was loaded at (``state.load_path``: the
entity's for the statement's own objects, ``User -> posts -> Post`` for eagerly loaded ones),
so its lazy loads and refreshes run with the same options as after the uncached query. The
path of each object is stored with its layout; an entry is stored only if every object the
filling query created carries exactly the statement's propagating options.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import ipaddress
import threading
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Row
from sqlalchemy.orm import attributes
from sqlalchemy.orm.base import instance_dict, instance_state
from sqlalchemy.orm.interfaces import MapperProperty
from sqlalchemy.orm.path_registry import PathRegistry
from sqlalchemy.orm.strategy_options import _AbstractLoad
from sqlalchemy.sql.cache_key import HasCacheKey

from ormtune.caching import _codec

if TYPE_CHECKING:
    from sqlalchemy.orm import InstanceState, Mapper, Session

    from ormtune.caching._shape import Shape

__all__ = ["NotFresh", "Plan", "PlanMemo", "mapper_name", "propagated", "rebuild", "serialise"]


class NotFresh(Exception):
    """The result contains an object the filling query did not load itself, or one a hit
    could not give the load options and path the query gave it."""

    def __init__(self, reason: str = "objects were already in the session") -> None:
        super().__init__(reason)


def propagated(statement: Any) -> tuple[Any, ...]:
    """The options a query with ``statement`` gives the objects it loads (``loading.py``:
    ``QueryContext.propagated_loader_options``, where each option comes from the statement
    being run, or for loader strategy options an equal one from its compiled form)."""
    return tuple(opt for opt in statement._with_options if opt.propagate_to_loaders)


def _same_options(loaded: tuple[Any, ...], expected: tuple[Any, ...]) -> bool:
    if loaded is expected:
        return True
    if len(loaded) != len(expected):
        return False
    for got, want in zip(loaded, expected, strict=True):
        if got is want:
            continue
        if not (isinstance(got, HasCacheKey) and type(got) is type(want)):
            return False
        if got._generate_cache_key() != want._generate_cache_key():
            return False
    return True


def mapper_name(mapper: Mapper[Any]) -> str:
    cls = mapper.class_
    return f"{cls.__module__}.{cls.__qualname__}"


class _Layout:
    """How objects of one mapper are laid out in an entry: which column attributes, in
    which order (the ones the query loaded), and what a hit must expire (the rest)."""

    __slots__ = ("identity_class", "keys", "load_path", "mapper", "new_instance", "unloaded")

    def __init__(self, mapper: Mapper[Any], keys: tuple[str, ...], load_path: PathRegistry) -> None:
        self.mapper = mapper
        self.keys = keys
        self.load_path = load_path
        self.identity_class = mapper._identity_class
        self.new_instance = mapper.class_manager.new_instance
        self.unloaded = [p.key for p in mapper.column_attrs if p.key not in set(keys)]


_layouts: dict[tuple[Mapper[Any], tuple[str, ...], tuple[str, ...]], _Layout] = {}


def _layout(
    mapper: Mapper[Any], keys: tuple[str, ...], path: tuple[str, ...], shape: Shape
) -> _Layout:
    found = _layouts.get((mapper, keys, path))
    if found is None:
        found = _layouts[(mapper, keys, path)] = _Layout(mapper, keys, _load_path(path, shape))
    return found


def _path_names(state: InstanceState[Any], shape: Shape, aliases: bool) -> tuple[str, ...]:
    """``state.load_path`` as names: mapper, relationship, mapper, ..."""
    names: list[str] = []
    for position, element in enumerate(state.load_path.path):
        if position % 2:
            if not isinstance(element, MapperProperty):
                raise NotFresh("an object was loaded at a path ormtune cannot store")
            names.append(element.key)
            continue
        mapper = getattr(element, "mapper", None)
        is_alias = getattr(element, "is_aliased_class", False)
        if mapper is None or not (getattr(element, "is_mapper", False) or is_alias):
            raise NotFresh("an object was loaded at a path ormtune cannot store")
        if is_alias and not aliases:
            # Loader options match paths through this alias, and a hit cannot name it.
            raise NotFresh("an object was loaded through an aliased entity with loader options")
        name = mapper_name(mapper)
        shape.mappers.setdefault(name, mapper)
        names.append(name)
    return tuple(names)


def _load_path(names: tuple[str, ...], shape: Shape) -> PathRegistry:
    raw: list[Any] = []
    mapper: Any = None
    for position, name in enumerate(names):
        if position % 2:
            raw.append(mapper.attrs[name])
        else:
            mapper = shape.mappers[name]
            raw.append(mapper)
    return PathRegistry.coerce(tuple(raw)) if raw else PathRegistry.root


def serialise(rows: list[Any], shape: Shape, fresh: set[int], options: tuple[Any, ...]) -> bytes:
    """Plain-data bytes for ``rows`` (raises :class:`NotFresh`, ``_codec.Unencodable``);
    ``options`` are the statement's :func:`propagated` options.

    Layout: ``[rows, scalar, layouts, objects]``; a layout is ``[mapper name, [column
    keys], [load path names]]``; an object is ``[layout index, [primary key], identity
    token, [values in the layout's order], [[relationship, reference(s)], ...]]``; a
    reference is an object index.
    """
    objects: list[list[Any]] = []
    index: dict[int, int] = {}
    layouts: list[list[Any]] = []
    layout_index: dict[tuple[str, tuple[str, ...], tuple[str, ...]], int] = {}
    aliases = not any(isinstance(opt, _AbstractLoad) for opt in options)

    def ref(obj: object) -> int:
        found = index.get(id(obj))
        if found is not None:
            return found
        state: InstanceState[Any] = attributes.instance_state(obj)
        if id(state) not in fresh or state.key is None:
            raise NotFresh
        if not _same_options(state.load_options, options):
            raise NotFresh("objects were loaded with other options than the statement's")
        position = index[id(obj)] = len(objects)
        entry: list[Any] = []
        objects.append(entry)
        mapper = state.mapper
        name = mapper_name(mapper)
        if name not in shape.mappers:
            shape.mappers[name] = mapper
        values = state.dict
        keys = tuple(p.key for p in mapper.column_attrs if p.key in values)
        path = _path_names(state, shape, aliases)
        slot = layout_index.get((name, keys, path))
        if slot is None:
            slot = layout_index[(name, keys, path)] = len(layouts)
            layouts.append([name, list(keys), list(path)])
        relationships: list[list[Any]] = []
        for prop in mapper.relationships:
            if prop.key not in values:
                continue
            value = values[prop.key]
            if value is None:
                relationships.append([prop.key, None])
            elif prop.uselist:
                relationships.append([prop.key, [ref(item) for item in _members(value)]])
            else:
                relationships.append([prop.key, ref(value)])
        entry += [slot, list(state.key[1]), state.key[2], [values[k] for k in keys]]
        entry.append(relationships)
        return position

    positions = shape.entity_positions
    plain_rows: list[Any] = []
    # ORM results of one entity may hold the objects themselves as raw rows (scalars()).
    scalar = bool(rows) and not isinstance(rows[0], tuple | Row)
    for row in rows:
        if scalar:
            plain_rows.append(row if not positions or row is None else ref(row))
            continue
        cells = list(row)
        for position in positions:
            if cells[position] is not None:
                cells[position] = ref(cells[position])
        plain_rows.append(cells)
    return _codec.encode([plain_rows, scalar, layouts, objects])


def _members(collection: Any) -> list[Any]:
    if isinstance(collection, dict):
        return list(collection.values())
    return list(collection)


class Plan:
    """One entry decoded and checked against its shape: what :func:`rebuild` needs, with
    nothing left to parse. ``objects`` holds, per stored object, its layout, identity key,
    column values (by attribute) and relationship references."""

    __slots__ = ("objects", "reusable", "rows", "scalar", "shape")

    def __init__(
        self,
        shape: Shape,
        rows: list[Any],
        scalar: bool,
        objects: list[tuple[_Layout, tuple[Any, ...], dict[str, Any], list[list[Any]]]],
        reusable: bool,
    ) -> None:
        self.shape = shape
        self.rows = rows
        self.scalar = scalar
        self.objects = objects
        self.reusable = reusable


# Types whose values can be shared by the objects of several hits: nothing can change them.
_IMMUTABLE: frozenset[type] = frozenset(
    {
        str, int, float, bool, type(None), bytes, decimal.Decimal, dt.datetime, dt.date,
        dt.time, dt.timedelta, uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address,
        ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Interface,
        ipaddress.IPv6Interface,
    }
)  # fmt: skip


def _immutable(value: Any) -> bool:
    kind = type(value)
    if kind in _IMMUTABLE:
        return True
    if kind is tuple:
        return all(_immutable(item) for item in value)
    return isinstance(value, enum.Enum)


def _plan(data: bytes, shape: Shape) -> Plan:
    """Decode ``data`` and check it fits ``shape`` (raises ``_codec.Undecodable``)."""
    try:
        plain_rows, scalar, stored_layouts, stored = _codec.decode(data)
        layouts = [
            _layout(shape.mappers[name], tuple(keys), tuple(path), shape)
            for name, keys, path in stored_layouts
        ]
        objects = []
        reusable = True
        for slot, pk, token, values, relationships in stored:
            layout = layouts[slot]
            if len(values) != len(layout.keys):
                raise ValueError("values do not match their layout")
            if reusable and not all(_immutable(value) for value in values):
                reusable = False
            key = (layout.identity_class, tuple(pk), token)
            objects.append(
                (layout, key, dict(zip(layout.keys, values, strict=True)), relationships)
            )
        positions = shape.entity_positions
        if not scalar:
            for cells in plain_rows:
                if reusable and not all(
                    _immutable(cell) for i, cell in enumerate(cells) if i not in positions
                ):
                    reusable = False
        elif not positions and reusable:
            reusable = all(_immutable(value) for value in plain_rows)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise _codec.Undecodable(f"cached entry does not fit the statement: {exc!r}") from exc
    return Plan(shape, plain_rows, bool(scalar), objects, reusable)


class PlanMemo:
    """Decoded entries, kept while their bytes come back (a memory backend returns the very
    same bytes object on every hit; Redis returns equal bytes), so a hit decodes nothing.

    Keyed by the entry's bytes and its shape, so a plan is only ever reused for equal bytes
    under the same shape. Only entries whose values are all immutable are kept (their values
    are shared by the objects of every hit); others are decoded on each hit. Bounded by the
    total size of the entries it keeps; the oldest go first. Thread-safe.
    """

    __slots__ = ("_bytes", "_lock", "_plans", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._plans: dict[tuple[int, bytes], Plan] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, data: bytes, shape: Shape) -> Plan:
        memo_key = (id(shape), data)
        found = self._plans.get(memo_key)
        if found is not None and found.shape is shape:
            return found
        plan = _plan(data, shape)
        size = len(data)
        if plan.reusable and size <= self.max_bytes:
            with self._lock:
                old = self._plans.pop(memo_key, None)
                if old is not None:
                    self._bytes -= size
                plans = self._plans
                while plans and self._bytes + size > self.max_bytes:
                    oldest = next(iter(plans))
                    self._bytes -= len(oldest[1])
                    del plans[oldest]
                plans[memo_key] = plan
                self._bytes += size
        return plan


def rebuild(
    data: bytes,
    shape: Shape,
    session: Session,
    options: tuple[Any, ...],
    plans: PlanMemo | None = None,
) -> tuple[list[Any], list[InstanceState[Any]]]:
    """Rows for ``session`` from bytes :func:`serialise` made, and the states it created,
    which get the statement's :func:`propagated` ``options`` as their load options.

    ``plans`` keeps decoded entries for reuse. Raises ``_codec.Undecodable`` for bytes it
    cannot read (a corrupt entry is a miss).
    """
    plan = plans.get(data, shape) if plans is not None else _plan(data, shape)
    identity_map: Any = session.identity_map
    present = identity_map.get
    add = identity_map._add_unpresent
    hash_key = session.hash_key
    objects: list[Any] = []
    append = objects.append
    states: list[InstanceState[Any]] = []
    linked: list[tuple[InstanceState[Any], dict[str, Any], _Layout, list[list[Any]]]] = []
    for layout, key, values, relationships in plan.objects:
        existing = present(key)
        if existing is not None:
            append(existing)
            continue
        obj = layout.new_instance()
        state = instance_state(obj)
        dict_ = instance_dict(obj)
        dict_.update(values)
        state.key = key
        state.identity_token = key[2]
        state.session_id = hash_key
        state.load_options = options
        state.load_path = layout.load_path
        add(state, key)
        append(obj)
        states.append(state)
        if relationships or layout.unloaded:
            linked.append((state, dict_, layout, relationships))
    for state, dict_, layout, relationships in linked:
        for attribute, ref in relationships:
            if ref is None:
                value: Any = None
            elif isinstance(ref, list):
                value = [objects[i] for i in ref]
            else:
                value = objects[ref]
            impl: Any = state.manager[attribute].impl
            impl.set_committed_value(state, dict_, value)
        if state.modified:  # as loading.py does: only a changed state needs committing
            state._commit_all(dict_, identity_map)
        if layout.unloaded:
            state._expire_attributes(dict_, layout.unloaded)
    positions = shape.entity_positions
    rows: list[Any]
    if plan.scalar:
        if positions:
            rows = [(None if ref is None else objects[ref],) for ref in plan.rows]
        else:
            rows = [(value,) for value in plan.rows]
    else:
        rows = []
        for stored_cells in plan.rows:
            cells = list(stored_cells)
            for position in positions:
                if cells[position] is not None:
                    cells[position] = objects[cells[position]]
            rows.append(tuple(cells))
    if states:
        # The load event as Session.merge(load=False) fires it (no query context), once the
        # whole result exists; listener lists looked up once per class, as loading.py does.
        persistent = session.dispatch.loaded_as_persistent
        manager = load = None
        for state in states:
            if state.manager is not manager:
                manager = state.manager
                load = manager.dispatch.load
            if load:
                load(state, None)
            if persistent:
                persistent(session, state)
    return rows, states
