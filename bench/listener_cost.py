"""What capture costs per statement, against SQLAlchemy's own dispatch to engine listeners.

2,000 ORM primary-key selects on in-memory SQLite (no network: the ORM and the hooks are all the
work), plain, with no-op ``before_cursor_execute`` / ``after_cursor_execute`` listeners on
``Engine`` (the floor any engine-event capture pays), and under ``ormtune.capture()``.
Interleaved rounds, medians.

    .venv-bench/bin/python bench/listener_cost.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Integer, String, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).parent))

import _harness

import ormtune

STATEMENTS = 2_000


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_listener_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def _noop(*args: Any) -> None:
    """An engine listener that does nothing."""


def main() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Item(id=i, name=f"item {i}") for i in range(1, 1001))
        session.commit()

    def plain() -> None:
        with Session(engine) as session:
            for i in range(STATEMENTS):
                session.execute(select(Item).where(Item.id == i % 1000 + 1)).scalar_one()

    def noop_listeners() -> None:
        for name in ("before_cursor_execute", "after_cursor_execute"):
            event.listen(Engine, name, _noop)
        try:
            plain()
        finally:
            for name in ("before_cursor_execute", "after_cursor_execute"):
                event.remove(Engine, name, _noop)

    def captured() -> None:
        with ormtune.capture() as log:
            plain()
        assert log.count == STATEMENTS

    variants = {"plain": plain, "no-op engine listeners": noop_listeners, "capture()": captured}
    times = _harness.interleaved(variants, rounds=15)
    medians = {name: _harness.median(values) for name, values in times.items()}
    base = medians["plain"]
    rows = [
        [name, f"{m * 1000:.1f}", f"{m / base:.3f}", f"{(m - base) / STATEMENTS * 1e6:+.1f}"]
        for name, m in medians.items()
    ]
    print(_harness.text_table(["variant", "median ms", "vs plain", "µs/stmt"], rows))
    print(f"\n{_harness.environment({'rounds': '15'})}\ncommand: {_harness.command_line()}")


if __name__ == "__main__":
    main()
