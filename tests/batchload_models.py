"""A schema with every relationship shape autoload must handle, and data to fill it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Table,
    insert,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, WriteOnlyMapped, mapped_column, relationship

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "Author",
    "Base",
    "Book",
    "Car",
    "Employee",
    "Engineer",
    "Manager",
    "Node",
    "Order",
    "OrderLine",
    "Part",
    "Tag",
    "Vehicle",
    "insert_all",
    "seed",
]


class Base(AsyncAttrs, DeclarativeBase):
    pass


book_tags = Table(
    "bl_book_tags",
    Base.metadata,
    Column("book_id", ForeignKey("bl_books.id"), primary_key=True),
    Column("tag_id", ForeignKey("bl_tags.id"), primary_key=True),
)


class Author(Base):
    __tablename__ = "bl_authors"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    # newest first: per-parent order must survive batching
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id.desc()")
    raising_books: Mapped[list[Book]] = relationship(viewonly=True, lazy="raise")
    dynamic_books = relationship("Book", viewonly=True, lazy="dynamic")
    written_books: WriteOnlyMapped[Book] = relationship(viewonly=True)
    strict_books: Mapped[list[Book]] = relationship(viewonly=True, lazy="raise_on_sql")


class Book(Base):
    __tablename__ = "bl_books"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("bl_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    tags: Mapped[list[Tag]] = relationship(secondary=book_tags, order_by="Tag.id")


class Tag(Base):
    __tablename__ = "bl_tags"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(50))


class Node(Base):
    """A tree: autoload must batch it level by level."""

    __tablename__ = "bl_nodes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("bl_nodes.id"))
    children: Mapped[list[Node]] = relationship(order_by="Node.id")


class Employee(Base):
    """Joined-table inheritance; only managers have reports."""

    __tablename__ = "bl_employees"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    boss_id: Mapped[int | None] = mapped_column(ForeignKey("bl_employees.id"))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee"}


class Manager(Employee):
    __tablename__ = "bl_managers"
    id: Mapped[int] = mapped_column(ForeignKey("bl_employees.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(Integer)
    reports: Mapped[list[Employee]] = relationship(
        primaryjoin="Manager.id == foreign(Employee.boss_id)", order_by=Employee.id
    )
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Engineer(Employee):
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Vehicle(Base):
    """Single-table inheritance; only cars have parts."""

    __tablename__ = "bl_vehicles"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    parts: Mapped[list[Part]] = relationship(order_by="Part.id")
    __mapper_args__ = {"polymorphic_identity": "car"}


class Part(Base):
    __tablename__ = "bl_parts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("bl_vehicles.id"))


class Order(Base):
    """A composite primary key."""

    __tablename__ = "bl_orders"
    region: Mapped[str] = mapped_column(String(10), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    lines: Mapped[list[OrderLine]] = relationship(back_populates="order", order_by="OrderLine.id")


class OrderLine(Base):
    __tablename__ = "bl_order_lines"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    region: Mapped[str] = mapped_column(String(10))
    number: Mapped[int] = mapped_column(Integer)
    order: Mapped[Order] = relationship(back_populates="lines")
    __table_args__ = (
        ForeignKeyConstraint(["region", "number"], ["bl_orders.region", "bl_orders.number"]),
    )


def seed(parents: int) -> list[tuple[Table, Sequence[Mapping[str, object]]]]:
    """Rows for every table, ``parents`` parents per shape, as (table, rows) in insert order."""
    authors = [{"id": i, "name": f"author {i}"} for i in range(1, parents + 1)]
    books = [
        {"id": i * 10 + j, "title": f"book {i}.{j}", "author_id": i}
        for i in range(1, parents + 1)
        for j in range(3 if i % 4 else 0)  # every fourth author has no books
    ]
    tags = [{"id": t, "label": f"tag {t}"} for t in range(1, 6)]
    book_tag_rows = [
        {"book_id": b["id"], "tag_id": t}
        for b in books
        for t in range(1, 6)
        if (int(str(b["id"])) + t) % 3 == 0  # shared tags: the same Tag under many books
    ]
    nodes: list[dict[str, int | None]] = [
        {"id": n, "parent_id": None} for n in range(1, parents + 1)
    ]
    next_id = parents + 1
    level = list(range(1, parents + 1))
    for _ in range(2):  # two more levels, two children each
        children: list[int] = []
        for parent in level:
            for _ in range(2):
                nodes.append({"id": next_id, "parent_id": parent})
                children.append(next_id)
                next_id += 1
        level = children
    employees: list[dict[str, object]] = []
    managers: list[dict[str, object]] = []
    for i in range(1, parents + 1):
        employees.append({"id": i, "kind": "manager", "name": f"manager {i}", "boss_id": None})
        managers.append({"id": i, "budget": i * 100})
    employees += [
        {"id": parents + i, "kind": "engineer", "name": f"engineer {i}", "boss_id": i}
        for i in range(1, parents + 1)
    ]
    vehicles = [{"id": i, "kind": "car" if i % 2 else "vehicle"} for i in range(1, 2 * parents + 1)]
    parts = [
        {"id": i * 10 + j, "vehicle_id": i} for i in range(1, 2 * parents + 1, 2) for j in range(2)
    ]
    orders = [{"region": r, "number": i} for i in range(1, parents + 1) for r in ("eu",)]
    lines = [
        {"id": i * 10 + j, "region": "eu", "number": i}
        for i in range(1, parents + 1)
        for j in range(2)
    ]
    tables = Base.metadata.tables
    return [
        (tables["bl_authors"], authors),
        (tables["bl_books"], books),
        (tables["bl_tags"], tags),
        (book_tags, book_tag_rows),
        (tables["bl_nodes"], nodes),
        (tables["bl_employees"], employees),
        (tables["bl_managers"], managers),
        (tables["bl_vehicles"], vehicles),
        (tables["bl_parts"], parts),
        (tables["bl_orders"], orders),
        (tables["bl_order_lines"], lines),
    ]


def insert_all(connection: Connection, parents: int) -> None:
    """Fill every table for ``parents`` parents (in one transaction, executemany per table)."""
    for table, rows in seed(parents):
        if rows:
            connection.execute(insert(table), rows)
