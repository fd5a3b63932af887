"""capture() and observe() against real databases, sync and asyncio."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, create_engine, event, exc, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import ormtune
from ormtune.querylog import (
    QueryEvent,
    Registration,
    StatementInfo,
    StatementKind,
    lazy_load_executing,
    lazy_load_target,
    listening,
    watch,
)
from ormtune.typing import StatementWatcher
from tests.models import Post, User, sample_users

if TYPE_CHECKING:
    from tests.conftest import Backend


def _seed(engine: Engine, users: int = 3, posts_each: int = 2) -> None:
    with Session(engine) as session:
        session.add_all(sample_users(users, posts_each))
        session.commit()


def _line_of(marker: str) -> int:
    """The line number, in this file, of the line containing ``marker``."""
    with open(__file__) as source:
        lines = enumerate(source, start=1)
        return next(n for n, line in lines if marker in line and "_line_of" not in line)


def test_records_every_statement_with_kind_tables_and_rowcount(engine: Engine) -> None:
    _seed(engine, users=3, posts_each=2)
    with ormtune.capture() as log, Session(engine) as session:
        posts = session.scalars(select(Post).order_by(Post.id)).all()
        authors = {post.author.name for post in posts}  # 3 lazy loads, one per distinct author
        session.execute(insert(User).values(name="new"))
        session.commit()

    assert authors == {"user 0", "user 1", "user 2"}
    assert [event.kind for event in log] == [
        StatementKind.SELECT,
        StatementKind.SELECT,
        StatementKind.SELECT,
        StatementKind.SELECT,
        StatementKind.INSERT,
    ]
    assert log[0].tables == ("posts",)
    assert log[1].tables == ("users",)
    assert log[4].tables == ("users",)
    assert log[4].rowcount == 1
    assert all(event.engine is engine for event in log)
    assert all(event.duration > 0 for event in log)
    assert all(event.error is None for event in log)
    assert log.count == len(log) == 5
    assert log.total_duration == pytest.approx(sum(e.duration for e in log))
    lazy = log.by_fingerprint()[0]
    assert lazy.count == 3
    assert lazy.fingerprint.startswith("select users.id")  # 2.0 adds "as users_id" labels
    assert "from users where users.id = ?" in lazy.fingerprint  # PostgreSQL adds ::integer
    assert [group.count for group in log.duplicates()] == [3]


def test_parameters_are_redacted_unless_asked_for(engine: Engine) -> None:
    _seed(engine, users=1)
    with ormtune.capture() as redacted, Session(engine) as session:
        session.scalars(select(User).where(User.name == "secret-name")).all()
    with ormtune.capture(parameters=True) as revealed, Session(engine) as session:
        session.scalars(select(User).where(User.name == "secret-name")).all()

    assert "secret-name" not in repr(redacted[0].parameters)
    assert "<str>" in repr(redacted[0].parameters)
    assert "secret-name" in repr(revealed[0].parameters)
    assert redacted[0].fingerprint == revealed[0].fingerprint


def test_executemany_is_one_event_with_every_row_shape(engine: Engine) -> None:
    with ormtune.capture() as log, engine.begin() as conn:
        conn.execute(insert(User), [{"name": f"bulk {i}"} for i in range(5)])
    inserts = [event for event in log if event.kind is StatementKind.INSERT]
    assert inserts, log.report()
    assert sum(len(e.parameters) if e.executemany else 1 for e in inserts) >= 1
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 5


def test_values_differing_statements_share_a_fingerprint(engine: Engine) -> None:
    _seed(engine, users=4)
    with ormtune.capture() as log, Session(engine) as session:
        session.scalars(select(User).where(User.id.in_([1, 2]))).all()
        session.scalars(select(User).where(User.id.in_([1, 2, 3, 4]))).all()
        session.scalars(select(User).where(User.name == "x")).all()
    assert log[0].fingerprint == log[1].fingerprint
    assert log[0].fingerprint_id == log[1].fingerprint_id
    assert log[2].fingerprint != log[0].fingerprint


def test_callsite_is_the_application_line(engine: Engine) -> None:
    _seed(engine, users=1)
    with ormtune.capture(callsites=True) as log, Session(engine) as session:
        session.scalars(select(User)).all()  # callsite: sync
    callsite = log[0].callsite
    assert callsite is not None
    assert callsite.filename == __file__
    assert callsite.lineno == _line_of("# callsite: sync")
    assert callsite.function == "test_callsite_is_the_application_line"
    assert str(callsite).endswith(f"test_capture.py:{callsite.lineno} in {callsite.function}")


def test_callsites_are_off_by_default(engine: Engine) -> None:
    with ormtune.capture() as log, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert log[0].callsite is None


def test_skip_modules_moves_the_callsite_out_of_a_data_layer(engine: Engine) -> None:
    def repository_get(session: Session) -> None:
        session.scalars(select(User)).all()

    with ormtune.capture(callsites=True, skip_modules=(__name__,)) as log, Session(engine) as s:
        repository_get(s)
    # every frame of this module is skipped, so the call-site is pytest's caller frame or None
    assert log[0].callsite is None or log[0].callsite.filename != __file__


async def test_async_engine_capture_and_callsite(async_engine: AsyncEngine) -> None:
    async with AsyncSession(async_engine) as session:
        session.add_all(sample_users(2, 1))
        await session.commit()

    async with ormtune.capture(callsites=True) as log, AsyncSession(async_engine) as session:
        users = (await session.scalars(select(User).order_by(User.id))).all()  # callsite: async
    assert [user.name for user in users] == ["user 0", "user 1"]
    selects = [event for event in log if event.kind is StatementKind.SELECT]
    assert len(selects) == 1
    assert selects[0].engine is async_engine.sync_engine
    callsite = selects[0].callsite
    assert callsite is not None
    assert (callsite.filename, callsite.lineno) == (__file__, _line_of("# callsite: async"))


async def test_async_tasks_never_see_each_others_statements(async_engine: AsyncEngine) -> None:
    both_inside = asyncio.Barrier(2)

    async def worker(queries: int) -> int:
        async with ormtune.capture() as log, async_engine.connect() as conn:
            await both_inside.wait()  # both captures are open at the same time
            for _ in range(queries):
                await conn.execute(text("SELECT 1"))
        return log.count

    counts = await asyncio.gather(worker(2), worker(5))
    assert list(counts) == [2, 5]


async def test_tasks_started_inside_a_capture_belong_to_it(async_engine: AsyncEngine) -> None:
    async def one_query() -> None:
        async with async_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async with ormtune.capture() as log:
        await asyncio.gather(one_query(), one_query(), one_query())
    assert log.count == 3


def test_threads_never_see_each_others_statements(engine: Engine) -> None:
    both_inside = threading.Barrier(2, timeout=30)
    counts: dict[str, int] = {}

    def worker(name: str, queries: int) -> None:
        with ormtune.capture() as log, engine.connect() as conn:
            both_inside.wait()
            for _ in range(queries):
                conn.execute(text("SELECT 1"))
            both_inside.wait()  # neither capture closes before both ran all their queries
        counts[name] = log.count

    threads = [threading.Thread(target=worker, args=(n, q)) for n, q in (("a", 3), ("b", 7))]
    with ormtune.capture() as main_log:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert counts == {"a": 3, "b": 7}
    assert main_log.count == 0


def test_nested_captures_each_see_their_own_block(engine: Engine) -> None:
    with ormtune.capture() as outer, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        with ormtune.capture() as inner:
            conn.execute(text("SELECT 2"))
        conn.execute(text("SELECT 3"))
    assert [e.sql for e in inner] == ["SELECT 2"]
    assert [e.sql for e in outer] == ["SELECT 1", "SELECT 2", "SELECT 3"]


def test_listeners_are_removed_when_the_last_capture_ends(engine: Engine) -> None:
    assert not listening()
    with ormtune.capture():
        with ormtune.capture():
            assert listening()
        assert listening()
    assert not listening()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # nothing listens, nothing breaks


def test_leaving_through_an_exception_keeps_the_log_and_removes_listeners(engine: Engine) -> None:
    block = ormtune.capture()
    with pytest.raises(ZeroDivisionError), block as log, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        1 / 0  # noqa: B018
    assert not listening()
    assert log.count == 1
    assert block.log is log


def test_failed_statements_are_recorded_with_their_error(engine: Engine) -> None:
    with ormtune.capture() as log, engine.connect() as conn:
        with pytest.raises(Exception, match=r"no_such_table|does not exist|doesn't exist"):
            conn.execute(text("SELECT * FROM no_such_table"))
        conn.rollback()
    assert log.count == 1
    assert log[0].error is not None
    assert log[0].tables == ("no_such_table",)


def test_capture_of_given_engines_only(engine: Engine, tmp_path: object) -> None:
    other = create_engine("sqlite://")
    derived = engine.execution_options(logging_token="derived")
    try:
        with ormtune.capture(engine) as log:
            with other.connect() as conn:
                conn.execute(text("SELECT 1"))
            with derived.connect() as conn:
                conn.execute(text("SELECT 2"))
        assert [e.sql for e in log] == ["SELECT 2"]
    finally:
        other.dispose()


@pytest.mark.parametrize("bad", [None, "sqlite://", Session, 42])
def test_capture_of_something_that_is_not_an_engine_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match=r"capture\(\) takes SQLAlchemy Engine or AsyncEngine"):
        ormtune.capture(bad)  # type: ignore[arg-type]
    assert not listening()


def test_a_capture_cannot_be_entered_twice() -> None:
    block = ormtune.capture()
    with block, pytest.raises(RuntimeError, match="already open"):
        block.start()
    assert not listening()


class _Collector:
    def __init__(self) -> None:
        self.events: list[QueryEvent] = []

    def on_query(self, event: QueryEvent, /) -> None:
        self.events.append(event)


def test_observers_see_every_context_and_stop_when_closed(engine: Engine) -> None:
    collector = _Collector()
    with ormtune.observe(collector, callsites=True) as observation:
        assert isinstance(collector, ormtune.QueryObserver)
        thread = threading.Thread(target=lambda: engine.connect().close())
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        thread.start()
        thread.join()

        def in_thread() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 2"))

        worker = threading.Thread(target=in_thread)
        worker.start()
        worker.join()
    assert observation.closed
    assert not listening()
    assert [e.sql for e in collector.events if e.sql.startswith("SELECT")] == [
        "SELECT 1",
        "SELECT 2",
    ]
    assert collector.events[0].callsite is not None
    with engine.connect() as conn:
        conn.execute(text("SELECT 3"))
    assert "SELECT 3" not in [e.sql for e in collector.events]


def test_a_failing_observer_is_logged_and_never_breaks_the_query(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def on_query(self, event: QueryEvent, /) -> None:
            raise RuntimeError("observer bug")

    with ormtune.observe(Broken()), engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert any("observer" in r.message and r.levelno == logging.ERROR for r in caplog.records)


def test_observe_rejects_objects_without_on_query() -> None:
    with pytest.raises(TypeError, match=r"observe\(\) takes an object with an on_query"):
        ormtune.observe(object())  # type: ignore[arg-type]
    assert not listening()


def test_report_lists_fingerprints_counts_and_callsites(engine: Engine) -> None:
    _seed(engine, users=2, posts_each=1)
    with ormtune.capture(callsites=True) as log, Session(engine) as session:
        for post in session.scalars(select(Post).order_by(Post.id)):
            assert post.author.name  # report: lazy load
    report = log.report(timings=False)
    lines = report.splitlines()
    assert lines[0] == "3 queries, 2 distinct, 1 repeated"
    assert lines[1].startswith("  2x select users.id")
    assert "from users where users.id = ?" in lines[1]
    assert lines[2].strip() == f"at {log[1].callsite}"
    assert f"test_capture.py:{_line_of('# report: lazy load')}" in lines[2]
    assert lines[3].startswith("  1x select posts.id")
    assert lines[3].endswith("from posts order by posts.id")
    assert " ms" in log.report()


# The statement hooks are the dialect's do_execute / do_execute_no_params / do_executemany
# events, which ormtune answers by running the cursor call itself. Other listeners on those
# events must still run exactly once, in their order, and one that executes the statement
# itself must be the only one that does.


def test_a_do_execute_listener_registered_before_ormtune_runs_once(engine: Engine) -> None:
    seen: list[str] = []

    def watcher(cursor: object, statement: str, parameters: object, context: object) -> bool:
        seen.append(statement)
        return False

    event.listen(engine, "do_execute", watcher, insert=True)
    try:
        with ormtune.capture() as log, engine.connect() as conn:
            assert conn.execute(text("select :x + 1"), {"x": 1}).scalar() == 2
    finally:
        event.remove(engine, "do_execute", watcher)
    assert len(seen) == 1
    assert len(log) == 1


def test_a_do_execute_listener_that_executes_the_statement_itself_is_the_only_one(
    engine: Engine,
) -> None:
    executed: list[str] = []

    def executor(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        executed.append(statement)
        cursor.execute(statement, parameters)
        return True

    with ormtune.capture() as log:  # ormtune's hooks first, then the application's
        event.listen(engine, "do_execute", executor)
        try:
            with engine.begin() as conn:
                conn.execute(insert(User).values(name="written once"))
                rows = conn.execute(
                    select(func.count()).select_from(User).where(User.name == "written once")
                ).scalar()
        finally:
            event.remove(engine, "do_execute", executor)
    assert rows == 1  # the INSERT ran once, by the application's listener
    assert len(executed) == 2
    assert [query.kind for query in log] == [StatementKind.INSERT, StatementKind.SELECT]
    assert log[0].rowcount == 1


def test_the_dialects_own_first_connect_statements_are_not_recorded(backend: Backend) -> None:
    # A new engine's first connection runs the dialect's set-up queries (server version,
    # schema, settings) on a Connection with events off; they are not the application's.
    fresh = create_engine(backend.sync_url)
    try:
        with ormtune.capture() as log, fresh.connect() as conn:
            conn.execute(text("select 1")).scalar()
        assert [query.sql for query in log] == ["select 1"]
    finally:
        fresh.dispose()


def test_statements_without_parameters_and_failures_keep_their_timing(engine: Engine) -> None:
    with ormtune.capture() as log, engine.connect() as conn:
        conn.exec_driver_sql("select 1").scalar()
        with pytest.raises(exc.DBAPIError):
            conn.exec_driver_sql("select * from no_such_table_here")
    ok, failed = log
    assert ok.sql == "select 1"
    assert ok.error is None
    assert ok.duration > 0
    assert failed.error is not None
    assert failed.duration > 0


class _Watcher:
    """Notes what it was shown; stops statements whose SQL contains ``stop``."""

    def __init__(self, stop: str | None = None) -> None:
        self.stop = stop
        self.before: list[str] = []
        self.after: list[tuple[object, str]] = []

    def before_statement(self, context: Any, /) -> object | None:
        sql = str(context.statement)
        self.before.append(sql)
        if self.stop is not None and self.stop in sql:
            raise LookupError(f"stopped: {sql}")
        return ("token", sql) if sql.startswith("SELECT") else None

    def after_statement(self, token: object, statement: StatementInfo, /) -> None:
        self.after.append((token, statement.fingerprint))


def test_watchers_see_statements_before_and_after_and_stop_when_closed(engine: Engine) -> None:
    watcher = _Watcher()
    with watch(watcher) as registration:
        assert isinstance(watcher, StatementWatcher)
        assert listening()
        with engine.begin() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            conn.execute(insert(User).values(name="watched"))
    assert registration.closed
    assert not listening()
    assert watcher.before[0] == "SELECT 1"
    assert watcher.before[1].startswith("INSERT INTO users")
    # after_statement only for the statements a token was returned for, with that token
    assert watcher.after == [(("token", "SELECT 1"), "select ?")]
    with engine.connect() as conn:
        conn.execute(text("SELECT 2"))
    assert "SELECT 2" not in watcher.before


def test_a_watcher_stops_a_statement_before_it_runs(engine: Engine) -> None:
    _seed(engine, users=1, posts_each=0)
    watcher = _Watcher(stop="DELETE")
    with ormtune.capture() as log, watch(watcher), Session(engine) as session:
        session.add(User(name="pending"))
        session.flush()
        with pytest.raises(LookupError, match="stopped: DELETE FROM users"):
            session.execute(text("DELETE FROM users"))
        # Nothing ran, nothing failed: the transaction goes on, on every database (PostgreSQL
        # would refuse the next statement after a failed one).
        names = session.scalars(select(User.name).order_by(User.id)).all()
        session.commit()
    assert names == ["user 0", "pending"]
    assert [event.error for event in log] == [None] * len(log)  # no failed statement recorded
    assert not any(event.sql.startswith("DELETE") for event in log)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 2


def test_a_failing_after_statement_is_logged_and_never_breaks_the_query(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(_Watcher):
        def after_statement(self, token: object, statement: Any, /) -> None:
            raise RuntimeError("watcher bug")

    with watch(Broken()), engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert any("watcher" in r.message and r.levelno == logging.ERROR for r in caplog.records)


def test_watch_rejects_objects_without_both_methods() -> None:
    class OnlyBefore:
        def before_statement(self, context: Any, /) -> None:
            return None

    with pytest.raises(TypeError, match=r"watch\(\) takes an object with before_statement"):
        watch(OnlyBefore())  # type: ignore[arg-type]
    assert not listening()


def test_a_watcher_tells_lazy_loads_from_other_statements(engine: Engine) -> None:
    _seed(engine, users=2, posts_each=2)
    seen: list[tuple[str, Any, Any]] = []

    class Lazy:
        def before_statement(self, context: Any, /) -> None:
            target = lazy_load_target(context)
            lazy = lazy_load_executing(context)
            seen.append((context.statement.split()[0], target, lazy))

        def after_statement(self, token: object, statement: StatementInfo, /) -> None:
            raise AssertionError("no token was returned")

    with watch(Lazy()), Session(engine) as session:
        users = session.scalars(select(User).order_by(User.id)).all()
        first_posts = users[0].posts  # a lazy load of a one-to-many: SQL
        assert first_posts[0].author is users[0]  # many-to-one in the identity map: no SQL
        session.add(User(name="new"))
        session.flush()
    kinds = [kind for kind, _, _ in seen]
    assert kinds == ["SELECT", "SELECT", "INSERT"]
    (_, root_target, root_lazy), (_, target, lazy), (_, insert_target, _) = seen
    assert root_target is None
    assert root_lazy is None
    assert insert_target is None
    assert target is not None
    assert lazy is not None
    state, prop = target
    assert state.obj() is users[0]
    assert prop is User.posts.property
    assert (lazy.state, lazy.relationship) == (state, prop)
    assert lazy.name == "User.posts"


def test_a_failure_seen_by_an_observer_registered_meanwhile_has_its_real_duration(
    engine: Engine,
) -> None:
    events: list[QueryEvent] = []
    registrations: list[Registration] = []

    class Recorder:
        def on_query(self, event: QueryEvent) -> None:
            events.append(event)

    class RegistersAnObserver:
        # A watcher alone (no capture, no observer) when the statement starts; an observer
        # registered before it fails sees the failure, with the time it really took.
        def before_statement(self, context: Any, /) -> None:
            if not registrations:
                registrations.append(ormtune.observe(Recorder()))

        def after_statement(self, token: object, statement: StatementInfo, /) -> None:
            return None

    with watch(RegistersAnObserver()), engine.connect() as conn, pytest.raises(exc.DBAPIError):
        conn.execute(text("SELECT * FROM no_such_table"))
    for registration in registrations:
        registration.close()
    [failed] = events
    assert failed.error is not None
    assert 0 <= failed.duration < 60
