"""What autoload costs against hand-written selectinload, in CPU instructions counted by callgrind.

``autoload.py`` times the naive loop on PostgreSQL; on a shared machine identical processes
differ by 5-30% from one another, as much as the 1.15x target itself. This one counts instead:
the same loop at N users on in-memory SQLite, where the ORM's work is all the work (no round
trips dilute ormtune's part, so the ratio is an upper bound of the PostgreSQL one), under
``valgrind --tool=callgrind`` with a small and a large number of runs and the cyclic garbage
collector off; the difference divided by the difference in runs is the instructions of one
run, free of start-up. Variants:

* ``selectinload``: the loop with ``.options(selectinload(User.payments))``, no ormtune;
* ``autoload``: the plain loop with ``ormtune.autoload()`` installed at start-up;
* ``selectinload + cohorts``: selectinload with :func:`ormtune.querylog.track_cohorts` on (a
  ``load`` event per loaded object: what autoload paid until it found cohorts from query runs).

    .venv-bench/bin/python bench/autoload_cost.py              # needs valgrind
    .venv-bench/bin/python bench/autoload_cost.py --users 10
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine
from sqlalchemy.orm import selectinload

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import User, naive_loop, seed

import ormtune
from ormtune.querylog import track_cohorts

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.orm.interfaces import ORMOption

VARIANTS = {
    "selectinload": "selectinload",
    "autoload": "autoload",
    "cohorts": "selectinload + cohorts",
}


def _inner(variant: str, users: int, runs: int) -> None:
    engine = create_engine("sqlite://")
    seed(engine, max(users, 100))
    options: tuple[ORMOption, ...] = ()
    if variant == "autoload":
        ormtune.autoload()
    else:
        options = (selectinload(User.payments),)
    if variant == "cohorts":
        track_cohorts()
    for _ in range(3):  # warm SQLAlchemy's caches
        naive_loop(engine, users, options)
    # Without the cyclic collector: when its passes fall depends on every allocation since
    # start-up, which moves the counts by more than the difference measured.
    gc.collect()
    gc.disable()
    for _ in range(runs):
        naive_loop(engine, users, options)


def main(argv: Sequence[str] | None = None) -> None:
    _harness.callgrind_main(
        __file__,
        VARIANTS,
        _inner,
        option="variants",
        base="selectinload",
        headers=["variant", "instructions/run", "vs selectinload", "ratio"],
        users=100,
        small=3,
        large=13,
        argv=argv,
    )


if __name__ == "__main__":
    main()
