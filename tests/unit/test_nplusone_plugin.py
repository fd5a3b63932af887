"""The pytest plugin's N+1 checks, run in throw-away pytest sessions with pytester."""

from __future__ import annotations

import pytest

CONFTEST = """
import pytest
from sqlalchemy import ForeignKey, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    posts: Mapped[list["Post"]] = relationship(order_by="Post.id")


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([User(posts=[Post(), Post()]) for _ in range(3)])
        session.commit()
        session.expunge_all()
        yield session
    engine.dispose()


@pytest.fixture
def users(session):
    return session.scalars(select(User)).all()
"""

N_PLUS_ONE = [
    "N+1 query: User.posts lazy-loaded {count} times, once per User loaded by the same query",
    "  at test_loop.py:{line} in {function}",
    # SQLAlchemy 2.0 labels the columns (posts.id as posts_id), 2.1 does not.
    "  sql: select posts.id*from posts where ? = posts.user_id order by posts.id",
    "  fix: add .options(selectinload(User.posts)) to the query that loads the User objects, "
    "or enable ormtune.autoload()",
]


def _finding(count: int, line: int, function: str, indent: str = "") -> list[str]:
    text = [line_.format(count=count, line=line, function=function) for line_ in N_PLUS_ONE]
    return [indent + line_ for line_ in text]


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_loop="""
        from sqlalchemy import select
        from conftest import Post, User

        def test_loop(session):
            for user in session.scalars(select(User)):
                assert len(user.posts) == 2

        def test_fixture_loaded(users):
            for user in users:
                assert len(user.posts) == 2

        def test_clean(session):
            user = session.get(User, 1)
            assert len(user.posts) == 2
        """
    )
    return pytester


def test_option_raise_fails_a_test_at_the_loop_and_lists_findings(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-p", "no:asyncio", "--ormtune-nplusone=raise")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "    def test_loop(session):",
            "        for user in session.scalars(select(User)):",
            ">           assert len(user.posts) == 2",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            "E           ormtune.exceptions.NPlusOneError: " + _finding(2, 6, "test_loop")[0],
            *_finding(2, 6, "test_loop", "E           ")[1:],
        ],
        consecutive=True,
    )
    # Objects a fixture loaded count too: cohort tracking covers set-up.
    result.stdout.fnmatch_lines(
        [
            "    def test_fixture_loaded(users):",
            "        for user in users:",
            ">           assert len(user.posts) == 2",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            "*= ormtune N+1 findings =*",
            "test_loop.py::test_loop",
            *_finding(2, 6, "test_loop", "  "),
            "test_loop.py::test_fixture_loaded",
            *_finding(2, 10, "test_fixture_loaded", "  "),
            "2 N+1 findings in 2 tests",
        ],
        consecutive=True,
    )


