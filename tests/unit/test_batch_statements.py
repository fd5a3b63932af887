"""The statements autoload's direct batches run: one object per plan and marker, so SQLAlchemy
computes its cache key once (``batchload._direct.with_options``).

What the batches load is covered by tests/integration/test_autoload*.py.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select

from ormtune.batchload._direct import with_options
from ormtune.batchload._options import BatchMarker, Settings
from tests.models import Post


def test_the_same_lone_option_gives_the_same_statement_object() -> None:
    statement = select(Post).where(Post.author_id.in_(bindparam("primary_keys")))
    marker = BatchMarker([], Settings())
    first = with_options(statement, [marker])
    assert first is with_options(statement, [marker])
    assert first is not statement
    assert first._with_options == (marker,)
    # SQLAlchemy keeps the cache key on the object: computed once for every batch.
    assert first._generate_cache_key() is first._generate_cache_key()


def test_another_option_or_statement_gets_its_own() -> None:
    statement = select(Post).where(Post.author_id.in_(bindparam("primary_keys")))
    other_statement = select(Post).where(Post.id.in_(bindparam("primary_keys")))
    marker = BatchMarker([], Settings())
    other_marker = BatchMarker([], Settings(chunk_size=7))
    first = with_options(statement, [marker])
    with_other_marker = with_options(statement, [other_marker])
    assert with_other_marker is not first
    assert with_other_marker._with_options == (other_marker,)
    on_other_statement = with_options(other_statement, [marker])
    assert on_other_statement is not first
    assert on_other_statement.whereclause is not None
    assert "posts.id IN" in str(on_other_statement)


def test_several_options_or_none() -> None:
    statement = select(Post).where(Post.author_id.in_(bindparam("primary_keys")))
    marker = BatchMarker([], Settings())
    carried = BatchMarker([], Settings(chunk_size=3))
    both = with_options(statement, [marker, carried])
    assert both._with_options == (marker, carried)
    assert with_options(statement, [marker, carried]) is not both  # made for each batch
    assert with_options(statement, []) is statement
