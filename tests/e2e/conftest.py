"""Fixtures of the marketplace's end-to-end tests.

Data sets are generated once per session into SQLite template files; each test works on a
copy, so writes never leak. Server databases (PostgreSQL, MariaDB) come from the session's
scratch servers of tests/conftest.py (same skip-or-fail rule, ``ORMTUNE_REQUIRE_SERVICES``),
with a database of each test's own created next to the session's and dropped afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from marketplace.data import generate
from marketplace.db import upgrade
from marketplace.settings import Settings
from tests.e2e.databases import scratch_database
from tests.e2e.facts import Facts
from tests.e2e.harness import MODES, Api, Dataset, make_dataset, open_api

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from marketplace.settings import Mode
    from tests.conftest import Backend

SMALL = 20
LARGE = 200


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """20 generated users (the data most tests run on)."""
    return make_dataset(tmp_path_factory.mktemp("small"), SMALL)


@pytest.fixture(scope="session")
def large_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """200 generated users (the second scale of the query-budget tests)."""
    return make_dataset(tmp_path_factory.mktemp("large"), LARGE)


@pytest.fixture
def database_url(small_dataset: Dataset, tmp_path: Path) -> str:
    """This test's own copy of the small data set."""
    return small_dataset.copy(tmp_path)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> Mode:
    """Each mode in turn (override with ``@pytest.mark.parametrize("mode", [...])``)."""
    result: Mode = request.param
    return result


@pytest_asyncio.fixture
async def api(mode: Mode, database_url: str) -> AsyncIterator[Api]:
    """The app in ``mode`` on this test's copy of the small data set, lifespan running."""
    async with open_api(Settings(mode=mode, database_url=database_url)) as running_api:
        yield running_api


@pytest.fixture
def facts(database_url: str) -> Iterator[Facts]:
    """Ground truth on this test's copy of the data, read without the app."""
    found = Facts.of(database_url)
    yield found
    found.close()


@pytest.fixture(scope="session")
def postgresql_data(
    postgresql_backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A PostgreSQL database with the small data set: the template of each test's own copy."""
    with scratch_database(postgresql_backend, tmp_path_factory.mktemp("pg")) as db:
        upgrade(db.async_url)
        generate(db.async_url, users=20)
        yield db


@pytest.fixture
def postgresql_copy(
    postgresql_data: Backend, postgresql_backend: Backend, tmp_path: Path
) -> Iterator[Backend]:
    """This test's own PostgreSQL database: a copy of :func:`postgresql_data`."""
    name = postgresql_data.sync_url.rsplit("/", 1)[1]
    with scratch_database(postgresql_backend, tmp_path, template=name) as db:
        yield db


@pytest.fixture
def mariadb_data(mariadb_backend: Backend, tmp_path: Path) -> Iterator[Backend]:
    """A MariaDB database of this test's own with the small data set."""
    with scratch_database(mariadb_backend, tmp_path) as db:
        upgrade(db.async_url)
        generate(db.async_url, users=20)
        yield db