def test_option_warn_passes_with_a_warning_at_the_loop(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-p", "no:asyncio", "-W", "default", "--ormtune-nplusone=warn")
    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "test_loop.py::test_loop",
            "  */test_loop.py:6: NPlusOneWarning: " + _finding(3, 6, "test_loop")[0],
            *_finding(3, 6, "test_loop", "  ")[1:],
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(["*= ormtune N+1 findings =*", "test_loop.py::test_loop"])
    result.stdout.fnmatch_lines(["2 N+1 findings in 2 tests"])


def test_ini_option_turns_checks_on_and_log_mode_passes(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\normtune_nplusone = log\n")
    result = suite.runpytest("-p", "no:asyncio")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*= ormtune N+1 findings =*", "2 N+1 findings in 2 tests"])
    # The command-line option wins over the ini file.
    suite.runpytest("-p", "no:asyncio", "--ormtune-nplusone=raise").assert_outcomes(
        failed=2, passed=1
    )


def test_nothing_is_checked_or_listed_by_default(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-p", "no:asyncio")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*ormtune N+1*")


def test_marker_checks_one_test_and_refines_the_option(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_marked="""
        import pytest
        from sqlalchemy import select
        from conftest import Post, User

        def read_posts(session):
            for user in session.scalars(select(User)):
                assert user.posts

        @pytest.mark.nplusone
        def test_checked(session):
            read_posts(session)

        def test_unchecked(session):
            read_posts(session)

        @pytest.mark.nplusone(allow=("User.*",))
        def test_allowed(session):
            read_posts(session)

        @pytest.mark.nplusone(repeated_threshold=3)
        def test_lookups(session):
            for post_id in range(1, 4):
                session.get(Post, post_id)

        @pytest.mark.nplusone("off")
        def test_exempt(session):
            read_posts(session)
        """
    )
    result = pytester.runpytest("-p", "no:asyncio")
    result.assert_outcomes(failed=2, passed=3)
    result.stdout.fnmatch_lines(
        [
            "E   ormtune.exceptions.NPlusOneError: "
            "Repeated query: the same SELECT ran 3 times from one line",
            "      at test_marked.py:23 in test_lookups",
            "      sql: select posts.id*from posts where posts.id = ?",
            "      fix: run one query for all the values before the loop (for example "
            ".where(column.in_(values))), or cache its result",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(["FAILED test_marked.py::test_checked - *NPlusOneError*"])
    # Under a suite-wide "warn", a marker without a mode takes the suite's mode.
    result = pytester.runpytest("-p", "no:asyncio", "-W", "default", "--ormtune-nplusone=warn")
    result.assert_outcomes(passed=5, warnings=3)
    result.stdout.fnmatch_lines(["3 N+1 findings in 3 tests"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "nplusone('loud')",
            "@pytest.mark.nplusone mode must be one of 'off', 'log', 'warn', 'raise', "
            "but was given 'loud'",
        ),
        (
            "nplusone(mode=1)",
            "@pytest.mark.nplusone mode must be one of 'off', 'log', 'warn', 'raise', "
            "but was given 1 (of type int)",
        ),
        (
            "nplusone(allow='User.posts')",
            "@pytest.mark.nplusone allow must be a list or tuple of strings, as in "
            "('User.payments',), but was given the string 'User.posts'",
        ),
        (
            "nplusone(repeated_threshold=1)",
            "@pytest.mark.nplusone repeated_threshold must be 2 or more (a statement that runs "
            "once is not repeated), but was given 1",
        ),
        (
            "nplusone(threshold=3)",
            "@pytest.mark.nplusone takes a mode and the keyword arguments allow, "
            "allow_callsites, repeated_threshold, skip_modules, unused_eager, as in "
            "@pytest.mark.nplusone('raise', allow=('User.posts',)); "
            "got args=() kwargs={'threshold': 3}",
        ),
        (
            "nplusone('raise', mode='warn')",
            "@pytest.mark.nplusone takes a mode and the keyword arguments allow, "
            "allow_callsites, repeated_threshold, skip_modules, unused_eager, as in "
            "@pytest.mark.nplusone('raise', allow=('User.posts',)); "
            "got args=('raise',) kwargs={'mode': 'warn'}",
        ),
    ],
)
def test_bad_marker_fails_collection(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.{marker}
        def test_bad():
            pass

        def test_innocent():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:asyncio")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_bad.py::test_bad: {message}"])
    result.stdout.no_fnmatch_line("*passed*")


def test_bad_mode_in_the_option_or_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = pytester.runpytest("-p", "no:asyncio", "--ormtune-nplusone=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ormtune-nplusone: invalid choice: 'loud'*"])
    pytester.makeini("[pytest]\normtune_nplusone = loud\n")
    result = pytester.runpytest("-p", "no:asyncio")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: the ormtune_nplusone ini option must be one of off, log, warn, raise, "
            "but was given 'loud'"
        ]
    )


def test_assert_no_nplusone_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_fixture="""
        from sqlalchemy import select
        from conftest import User

        def test_fails(session, assert_no_nplusone):
            users = session.scalars(select(User)).all()  # before the block: still counts
            with assert_no_nplusone():
                for user in users:
                    assert user.posts

        def test_allowed(session, assert_no_nplusone):
            with assert_no_nplusone(allow=("User.posts",)) as detection:
                for user in session.scalars(select(User)):
                    assert user.posts
            assert detection.findings == []
        """
    )
    result = pytester.runpytest("-p", "no:asyncio")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "        with assert_no_nplusone():",
            "            for user in users:",
            ">               assert user.posts",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            "E           ormtune.exceptions.NPlusOneError: N+1 query: User.posts lazy-loaded 2 "
            "times, once per User loaded by the same query",
            "E             at test_fixture.py:8 in test_fails",
        ],
        consecutive=True,
    )


