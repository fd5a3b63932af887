"""ormtune.nplusone without network: settings, findings, modes, nesting, install(), hooks.

Statements run on an in-memory SQLite database; the backends are covered by
tests/integration/test_nplusone.py.
"""

from __future__ import annotations

import logging
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session, immediateload

import ormtune
from ormtune import exceptions
from ormtune.exceptions import ConfigurationError, NPlusOneError, NPlusOneWarning, OrmtuneError
from ormtune.nplusone import Detection, Finding, _detection, detect, install, uninstall
from ormtune.nplusone._hooks import hooked, installed
from ormtune.nplusone._settings import DEFAULT_REPEATED_THRESHOLD
from ormtune.querylog import (
    CallSite,
    cohort_of,
    tracking_cohorts,
    tracking_runs,
)
from tests.models import Base, Post, User, sample_users

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine

    from ormtune.caching import QueryCache


@pytest.fixture
def memory() -> Iterator[Engine]:
    """An in-memory SQLite database with 3 users of 2 posts each."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(sample_users(3, 2))
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _nothing_left_installed() -> Iterator[None]:
    yield
    uninstall()
    assert not hooked()


def _n_plus_one(engine: Engine) -> int:
    """Read every user's posts, one lazy load per user; the number of posts read."""
    with Session(engine) as session:
        return sum(len(user.posts) for user in session.scalars(select(User)))  # N+1 here


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (
            {"mode": "loud"},
            ConfigurationError,
            "detect() mode must be one of 'off', 'log', 'warn', 'raise', but was given 'loud'",
        ),
        (
            {"mode": True},
            TypeError,
            "detect() mode must be one of 'off', 'log', 'warn', 'raise', but was given True "
            "(of type bool)",
        ),
        (
            {"allow": "User.posts"},
            TypeError,
            "detect() allow must be a list or tuple of strings, as in ('User.payments',), "
            "but was given the string 'User.posts'",
        ),
        (
            {"allow": ("User.posts", User.posts)},
            TypeError,
            "detect() allow entries must be strings, but was given "
            "<sqlalchemy.orm.attributes.InstrumentedAttribute object at *> "
            "(of type InstrumentedAttribute)",
        ),
        (
            {"allow": ("posts",)},
            ConfigurationError,
            "detect() allow entries name relationships as 'Class.attribute' (wildcards allowed, "
            "as in 'User.*'), but was given 'posts'; to allow a line of code, use "
            "allow_callsites",
        ),
        (
            {"allow": ("",)},
            ConfigurationError,
            "detect() allow entries must not be empty",
        ),
        (
            {"allow_callsites": 42},
            TypeError,
            "detect() allow_callsites must be a list or tuple of strings, as in "
            "('*/reports.py:*',), but was given 42",
        ),
        (
            {"allow_callsites": ["app.py:3", 3]},
            TypeError,
            "detect() allow_callsites entries must be strings, but was given 3 (of type int)",
        ),
        (
            {"repeated_threshold": 1},
            ConfigurationError,
            "detect() repeated_threshold must be 2 or more (a statement that runs once is not "
            "repeated), but was given 1",
        ),
        (
            {"repeated_threshold": "5"},
            TypeError,
            "detect() repeated_threshold must be a whole number (or None to turn repeated-query "
            "detection off), but was given '5' (of type str)",
        ),
        (
            {"repeated_threshold": True},
            TypeError,
            "detect() repeated_threshold must be a whole number (or None to turn repeated-query "
            "detection off), but was given True (of type bool)",
        ),
        (
            {"skip_modules": "myapp.db"},
            TypeError,
            "detect() skip_modules must be a list or tuple of strings, as in "
            "('myapp.repositories',), but was given the string 'myapp.db'",
        ),
    ],
)
def test_bad_arguments_are_named(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        detect(**arguments)
    assert fnmatchcase(str(info.value), message), str(info.value)


def test_remembered_arguments_are_still_checked_by_type() -> None:
    # detect() remembers the check of arguments it saw; an equal value of another type
    # (1 == True, 2.0 == 2) is checked anew, and a bad argument is refused every time.
    assert detect(unused_eager=True).settings.unused_eager is True
    with pytest.raises(TypeError, match="unused_eager must be True or False"):
        detect(unused_eager=1)  # type: ignore[arg-type]
    assert detect(repeated_threshold=2).settings.repeated_threshold == 2
    with pytest.raises(TypeError, match="repeated_threshold must be a whole number"):
        detect(repeated_threshold=2.0)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="mode must be one of"):
            detect("loud")  # type: ignore[arg-type]
    assert detect(allow=["User.posts"]).settings.allow == ("User.posts",)  # lists: not kept
    assert detect(allow=("User.*",)).settings.allow == ("User.*",)


