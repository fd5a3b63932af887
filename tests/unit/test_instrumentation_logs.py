"""Structured logs, captured and parsed as JSON: query lines, the slow-query log with plans."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from ormtune.instrumentation import JsonFormatter, SlowQueryLog, add_request_context, instrument
from ormtune.querylog import observe
from tests.models import Base, User, sample_users

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class JsonLines:
    """A handler with the JsonFormatter on a logger, and the parsed lines it wrote."""

    def __init__(self, logger: str, level: int) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.logger = logging.getLogger(logger)
        self.level = level

    def __enter__(self) -> JsonLines:
        self.old_level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    # A file, not memory: EXPLAIN runs on a connection of its own, which must see the tables.
    engine = create_engine(f"sqlite:///{tmp_path / 'logs.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(sample_users(3, 2))
        session.commit()
    yield engine
    engine.dispose()


def test_the_formatter_writes_extras_and_exceptions_as_json() -> None:
    with JsonLines("test.json", logging.INFO) as out:
        out.logger.info("hello %s", "world", extra={"answer": 42, "obj": object()})
        try:
            raise ValueError("boom")
        except ValueError:
            out.logger.exception("failed")
    first, second = out.lines
    assert first["message"] == "hello world"
    assert first["level"] == "info"
    assert first["logger"] == "test.json"
    assert first["answer"] == 42
    assert first["obj"].startswith("<object object")  # not JSON: written as str()
    assert first["timestamp"].endswith("Z")
    assert "ValueError: boom" in second["exception"]


def test_query_lines_carry_fingerprint_duration_rows_callsite_and_shapes(engine: Engine) -> None:
    with (
        JsonLines("ormtune.sql", logging.DEBUG) as out,
        instrument(engine, metrics=False, slow_query_threshold=None),
        Session(engine) as s,
    ):
        s.execute(select(User).where(User.name == "user 1")).all()
    (line,) = out.lines
    assert line["event"] == "query"
    assert line["fingerprint"].startswith("select users.id, users.name from users where")
    assert line["operation"] == "select"
    assert line["tables"] == ["users"]
    assert "rowcount" in line  # None: SQLite reports no row count for SELECTs
    assert line["duration_ms"] > 0
    assert "<str>" in json.dumps(line["parameters"])
    assert "user 1" not in json.dumps(line)
    assert line["callsite"].startswith("tests/unit/test_instrumentation_logs.py:")


def test_parameter_values_are_logged_only_when_enabled(engine: Engine) -> None:
    with (
        JsonLines("ormtune.sql", logging.DEBUG) as out,
        instrument(engine, metrics=False, slow_query_threshold=None, log_parameters=True),
        engine.connect() as conn,
    ):
        conn.execute(text("select :secret"), {"secret": "hunter2"})
    (line,) = out.lines
    assert "hunter2" in json.dumps(line["parameters"])


def test_nothing_is_logged_per_query_while_debug_is_off(engine: Engine) -> None:
    with (
        JsonLines("ormtune.sql", logging.INFO) as out,
        instrument(engine, metrics=False, slow_query_threshold=None),
        engine.connect() as conn,
    ):
        conn.execute(text("select 1"))
    assert out.lines == []


def test_slow_queries_are_logged_with_sql_callsite_and_plan(engine: Engine) -> None:
    with (
        JsonLines("ormtune.slow_query", logging.WARNING) as out,
        instrument(engine, metrics=False, slow_query_threshold=0.0, explain=True),
        Session(engine) as session,
    ):
        session.execute(select(User).where(User.name == "secret name")).all()
    (line,) = out.lines
    assert line["level"] == "warning"
    assert line["event"] == "slow_query"
    assert line["sql"].startswith("SELECT users.id, users.name")
    assert line["callsite"].startswith("tests/unit/test_instrumentation_logs.py:")
    assert "SCAN users" in line["plan"]  # SQLite's EXPLAIN QUERY PLAN
    assert "plan_error" not in line
    assert "secret name" not in json.dumps(line)  # values were needed for EXPLAIN, not logged


def test_each_fingerprint_is_explained_at_most_once_per_interval(engine: Engine) -> None:
    now = [1000.0]
    slow = SlowQueryLog(0.0, explain=True, explain_interval=60.0, clock=lambda: now[0])
    slow.receives_values = True
    with (
        JsonLines("ormtune.slow_query", logging.WARNING) as out,
        observe(slow, engine, parameters=True),
        engine.connect() as conn,
    ):
        for user_id, moment in ((1, 1000.0), (2, 1030.0), (3, 1061.0)):
            now[0] = moment
            conn.execute(text("select name from users where id = :id"), {"id": user_id})
    plans = ["plan" in line for line in out.lines]
    assert plans == [True, False, True]


def test_writes_are_explained_without_analyze(engine: Engine) -> None:
    slow = SlowQueryLog(0.0, explain=True, analyze=True)
    slow.receives_values = True
    with (
        JsonLines("ormtune.slow_query", logging.WARNING) as out,
        observe(slow, engine, parameters=True),
        engine.begin() as conn,
    ):
        conn.execute(text("update users set name = 'x' where id = :id"), {"id": 1})
    (line,) = out.lines
    assert line["operation"] == "update"
    assert "users" in line["plan"]
    with engine.connect() as conn:  # the plan ran on its own connection and changed nothing
        assert conn.execute(text("select name from users where id = 1")).scalar() == "x"


def test_a_failing_handler_never_reaches_the_application(engine: Engine) -> None:
    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handler bug")

        def handle(self, record: logging.LogRecord) -> bool:
            self.emit(record)  # no handleError(): the exception propagates to the caller
            return True

    logger = logging.getLogger("ormtune.slow_query")
    broken = Broken()
    logger.addHandler(broken)
    try:
        with instrument(engine, metrics=False, slow_query_threshold=0.0), Session(engine) as s:
            assert len(s.scalars(select(User)).all()) == 3
    finally:
        logger.removeHandler(broken)


def test_the_structlog_processor_adds_nothing_outside_a_request() -> None:
    event: dict[str, Any] = {"event": "hi"}
    assert add_request_context(None, "info", event) == {"event": "hi"}