def test_the_marker_and_option_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:asyncio", "--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.nplusone(mode='raise', allow=(), allow_callsites=(), *): *"]
    )
    result = pytester.runpytest("-p", "no:asyncio", "--help")
    result.stdout.fnmatch_lines(["*--ormtune-nplusone=*", "*check every test's body for N+1*"])


UNUSED_EAGER = """
from sqlalchemy import select
from sqlalchemy.orm import selectinload
import pytest
from conftest import User

def test_unread(session):
    users = session.scalars(select(User).options(selectinload(User.posts))).all()
    assert len(users) == 3

def test_read(session):
    users = session.scalars(select(User).options(selectinload(User.posts))).all()
    assert users[0].posts

@pytest.mark.nplusone(unused_eager=False)
def test_exempt(session):
    session.scalars(select(User).options(selectinload(User.posts))).all()

def test_fixture(session, assert_no_nplusone):
    with assert_no_nplusone(unused_eager=True):
        session.scalars(select(User).options(selectinload(User.posts))).all()
"""

UNREAD = [
    "Unused eager load: User.posts loaded for 3 User objects and never read",
    "  at test_eager.py:{line} in {function}",
    "  fix: remove selectinload(User.posts) from this query's options; "
    "raiseload(User.posts) in its place finds code that reads it",
]


def test_option_reports_unused_eager_loads_at_the_end_of_the_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_eager=UNUSED_EAGER)
    result = pytester.runpytest(
        "-p", "no:asyncio", "--ormtune-nplusone=raise", "--ormtune-unused-eager"
    )
    result.assert_outcomes(failed=2, passed=2)
    unread = [line.format(line=7, function="test_unread") for line in UNREAD]
    result.stdout.fnmatch_lines(
        # Raised when the body ends, so pytest shows the report under the test's call.
        ["E   ormtune.exceptions.NPlusOneError: " + unread[0], *("*" + x for x in unread[1:])],
        consecutive=True,
    )
    fixture = [line.format(line=20, function="test_fixture") for line in UNREAD]
    result.stdout.fnmatch_lines(
        [
            "*= ormtune N+1 findings =*",
            "test_eager.py::test_unread",
            *("  " + line for line in unread),
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(["E   ormtune.exceptions.NPlusOneError: " + fixture[0]])

    # Without the flag, the same suite checks N+1s only; the fixture still asks for them.
    result = pytester.runpytest("-p", "no:asyncio", "--ormtune-nplusone=raise")
    result.assert_outcomes(failed=1, passed=3)


def test_ini_option_and_marker_turn_unused_eager_checks_on(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\normtune_nplusone = log\normtune_unused_eager = true\n")
    pytester.makepyfile(test_eager=UNUSED_EAGER)
    result = pytester.runpytest("-p", "no:asyncio")
    result.assert_outcomes(failed=1, passed=3)  # log mode: only the fixture (raise) fails
    result.stdout.fnmatch_lines(["2 N+1 findings in 2 tests"])

    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_marker="""
        import pytest
        from sqlalchemy import select
        from sqlalchemy.orm import selectinload
        from conftest import User

        @pytest.mark.nplusone(unused_eager=True)
        def test_marked(session):
            session.scalars(select(User).options(selectinload(User.posts))).all()

        @pytest.mark.nplusone(unused_eager="yes")
        def test_bad(session):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:asyncio", "test_marker.py")
    result.stderr.fnmatch_lines(
        [
            "ERROR: test_marker.py::test_bad: @pytest.mark.nplusone unused_eager must be True or "
            "False, but was given 'yes' (of type str)"
        ]
    )
    result = pytester.runpytest("-p", "no:asyncio", "test_marker.py::test_marked")
    result.assert_outcomes(failed=1)