def test_install_names_itself_in_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"^install\(\) mode must be one of"):
        install("panic")  # type: ignore[arg-type]
    assert installed() is None


def test_defaults() -> None:
    detection = detect()
    assert detection.mode == "warn"
    assert detection.settings.repeated_threshold == DEFAULT_REPEATED_THRESHOLD == 5
    assert detection.settings.allow == ()
    assert not detection.active
    assert detect("raise", allow=["User.*"]).settings.allow == ("User.*",)


# -- findings and errors --------------------------------------------------------------------


def test_findings_read_as_reports() -> None:
    site = CallSite("/srv/app/views.py", 42, "list_users")
    n_plus_one = Finding(
        "n+1",
        "User.posts",
        3,
        site,
        "select posts.id from posts where ? = posts.author_id",
        ".options(selectinload(User.posts))",
    )
    assert str(n_plus_one) == (
        "N+1 query: User.posts lazy-loaded 3 times, once per User loaded by the same query\n"
        "  at /srv/app/views.py:42 in list_users\n"
        "  sql: select posts.id from posts where ? = posts.author_id\n"
        "  fix: add .options(selectinload(User.posts)) to the query that loads the User "
        "objects, or enable ormtune.autoload()"
    )
    repeated = Finding("repeated", None, 1, None, None, "cache it")
    assert str(repeated) == (
        "Repeated query: the same SELECT ran 1 time from one line\n"
        "  at an unknown line\n"
        "  fix: cache it"
    )
    assert n_plus_one.owner == "User"
    assert repeated.owner is None


def test_errors_and_warnings_sit_in_the_tree() -> None:
    assert issubclass(NPlusOneError, OrmtuneError)
    assert issubclass(NPlusOneError, AssertionError)  # test runners report a failed assertion
    assert issubclass(NPlusOneWarning, UserWarning)
    assert exceptions.__doc__ is not None
    assert "NPlusOneError(AssertionError)" in exceptions.__doc__
    assert "└── NPlusOneWarning" in exceptions.__doc__
    error = NPlusOneError("found", findings=[1, 2])
    assert error.findings == (1, 2)


# -- modes ----------------------------------------------------------------------------------


def test_raise_mode_raises_once_per_cohort(memory: Engine) -> None:
    def read_posts(users: list[User]) -> list[int]:
        read = []
        for user in users:
            try:
                read.append(len(user.posts))
            except NPlusOneError:
                read.append(-1)
        return read

    with detect("raise") as detection:
        with Session(memory) as session:
            assert read_posts(list(session.scalars(select(User)))) == [2, -1, 2]
        # The second load raised before its SQL ran; the third went on. A second query's
        # objects are a second cohort, which raises again.
        with Session(memory) as session:
            assert read_posts(list(session.scalars(select(User)))) == [2, -1, 2]

    [finding] = detection.findings
    assert finding.count == 6  # every lazy load the loop attempted


def test_an_exception_leaving_the_block_goes_on_unchanged(memory: Engine) -> None:
    with pytest.raises(KeyError), detect("raise", repeated_threshold=2) as detection:
        with Session(memory) as session:
            for post_id in (1, 2):
                session.get(Post, post_id)
        raise KeyError("the real problem")
    assert [finding.kind for finding in detection.findings] == ["repeated"]


def test_warn_mode_warns_even_when_the_block_raises(memory: Engine) -> None:
    def fail_after_an_n_plus_one() -> None:
        with detect("warn"):
            _n_plus_one(memory)
            raise KeyError("the real problem")

    with (
        pytest.warns(NPlusOneWarning, match=r"^N\+1 query: User.posts lazy-loaded 3 times"),
        pytest.raises(KeyError),
    ):
        fail_after_an_n_plus_one()


