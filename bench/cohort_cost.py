"""What recording cohorts costs per loaded object, against SQLAlchemy's own event dispatch.

Loads 100 users with 5 payments each (selectinload) from in-memory SQLite, where the ORM's own
row processing is all the work: plain, with a no-op ``load`` listener (the floor any per-instance
hook pays), and with ormtune's cohort tracking. Interleaved rounds, medians.

    .venv-bench/bin/python bench/cohort_cost.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.orm import Mapper, selectinload

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import User, naive_loop, seed

from ormtune.querylog import track_cohorts, untrack_cohorts

if TYPE_CHECKING:
    from collections.abc import Callable


def _noop(state: Any, context: Any) -> None:
    """A load listener that does nothing."""


def main() -> None:
    engine = create_engine("sqlite://")
    seed(engine, 100)
    options = (selectinload(User.payments),)

    def plain() -> int:
        return naive_loop(engine, 100, options)

    def with_listener(install: Callable[[], None], remove: Callable[[], None]) -> Callable[[], int]:
        def run() -> int:
            install()
            try:
                return plain()
            finally:
                remove()

        return run

    variants = {
        "plain": plain,
        "no-op load listener": with_listener(
            lambda: event.listen(Mapper, "load", _noop, raw=True),
            lambda: event.remove(Mapper, "load", _noop),
        ),
        "ormtune cohorts": with_listener(track_cohorts, untrack_cohorts),
    }
    times = _harness.interleaved(variants, rounds=200)
    medians = {name: _harness.median(values) for name, values in times.items()}
    rows = [
        [name, f"{median * 1000:.2f}", f"{median / medians['plain']:.3f}"]
        for name, median in medians.items()
    ]
    print(_harness.text_table(["variant", "median ms (600 objects)", "vs plain"], rows))
    print(f"\n{_harness.environment({'rounds': '200'})}\ncommand: {_harness.command_line()}")


if __name__ == "__main__":
    main()
