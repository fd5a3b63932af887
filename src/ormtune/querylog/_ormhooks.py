"""``do_orm_execute`` hooks that act on lazy loads only.

The query cache serves a statement only when no ``do_orm_execute`` hook runs after its own
(such a hook may change the statement, and a hit would skip it). Hooks that look at lazy
loads and return ``None`` for everything else (autoload's) cannot change a
statement the cache serves, since the cache never serves a relationship load; they register
here, so the cache runs whichever order they were installed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["acts_on_lazy_loads_only", "lazy_loads_only"]

F = TypeVar("F", bound=Callable[..., Any])

_LAZY_LOAD_HOOKS: set[object] = set()


def lazy_loads_only(hook: F) -> F:
    """Mark a ``do_orm_execute`` hook that returns ``None`` for every statement but a lazy
    load, and never changes one."""
    _LAZY_LOAD_HOOKS.add(hook)
    return hook


def acts_on_lazy_loads_only(hook: object) -> bool:
    """Whether ``hook`` was marked with :func:`lazy_loads_only`."""
    return hook in _LAZY_LOAD_HOOKS
