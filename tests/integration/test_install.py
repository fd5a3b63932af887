"""``ormtune.install()``: one call turns the features on, ``close()`` turns them off."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import ormtune
from ormtune.backends import MemoryBackend
from ormtune.caching import active_cache
from ormtune.testing import assert_max_queries, assert_num_queries
from tests.models import User, sample_users

if TYPE_CHECKING:
    from sqlalchemy import Engine


def titles(engine: Engine) -> list[list[str]]:
    with Session(engine) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        return [[post.title for post in user.posts] for user in users]


def cached_names(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(User.name).order_by(User.id).options(ormtune.cache())))


def test_install_turns_features_on_and_close_turns_them_off(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(sample_users(5))
        session.commit()
    installation = ormtune.install(engine, cache=MemoryBackend())
    try:
        assert active_cache() is installation.cache
        with assert_num_queries(2):  # users, then all posts: autoload batched the loop
            titles(engine)
        cached_names(engine)
        cached_names(engine)
        with assert_num_queries(0):
            cached_names(engine)
    finally:
        installation.close()
    assert active_cache() is None
    with assert_num_queries(6):  # plain lazy loading again: 1 + 5
        titles(engine)


def test_nplusone_reports_what_autoload_left(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(sample_users(3))
        session.commit()
    with (
        ormtune.install(autoload=False, cache=False, nplusone="warn"),
        pytest.warns(ormtune.NPlusOneWarning, match="User.posts"),
    ):
        titles(engine)


def test_a_failing_part_leaves_nothing_installed(engine: Engine) -> None:
    with ormtune.install(cache=False, autoload=False, nplusone="log"):
        with pytest.raises(ormtune.ConfigurationError, match="already installed"):
            ormtune.install(nplusone="log")  # the second detection is refused...
        assert active_cache() is None  # ...and the cache it had installed is gone again


def test_bad_cache_argument_is_refused() -> None:
    with pytest.raises(TypeError, match="cache must be"):
        ormtune.install(cache="redis://nowhere")  # type: ignore[arg-type]


def test_the_cache_serves_whatever_order_lazy_load_hooks_were_installed_in(
    engine: Engine,
) -> None:
    # install() puts N+1 detection after the cache, and an autoload() scope opened later comes
    # after both: hooks that only act on lazy loads must not turn the cache off.
    with Session(engine) as session:
        session.add_all(sample_users(3))
        session.commit()
    with (
        ormtune.install(engine, cache=MemoryBackend(), nplusone="log") as installation,
        ormtune.autoload(),
    ):
        cached_names(engine)
        cached_names(engine)
        with assert_num_queries(0):
            assert cached_names(engine) == ["user 0", "user 1", "user 2"]
        with assert_max_queries(3):  # and autoload still batches the loop (plain: 1 + 3)
            titles(engine)
        assert installation.cache is not None
        assert not installation.cache.stats.overall.bypasses
