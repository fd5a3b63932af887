"""The signal channel: emit/observe_signals, and the signals N+1 detection and autoload emit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

import ormtune
from ormtune import nplusone
from ormtune.querylog import (
    AutoloadBatch,
    CacheEvent,
    NPlusOneSignal,
    Signal,
    emit,
    observe_signals,
    signals_wanted,
)
from tests.models import Base, User, sample_users

if TYPE_CHECKING:
    from collections.abc import Iterator


class Recorder:
    def __init__(self) -> None:
        self.signals: list[Signal] = []

    def on_signal(self, signal: Signal) -> None:
        self.signals.append(signal)


class Broken:
    def on_signal(self, signal: Signal) -> None:
        raise RuntimeError("observer bug")


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(sample_users(4, 3))
        session.commit()
    yield engine
    engine.dispose()


def test_nobody_listening_means_nothing_wanted() -> None:
    assert not signals_wanted()
    emit(CacheEvent("orders", "hit"))  # no subscriber: nothing happens, nothing raises


def test_subscribers_receive_signals_until_closed() -> None:
    recorder = Recorder()
    with observe_signals(recorder):
        assert signals_wanted()
        emit(CacheEvent("orders", "miss", None, ("orders",)))
    emit(CacheEvent("orders", "hit"))
    assert recorder.signals == [CacheEvent("orders", "miss", None, ("orders",))]
    assert not signals_wanted()


def test_a_failing_subscriber_is_logged_and_the_others_still_receive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    with observe_signals(Broken()), observe_signals(recorder):
        emit(AutoloadBatch("User.posts", 4))
    assert recorder.signals == [AutoloadBatch("User.posts", 4)]
    assert "observer bug" in caplog.text


def test_observe_signals_rejects_objects_without_on_signal() -> None:
    with pytest.raises(TypeError, match="on_signal"):
        observe_signals(object())  # type: ignore[arg-type]


def test_an_nplusone_loop_emits_one_signal(engine: Engine) -> None:
    recorder = Recorder()
    with observe_signals(recorder), Session(engine) as session, nplusone.detect("log"):
        for user in session.scalars(select(User)):
            _ = user.posts
    assert recorder.signals == [NPlusOneSignal("n+1", "User.posts", 2)]


def test_repeated_queries_emit_when_the_detection_ends(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    caplog.set_level(logging.WARNING, "ormtune.nplusone")
    with (
        observe_signals(recorder),
        Session(engine) as session,
        nplusone.detect("log", repeated_threshold=3),
    ):
        for user_id in (1, 2, 3, 4):
            session.execute(select(User).where(User.id == user_id)).scalar_one()
    assert recorder.signals == [NPlusOneSignal("repeated", None, 4)]


def test_an_autoload_batch_emits_its_relationship_and_parent_count(engine: Engine) -> None:
    recorder = Recorder()
    with observe_signals(recorder), ormtune.autoload(User.posts), Session(engine) as session:
        users = session.scalars(select(User)).all()
        assert [len(user.posts) for user in users] == [3, 3, 3, 3]
    assert recorder.signals == [AutoloadBatch("User.posts", 4)]