def test_off_mode_records_nothing_and_installs_nothing(memory: Engine) -> None:
    with detect("off") as detection:
        assert not hooked()
        assert not detection.active
        assert _n_plus_one(memory) == 6
    assert detection.findings == []


def test_a_detection_is_used_once() -> None:
    detection = detect("log")
    with detection:
        pass
    with pytest.raises(RuntimeError, match="already started; create a new one with detect"):
        detection.start()


# -- scopes ---------------------------------------------------------------------------------


def test_hooks_live_exactly_as_long_as_some_detection(memory: Engine) -> None:
    # Run tracking may be shared with other detections (installed ones): only "on while
    # detecting" is ours to test. Detection alone tracks query runs, not cohorts (no event per
    # loaded instance); unused-eager detection tracks cohorts too.
    assert not hooked()
    with detect("log"):
        assert hooked()
        assert tracking_runs()
        with detect("log"):
            assert hooked()
        assert hooked()
    assert not hooked()
    assert not tracking_runs()
    with detect("log", unused_eager=True):
        assert tracking_cohorts()
    with pytest.raises(NPlusOneError), detect("raise"):
        _n_plus_one(memory)
    assert not hooked()


def test_nested_detections_each_record_with_their_own_rules(memory: Engine) -> None:
    with detect("log") as outer:
        with detect("raise", allow=("User.posts",)) as inner:
            _n_plus_one(memory)
        assert inner.findings == []
    assert [(f.relationship, f.count) for f in outer.findings] == [("User.posts", 3)]


def test_objects_no_query_loaded_are_not_judged(memory: Engine) -> None:
    with detect("raise") as detection, Session(memory) as session:
        users = sample_users(3, 2)
        session.add_all(users)
        session.commit()  # expires them; each reloads on its own, not as one query's rows
        assert [cohort_of(inspect(user)) for user in users] == [None] * 3
        assert sum(len(user.posts) for user in users) == 6
    assert detection.findings == []


def test_repeated_lazy_loads_that_become_an_n_plus_one_are_reported_once(memory: Engine) -> None:
    def read(user: User) -> int:
        return len(user.posts)  # every lazy load runs here

    with (
        detect("log", repeated_threshold=2) as detection,
        Session(memory) as first,
        Session(memory) as second,
    ):
        a = first.scalars(select(User)).all()
        b = second.scalars(select(User)).all()
        read(a[0])
        read(b[0])
        # Two cohorts, one load each: no N+1 yet, but one statement twice from one line.
        assert [(f.kind, f.relationship, f.count) for f in detection.findings] == [
            ("repeated", "User.posts", 2)
        ]
        read(a[1])
        read(b[1])

    # Each cohort's second load made an N+1 of them all; they are not repeated queries too.
    assert [(f.kind, f.relationship, f.count) for f in detection.findings] == [
        ("n+1", "User.posts", 4)
    ]


def test_a_finished_detection_keeps_no_tallies(memory: Engine) -> None:
    with Session(memory) as session:
        with detect("log") as detection:
            users = session.scalars(select(User)).all()
            assert sum(len(user.posts) for user in users) == 6
            assert detection._runs  # the tallies, by query run
        assert detection._runs == {}
    assert [finding.count for finding in detection.findings] == [3]


def test_the_least_recently_used_run_tallies_go_beyond_the_limit(
    memory: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_detection, "_MAX_RUNS", 2)
    sessions = [Session(memory) for _ in range(3)]  # three queries, three sets of objects
    with detect("log", repeated_threshold=None) as detection:
        a, b, c = (session.scalars(select(User).order_by(User.id)).all() for session in sessions)
        for user in a[:2]:
            assert user.posts  # an N+1 of a's query: 2 loads
        assert b[0].posts
        assert c[0].posts  # a third run: a's tally, the least recently used, goes
        assert a[2].posts  # a's run again, on a new tally: one load, no N+1 yet
    for session in sessions:
        session.close()
    assert [(f.relationship, f.count) for f in detection.findings] == [("User.posts", 2)]


