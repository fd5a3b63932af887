"""autoload() on string keys that the database compares loosely.

A batch groups the rows it loads by their key values in Python, exactly; the lazy load asks
the database, whose collation may match ``'ABC'`` to ``'abc'`` (MariaDB's default collations
ignore case; an SQLite column declared ``COLLATE NOCASE`` does too; PostgreSQL's default
collation is exact). A batch that meets such a row hands nothing over for its parents, and the
relationship is lazy-loaded plainly from then on; objects expired by ``commit()`` (which take
the re-select, ``selectinload`` matching in Python) are not batched on string keys at all.
Control (plain lazy loading) against treatment, whole results compared, on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, String, create_engine, delete, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, foreign, mapped_column, relationship

import ormtune
from ormtune.batchload import _direct, autoload
from tests.conftest import BACKENDS, Backend

# Case-insensitive where the backend can be told so per column (SQLite); MariaDB's default
# collation already is; PostgreSQL's is exact.
_KEY = String(20).with_variant(String(20, collation="NOCASE"), "sqlite")


class Base(DeclarativeBase):
    pass


class Code(Base):
    __tablename__ = "ak_codes"
    code: Mapped[str] = mapped_column(_KEY, primary_key=True)
    entries: Mapped[list[Entry]] = relationship(
        primaryjoin=lambda: Code.code == foreign(Entry.code),
        order_by=lambda: Entry.id,
        viewonly=True,
    )


class Entry(Base):
    __tablename__ = "ak_entries"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(_KEY)  # no constraint: PostgreSQL would refuse 'ABC'
    owner: Mapped[Code | None] = relationship(
        primaryjoin=lambda: foreign(Entry.code) == Code.code, viewonly=True
    )


CODES = ["abc", "Def", "ghi", "jkl"]
# Entries whose key differs from its code's only by case, and entries that match exactly.
LOOSE = {100: "abc", 101: "ABC", 102: "def", 103: "ghi", 104: "GHI", 105: "jkl"}
EXACT = {200: "abc", 201: "Def", 202: "ghi", 203: "jkl", 204: "jkl"}
# Both spellings of one code: every target the database returns is one some entry names
# exactly, and 'ABC' gets none of its own.
BOTH = {300: "abc", 301: "ABC", 302: "ghi"}


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    engine = create_engine(backend.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(Code), [{"code": code} for code in CODES])
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def entries(engine: Engine) -> Callable[[dict[int, str]], None]:
    """Replace the entries with ``rows``; forget which relationships met loose keys."""

    def fill(rows: dict[int, str]) -> None:
        with engine.begin() as connection:
            connection.execute(delete(Entry))
            connection.execute(insert(Entry), [{"id": i, "code": c} for i, c in rows.items()])
        _direct.loose_keys.clear()

    return fill


def loose_collation(engine: Engine) -> bool:
    with Session(engine) as session:
        return session.scalar(select(Code.code).where(Code.code == "ABC")) is not None


Walk = Callable[[Session, list[Any]], Any]


def run(engine: Engine, walk: Walk, *, autoloaded: bool, expired: bool) -> tuple[Any, int]:
    """``walk`` in a new session; with ``expired``, over objects loaded and then expired by
    ``commit()`` (each refreshes on its own at its first read, its peers stay expired: the
    re-select path), else over what it loads itself."""
    scope = autoload() if autoloaded else None
    try:
        with Session(engine) as session:
            kept: list[Any] = []  # the session holds its objects weakly
            if expired:
                kept += session.scalars(select(Code).order_by(Code.code)).all()
                kept += session.scalars(select(Entry).order_by(Entry.id)).all()
                session.commit()
            with ormtune.capture(engine) as log:
                data = walk(session, kept)
    finally:
        if scope is not None:
            scope.close()
    return data, log.count


def compare(engine: Engine, walk: Walk, *, expired: bool = False) -> tuple[int, int]:
    control, control_count = run(engine, walk, autoloaded=False, expired=expired)
    treated, treated_count = run(engine, walk, autoloaded=True, expired=expired)
    assert treated == control
    return control_count, treated_count


def collections(session: Session, kept: list[Any]) -> list[tuple[str, list[int]]]:
    codes = [obj for obj in kept if isinstance(obj, Code)] or session.scalars(
        select(Code).order_by(Code.code)
    ).all()
    return [(code.code, [entry.id for entry in code.entries]) for code in codes]


def owners(session: Session, kept: list[Any]) -> list[tuple[int, str | None]]:
    found = [obj for obj in kept if isinstance(obj, Entry)] or session.scalars(
        select(Entry).order_by(Entry.id)
    ).all()
    return [(entry.id, None if entry.owner is None else entry.owner.code) for entry in found]


@pytest.mark.parametrize("expired", [False, True], ids=["loaded", "expired"])
def test_collections_on_keys_the_database_matches_loosely(
    engine: Engine, entries: Callable[[dict[int, str]], None], expired: bool
) -> None:
    entries(LOOSE)
    control, treated = compare(engine, collections, expired=expired)
    if loose_collation(engine):
        # 'ABC' is among 'abc''s entries: the plain lazy load asks the database.
        with Session(engine) as session:
            assert dict(collections(session, []))["abc"] == [100, 101]
    elif not expired:
        assert treated < control  # an exact collation: batched as usual
    else:
        assert treated == control  # expired objects on string keys: never batched


@pytest.mark.parametrize("rows", [LOOSE, BOTH], ids=["loose", "both-spellings"])
@pytest.mark.parametrize("expired", [False, True], ids=["loaded", "expired"])
def test_many_to_one_on_keys_the_database_matches_loosely(
    engine: Engine, entries: Callable[[dict[int, str]], None], expired: bool, rows: dict[int, str]
) -> None:
    entries(rows)
    compare(engine, owners, expired=expired)
    if loose_collation(engine):
        upper = next(i for i, code in rows.items() if code == "ABC")
        with Session(engine) as session:
            assert dict(owners(session, []))[upper] == "abc"


def test_string_keys_that_match_exactly_are_batched(
    engine: Engine, entries: Callable[[dict[int, str]], None]
) -> None:
    entries(EXACT)
    control, treated = compare(engine, collections)
    assert (control, treated) == (1 + len(CODES), 2)
    control, treated = compare(engine, owners)  # four distinct owners, selected by one batch
    assert (control, treated) == (1 + len(CODES), 2)
