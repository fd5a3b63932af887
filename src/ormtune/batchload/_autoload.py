"""``ormtune.autoload()``: where batch loading is on, and the ORM hook that applies it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import InstrumentedAttribute, RelationshipProperty, Session
from sqlalchemy.orm.decl_api import DeclarativeAttributeIntercept, DeclarativeMeta

from ormtune.batchload._handover import install_handover, may_batch, remove_handover
from ormtune.batchload._loader import batch_load
from ormtune.batchload._options import (
    DEFAULT_CHUNK_SIZE,
    AutoloadOption,
    Settings,
    autoload_settings,
    check_chunk_size,
)
from ormtune.batchload._writes import note_statement
from ormtune.querylog import (
    Registration,
    SharedHooks,
    end_post_loads,
    lazy_load_of,
    lazy_loads_only,
    note_post_load,
    note_refresh_load,
    post_loads_running,
    track_run_cohorts,
    untrack_run_cohorts,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Result
    from sqlalchemy.orm import ORMExecuteState

__all__ = ["Autoload", "autoload", "autoload_option", "autoloading"]

# The execution option SQLAlchemy's post-loaders (selectinload, immediateload) give the queries
# they run: the top-level query they load for.
_POST_LOADER_OPTION = "sa_top_level_orm_context"
# Loader styles that are a plain lazy SELECT; every other style is left alone.
_LAZY_SELECT = ("select", True)


@dataclass(frozen=True, slots=True, eq=False)
class _Scope:
    """One ``autoload()`` call: everything, some declarative bases, or some relationships."""

    bases: tuple[type, ...]
    relationships: frozenset[RelationshipProperty[Any]]
    settings: Settings

    @property
    def everything(self) -> bool:
        return not self.bases and not self.relationships

    def covers(self, prop: RelationshipProperty[Any]) -> bool:
        if self.everything:
            return True
        if prop in self.relationships:
            return True
        return any(issubclass(prop.parent.class_, base) for base in self.bases)


_lock = threading.Lock()
_scopes: tuple[_Scope, ...] = ()  # copy-on-write; read without the lock


def _settings_for(orm_state: ORMExecuteState) -> tuple[Any, Settings] | None:
    top_level_query = orm_state.execution_options.get(_POST_LOADER_OPTION)
    path = orm_state.loader_strategy_path if top_level_query is not None else None
    if path is not None and orm_state.is_select:
        # A query a post-loader runs for the query that loaded the parents: a chunk of
        # selectinload's, or immediateload's lazy load (its own: an explicit loader option,
        # with its own recursion, never batched). What one path's queries load is one cohort,
        # as if one query had loaded it.
        key = (getattr(top_level_query, "runid", None), path)
        note_post_load(orm_state.session.identity_map, key, path.path)
        return None
    if post_loads_running():
        end_post_loads(orm_state.session.identity_map)
    if not orm_state.is_select:
        note_statement(orm_state)  # what batches left unread is checked against
        return None
    lazy = lazy_load_of(orm_state)
    if lazy is None:
        # An object refreshed on its own (expired by commit(), say) stays in its query's run.
        note_refresh_load(orm_state.load_options)
        return None
    prop = lazy.relationship
    if prop.lazy not in _LAZY_SELECT:
        return None  # another loader style
    if prop.key in lazy.state.callables and not may_batch(lazy.state.callables[prop.key]):
        return None  # an explicit per-object loader option (or a batch's, read plain)
    if lazy.by_eager_loader:
        return None  # immediateload's own (noted above when its loader path is known)
    allowed, option_settings = autoload_settings(lazy.state.load_options)
    if not allowed:
        return None  # loaded with explicit loader options: left alone
    if option_settings is not None:
        return lazy, option_settings
    for scope in _scopes:
        if scope.covers(prop):
            return lazy, scope.settings
    return None


@lazy_loads_only
def _on_orm_execute(orm_state: ORMExecuteState) -> Result[Any] | None:
    found = _settings_for(orm_state)
    if found is None:
        return None
    lazy, settings = found
    return batch_load(orm_state, lazy, settings)


def _install() -> None:
    track_run_cohorts()
    install_handover()
    if not event.contains(Session, "do_orm_execute", _on_orm_execute):
        event.listen(Session, "do_orm_execute", _on_orm_execute, retval=True)


def _remove() -> None:
    if event.contains(Session, "do_orm_execute", _on_orm_execute):
        event.remove(Session, "do_orm_execute", _on_orm_execute)
    remove_handover()
    untrack_run_cohorts()


_hooks = SharedHooks(_install, _remove)


def autoloading() -> bool:
    """Whether the autoload hook is installed right now."""
    return event.contains(Session, "do_orm_execute", _on_orm_execute)


class Autoload(Registration):
    """An active ``autoload()`` scope; ``close()`` (or leaving its ``with`` block) ends it.

    Closing the last scope removes ormtune's ORM hooks; objects loaded meanwhile are left as
    they are.
    """

    __slots__ = ("_scope",)

    def __init__(self, scope: _Scope) -> None:
        def end() -> None:
            global _scopes
            with _lock:
                _scopes = tuple(other for other in _scopes if other is not scope)
            _hooks.release()

        super().__init__(end)
        self._scope = scope

    def __repr__(self) -> str:
        scope = self._scope
        what = (
            "every relationship"
            if scope.everything
            else ", ".join(
                [base.__name__ for base in scope.bases]
                + sorted(f"{p.parent.class_.__name__}.{p.key}" for p in scope.relationships)
            )
        )
        state = "closed" if self._closed else "active"
        return f"<Autoload {what} chunk_size={scope.settings.chunk_size} {state}>"


def _relationship(target: object) -> RelationshipProperty[Any]:
    prop = target.property if isinstance(target, InstrumentedAttribute) else target
    if not isinstance(prop, RelationshipProperty):
        raise TypeError(
            f"autoload() takes declarative base classes or relationship attributes such as "
            f"User.posts, but was given {target!r}, which is not a relationship"
        )
    if prop.lazy not in _LAZY_SELECT:
        raise TypeError(
            f"autoload() batches lazy='select' relationships, but {prop} uses "
            f"lazy={prop.lazy!r}; it is already loaded another way (or never loads)"
        )
    return prop


def _is_declarative_base(target: object) -> bool:
    return isinstance(target, type) and isinstance(
        target, DeclarativeMeta | DeclarativeAttributeIntercept
    )


def autoload(*targets: object, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Autoload:
    """Batch lazy loads: the first lazy load of a relationship on one object loads it for every
    object the same query loaded, in one query per ``chunk_size`` keys.

    With no targets, every ``lazy="select"`` relationship is covered; otherwise only the given
    ones, where a target is a declarative base (its mapped classes' relationships) or a
    relationship attribute (``User.posts``). Relationships with another loader style, loads
    made with explicit loader options, pending objects and attributes the application has
    set are never batched. Returns an :class:`Autoload`; close it (or use it as a context
    manager) to stop.
    """
    global _scopes
    size = check_chunk_size(chunk_size)
    bases: list[type] = []
    relationships: set[RelationshipProperty[Any]] = set()
    for target in targets:
        if _is_declarative_base(target):
            assert isinstance(target, type)
            bases.append(target)
        else:
            relationships.add(_relationship(target))
    scope = _Scope(tuple(bases), frozenset(relationships), Settings(size))
    _hooks.acquire()
    with _lock:
        _scopes = (*_scopes, scope)
    return Autoload(scope)


_option_lock = threading.Lock()
_option_users = False


def autoload_option(*, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AutoloadOption:
    """A statement option: ``select(User).options(ormtune.autoload_option())`` batches the lazy
    loads of the objects this statement loads (and of what those batches load in turn), with
    no global ``autoload()`` needed.

    The first call installs ormtune's ORM hooks for the rest of the process.
    """
    global _option_users
    size = check_chunk_size(chunk_size)
    with _option_lock:
        if not _option_users:
            _option_users = True
            _hooks.acquire()
    return AutoloadOption(Settings(size))
