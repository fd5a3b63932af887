"""ormtune in one minute: capture the queries of a loop, see the N+1, fix it, budget it.

Runs on an embedded SQLite database; no services needed. ``make demo`` runs it.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

import ormtune
from ormtune import nplusone
from ormtune.testing import assert_max_queries


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def shelf(session: Session, *, eager: bool) -> list[str]:
    """Every author with the titles of their books: the classic N+1 when not eager."""
    query = select(Author).order_by(Author.id)
    if eager:
        query = query.options(selectinload(Author.books))
    return [
        f"{author.name}: {', '.join(book.title for book in author.books)}"
        for author in session.scalars(query)
    ]


def main() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            Author(name=f"Author {a}", books=[Book(title=f"Book {a}.{b}") for b in range(3)])
            for a in range(10)
        )
        session.commit()

    print("1. Capture the queries of a naive loop over a relationship:\n")
    with ormtune.capture(callsites=True) as log, Session(engine) as session:
        shelf(session, eager=False)
    print(log.report(), "\n")

    print("2. The same loop with .options(selectinload(Author.books)):\n")
    with ormtune.capture(callsites=True) as log, Session(engine) as session:
        shelf(session, eager=True)
    print(log.report(), "\n")

    print("3. A query budget (the assert_max_queries fixture in pytest) catches the N+1:\n")
    try:
        with assert_max_queries(2), Session(engine) as session:
            shelf(session, eager=False)
    except ormtune.QueryCountError as error:
        print(f"QueryCountError: {error}\n")
    with assert_max_queries(2), Session(engine) as session:
        shelf(session, eager=True)
    print("...and the eager version stays within its budget of 2 queries.\n")

    print("4. N+1 detection names the loop and the fix (nplusone.detect, or in pytest):\n")
    try:
        with nplusone.detect("raise"), Session(engine) as session:
            shelf(session, eager=False)
    except ormtune.NPlusOneError as error:
        print(f"NPlusOneError: {error}\n")

    print("5. Or leave the naive loop as it is and turn on ormtune.autoload():\n")
    with ormtune.autoload(), ormtune.capture() as log, Session(engine) as session:
        naive = shelf(session, eager=False)
    with Session(engine) as session:
        assert naive == shelf(session, eager=True)  # the same result
    print(log.report(timings=False))
    print(
        "\nThe first lazy load of Author.books loaded the books of all 10 authors at once "
        "(one query, the one selectinload(Author.books) would have run)."
    )
    engine.dispose()


if __name__ == "__main__":
    main()
