"""Statements of loops that write while they read, plain lazy loading against autoload.

Each loop reads every user's payments (the naive loop of ``autoload.py``) and writes something
at each step; the table gives the statements each run sent (SELECTs, and all statements) and
checks that the two runs read the same rows. Query counts do not depend on the machine, so one
run on in-memory SQLite is the figure; run it against an older ``src`` through ``PYTHONPATH``
for the "before" column.

    .venv-bench/bin/python bench/write_loops.py --users 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

sys.path.insert(0, str(Path(__file__).parent))

from autoload import Payment, User, seed

import ormtune

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _nothing(session: Session, users: list[User], i: int) -> None:
    pass


def _update_unread_column(session: Session, users: list[User], i: int) -> None:
    for payment in users[i].payments:
        payment.amount += 1


def _add_for_current(session: Session, users: list[User], i: int) -> None:
    users[i].payments.append(Payment(amount=1))


def _add_for_last_once(session: Session, users: list[User], i: int) -> None:
    if i == 0:
        session.add(Payment(amount=1, user_id=users[-1].id))


def _move_to_next(session: Session, users: list[User], i: int) -> None:
    if i + 1 < len(users) and users[i].payments:
        users[i].payments[0].user_id = users[i + 1].id


def _statement_on_unread_column(session: Session, users: list[User], i: int) -> None:
    session.execute(update(User).where(User.id == users[i].id).values(name="renamed"))


def _textual_select(session: Session, users: list[User], i: int) -> None:
    session.execute(text("SELECT COUNT(*) FROM bench_payments"))


def _commit(session: Session, users: list[User], i: int) -> None:
    session.commit()


LOOPS: dict[str, Any] = {
    "read only": _nothing,
    "update a column the relationship does not read": _update_unread_column,
    "append a payment to the user just read": _add_for_current,
    "add a payment for the last user, once": _add_for_last_once,
    "move a payment to the next user (not read yet)": _move_to_next,
    "UPDATE statement on users.name": _statement_on_unread_column,
    "textual SELECT": _textual_select,
    "commit": _commit,
}


def run(engine: Engine, step: Any, *, autoloaded: bool) -> tuple[list[Any], int, int]:
    with ormtune.capture(engine) as log, Session(engine) as session:
        scope = ormtune.autoload() if autoloaded else None
        try:
            users = list(session.scalars(select(User).order_by(User.id)))
            seen = []
            for i, user in enumerate(users):
                seen.append((user.id, [(p.id, p.amount) for p in user.payments]))
                step(session, users, i)
            session.rollback()
        finally:
            if scope is not None:
                scope.close()
    selects = sum(1 for event in log if event.sql.lstrip().upper().startswith("SELECT"))
    return seen, selects, log.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    print(f"| loop (N = {args.users}) | plain: SELECTs / statements | autoload | same rows |")
    print("|---|---|---|---|")
    for name, step in LOOPS.items():
        counts = []
        results = []
        for autoloaded in (False, True):
            engine = create_engine("sqlite://", poolclass=StaticPool)
            seed(engine, args.users)
            seen, selects, total = run(engine, step, autoloaded=autoloaded)
            engine.dispose()
            results.append(seen)
            counts.append(f"{selects} / {total}")
        same = "yes" if results[0] == results[1] else "**no**"
        print(f"| {name} | {counts[0]} | {counts[1]} | {same} |")


if __name__ == "__main__":
    main()
