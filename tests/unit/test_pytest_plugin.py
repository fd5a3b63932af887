"""The pytest plugin, run in a throw-away pytest session with pytester."""

from __future__ import annotations

import pytest

CONFTEST = """
import pytest
from sqlalchemy import create_engine, text

@pytest.fixture
def conn():
    engine = create_engine("sqlite://")
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
        yield connection
    engine.dispose()
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def test_assert_max_queries_fails_listing_statements_repeated_first(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_loop="""
        from sqlalchemy import text

        def test_loop(conn, assert_max_queries):
            with assert_max_queries(2):
                conn.execute(text("SELECT count(*) FROM t"))
                for value in range(3):
                    conn.execute(text("SELECT x FROM t WHERE x = :v"), {"v": value})
        """
    )
    result = suite.runpytest("-p", "no:asyncio")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">       with assert_max_queries(2):",
            "E       ormtune.exceptions.QueryCountError: "
            "Expected to perform 2 queries or less but 4 were done",
            "E       4 queries, 2 distinct, 1 repeated",
            "E         3x select x from t where x = ?",
            "E            at test_loop.py:7 in test_loop",
            "E         1x select count(*) from t",
            "E            at test_loop.py:5 in test_loop",
            "",
            "test_loop.py:4: QueryCountError",
        ],
        consecutive=True,
    )


def test_assert_max_queries_passes_within_budget(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_ok="""
        from sqlalchemy import text

        def test_ok(conn, assert_max_queries):
            with assert_max_queries(2) as log:
                conn.execute(text("SELECT 1"))
                conn.execute(text("SELECT 2"))
            assert log.count == 2

        def test_zero(conn, assert_max_queries):
            with assert_max_queries(0):
                pass
        """
    )
    suite.runpytest("-p", "no:asyncio").assert_outcomes(passed=2)


def test_assert_num_queries_is_exact(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_exact="""
        from sqlalchemy import text

        def test_too_few(conn, assert_num_queries):
            with assert_num_queries(3):
                conn.execute(text("SELECT x FROM t"))

        def test_exactly(conn, assert_num_queries):
            with assert_num_queries(1):
                conn.execute(text("SELECT x FROM t"))
        """
    )
    result = suite.runpytest("-p", "no:asyncio")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            ">       with assert_num_queries(3):",
            "E       ormtune.exceptions.QueryCountError: "
            "Expected to perform 3 queries but 1 was done",
            "E       1 query, 1 distinct, 0 repeated",
            "E         1x select x from t",
            "E            at test_exact.py:5 in test_too_few",
        ],
        consecutive=True,
    )


def test_exception_inside_the_block_is_not_replaced(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_raises="""
        from sqlalchemy import text

        def test_raises(conn, assert_max_queries):
            with assert_max_queries(0):
                conn.execute(text("SELECT x FROM t"))
                raise KeyError("the real problem")
        """
    )
    result = suite.runpytest("-p", "no:asyncio")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E           KeyError: 'the real problem'"])
    result.stdout.no_fnmatch_line("*QueryCountError*")


def test_marker_budgets_the_test_body(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_marked="""
        import pytest
        from sqlalchemy import text

        @pytest.fixture
        def noisy(conn):
            conn.execute(text("SELECT 1"))  # fixture set-up is not counted
            return conn

        @pytest.mark.max_queries(1)
        def test_within(noisy):
            noisy.execute(text("SELECT x FROM t"))

        @pytest.mark.max_queries(1)
        def test_over(conn):
            conn.execute(text("SELECT count(*) FROM t"))
            conn.execute(text("SELECT x FROM t"))

        @pytest.mark.max_queries(2, exact=True)
        def test_exact_under(conn):
            conn.execute(text("SELECT x FROM t"))
        """
    )
    result = suite.runpytest("-p", "no:asyncio")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E   ormtune.exceptions.QueryCountError: "
            "Expected to perform 1 query or less but 2 were done",
            "    2 queries, 2 distinct, 0 repeated",
            "      1x select count(*) from t",
            "         at test_marked.py:15 in test_over",
            "      1x select x from t",
            "         at test_marked.py:16 in test_over",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        ["E   ormtune.exceptions.QueryCountError: Expected to perform 2 queries but 1 was done"]
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("max_queries(-1)", "@pytest.mark.max_queries count must be 0 or more, but was given -1"),
        (
            "max_queries('3')",
            "@pytest.mark.max_queries count must be a whole number of queries, "
            "but was given '3' (of type str)",
        ),
        (
            "max_queries(2.5)",
            "@pytest.mark.max_queries count must be a whole number of queries, "
            "but was given 2.5 (of type float)",
        ),
        (
            "max_queries(True)",
            "@pytest.mark.max_queries count must be a whole number of queries, "
            "but was given True (of type bool)",
        ),
        (
            "max_queries()",
            "@pytest.mark.max_queries takes one count and optionally exact=True, "
            "as in @pytest.mark.max_queries(3); got args=() kwargs={}",
        ),
        (
            "max_queries(3, strict=True)",
            "@pytest.mark.max_queries takes one count and optionally exact=True, "
            "as in @pytest.mark.max_queries(3); got args=(3,) kwargs={'strict': True}",
        ),
    ],
)
def test_bad_marker_fails_collection(suite: pytest.Pytester, marker: str, message: str) -> None:
    suite.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.{marker}
        def test_bad():
            pass

        def test_innocent():
            pass
        """
    )
    result = suite.runpytest("-p", "no:asyncio")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_bad.py::test_bad: {message}"])
    result.stdout.no_fnmatch_line("*passed*")


def test_budget_function_rejects_bad_counts() -> None:
    from ormtune.exceptions import ConfigurationError
    from ormtune.testing import assert_max_queries, assert_num_queries

    with pytest.raises(TypeError, match=r"assert_max_queries\(\) count must be a whole number"):
        assert_max_queries("2")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"assert_num_queries\(\) count must be 0 or"):
        assert_num_queries(-3)


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:asyncio", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.max_queries(n, exact=False): *"])