# -- install() ------------------------------------------------------------------------------


def test_install_reports_each_pattern_once_when_it_first_happens(
    memory: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ormtune.nplusone")
    detection = install("log")
    assert installed() is detection
    assert hooked()
    _n_plus_one(memory)
    _n_plus_one(memory)
    assert [record.getMessage().splitlines()[0] for record in caplog.records] == [
        "N+1 query: User.posts lazy-loaded 2 times, once per User loaded by the same query"
    ]
    assert uninstall() is detection
    assert not hooked()
    [finding] = detection.findings
    assert finding.count == 6  # every load of both runs, though reported once
    # The statement's fingerprint is noted from the first lazy load, before the N+1 is found.
    assert finding.fingerprint is not None
    assert "from posts where" in finding.fingerprint
    assert f"sql: {finding.fingerprint}" in caplog.records[0].getMessage()


def test_install_raise_mode_raises_at_every_n_plus_one(memory: Engine) -> None:
    install("raise")
    for _ in range(2):
        with pytest.raises(NPlusOneError):
            _n_plus_one(memory)


def test_a_detect_block_takes_over_from_the_installed_detection(memory: Engine) -> None:
    installed_detection = install("raise")
    with detect("log") as block:
        _n_plus_one(memory)
    assert installed_detection.findings == []
    assert [finding.count for finding in block.findings] == [3]
    with pytest.raises(NPlusOneError):
        _n_plus_one(memory)


def test_installing_twice_is_an_error() -> None:
    install("warn")
    with pytest.raises(
        ConfigurationError,
        match=r"already installed \(mode='warn'\); call ormtune.nplusone.uninstall\(\) before",
    ):
        install("raise")
    assert uninstall() is not None
    assert uninstall() is None


def test_install_off_installs_nothing() -> None:
    detection = install("off")
    assert isinstance(detection, Detection)
    assert installed() is None
    assert not hooked()


# -- lazy loads that eager loaders run -------------------------------------------------------


def _immediate_posts(engine: Engine, **execution_options: Any) -> list[list[str]]:
    """Each user's post titles through immediateload, with a post added (pending) first."""
    with Session(engine) as session:
        session.add(Post(title="pending", author_id=1))
        query = select(User).order_by(User.id).options(immediateload(User.posts))
        users = session.scalars(query.execution_options(**execution_options)).all()
        return [[post.title for post in user.posts] for user in users]


@pytest.mark.parametrize(
    "execution_options", [{"autoflush": False}, {"yield_per": 2}], ids=["autoflush", "yield_per"]
)
def test_immediateload_runs_its_loads_with_their_own_options(
    memory: Engine, execution_options: dict[str, Any]
) -> None:
    # immediateload's lazy loads are not the query's statement: SQLAlchemy runs them without
    # the query's autoflush=False and yield_per (#13301). Detection once re-ran them with
    # ORMExecuteState.invoke_statement(), which passes those along: the pending post went
    # missing (no autoflush), or yield_per met immediateload's unique() and raised.
    control = _immediate_posts(memory, **execution_options)
    assert control[0][-1] == "pending"  # the lazy load autoflushed
    with detect("log") as detection:
        assert _immediate_posts(memory, **execution_options) == control
    assert [finding.relationship for finding in detection.findings] == ["User.posts"]


def test_objects_of_a_cache_hit_are_peers(memory: Engine, qc: QueryCache) -> None:
    # A cache hit makes its objects without a query (no run id of SQLAlchemy's): they are
    # still the rows of one result, and an N+1 over them is still an N+1.
    statement = select(User).order_by(User.id).options(ormtune.cache(ttl=60))
    while qc.stats.overall.misses < 2:  # a first miss learns the tables read; the second fills
        with Session(memory) as session:
            session.scalars(statement).all()
    with detect("log", repeated_threshold=None) as detection, Session(memory) as session:
        users = session.scalars(statement).all()
        assert qc.stats.overall.hits == 1
        assert sum(len(user.posts) for user in users) == 6
    assert [(f.kind, f.relationship, f.count) for f in detection.findings] == [
        ("n+1", "User.posts", 3)
    ]
