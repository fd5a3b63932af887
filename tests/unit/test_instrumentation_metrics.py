"""Metrics read back from a fresh registry: statements, errors, signals, registration rules."""

from __future__ import annotations

import gc
import math
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from ormtune.exceptions import ConfigurationError
from ormtune.instrumentation import Buckets, Metrics, instrument, metrics
from ormtune.instrumentation._metrics import (
    PendingObservations,
    _databases,
    database_label,
    observe,
)
from ormtune.querylog import AutoloadBatch, CacheEvent, NPlusOneSignal, emit
from tests.models import Base, User, sample_users

if TYPE_CHECKING:
    from collections.abc import Iterator

DURATION = "ormtune_db_client_operation_duration_seconds"


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(sample_users(3, 2))
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_statements_are_timed_by_operation_table_and_database(
    engine: Engine, registry: CollectorRegistry
) -> None:
    with instrument(engine, registry=registry, slow_query_threshold=None), Session(engine) as s:
        s.scalars(select(User)).all()
        s.scalars(select(User).where(User.id == 1)).all()
        s.add(User(name="new"))
        s.commit()
    select_labels = {"operation": "select", "table": "users", "database": "sqlite/"}
    insert_labels = {**select_labels, "operation": "insert"}
    assert registry.get_sample_value(f"{DURATION}_count", select_labels) == 2
    assert registry.get_sample_value(f"{DURATION}_count", insert_labels) == 1
    total = registry.get_sample_value(f"{DURATION}_sum", select_labels)
    assert total is not None
    assert total > 0
    # Cumulative buckets: the +Inf bucket holds every observation.
    assert registry.get_sample_value(f"{DURATION}_bucket", {**select_labels, "le": "+Inf"}) == 2


def test_nothing_is_recorded_after_close(engine: Engine, registry: CollectorRegistry) -> None:
    with (
        instrument(engine, registry=registry, slow_query_threshold=None),
        engine.connect() as conn,
    ):
        conn.execute(text("select 1"))
    with engine.connect() as conn:
        conn.execute(text("select 1"))
    labels = {"operation": "select", "table": "none", "database": "sqlite/"}
    assert registry.get_sample_value(f"{DURATION}_count", labels) == 1


def test_errors_are_counted_by_the_drivers_error_class(
    engine: Engine, registry: CollectorRegistry
) -> None:
    with (
        instrument(engine, registry=registry, slow_query_threshold=None),
        engine.connect() as conn,
        pytest.raises(OperationalError),
    ):
        conn.execute(text("select * from no_such_table"))
    labels = {"operation": "select", "database": "sqlite/", "error_type": "OperationalError"}
    assert registry.get_sample_value("ormtune_db_client_operation_errors_total", labels) == 1


def test_signals_become_cache_nplusone_and_autoload_counters(registry: CollectorRegistry) -> None:
    with instrument(registry=registry, slow_query_threshold=None, log_queries=False):
        for outcome in ("hit", "hit", "miss", "bypass", "invalidation", "rejected"):
            emit(CacheEvent("orders", outcome, None, ("orders",)))
        emit(NPlusOneSignal("n+1", "User.posts", 2))
        emit(NPlusOneSignal("repeated", None, 5))
        emit(AutoloadBatch("User.posts", 40))
    value = registry.get_sample_value
    lookups = "ormtune_cache_lookups_total"
    assert value(lookups, {"cache": "orders", "outcome": "hit"}) == 2
    assert value(lookups, {"cache": "orders", "outcome": "miss"}) == 1
    assert value(lookups, {"cache": "orders", "outcome": "bypass"}) == 1
    assert value("ormtune_cache_invalidations_total", {"cache": "orders"}) == 1
    assert value("ormtune_cache_rejected_stores_total", {"cache": "orders"}) == 1
    findings = "ormtune_nplusone_findings_total"
    assert value(findings, {"relationship": "User.posts", "kind": "n+1"}) == 1
    assert value(findings, {"relationship": "none", "kind": "repeated"}) == 1
    assert value("ormtune_autoload_batches_total", {"relationship": "User.posts"}) == 1
    assert value("ormtune_autoload_batch_parents_sum", {"relationship": "User.posts"}) == 40


def test_requests_are_recorded_by_route_template_method_and_status_class(
    registry: CollectorRegistry,
) -> None:
    collected = metrics(registry)
    for status in (200, 201, 404):
        collected.record_request(
            route="/users/{id}",
            method="GET",
            status=status,
            duration=0.01,
            queries=3,
            db_duration=0.002,
            request_id="abc",
        )
    collected.record_request(
        route=None, method="BREW", status=999, duration=0.01, queries=0, db_duration=0.0
    )
    value = registry.get_sample_value
    duration = "ormtune_http_server_request_duration_seconds_count"
    assert value(duration, {"route": "/users/{id}", "method": "GET", "status_class": "2xx"}) == 2
    assert value(duration, {"route": "/users/{id}", "method": "GET", "status_class": "4xx"}) == 1
    assert value(duration, {"route": "none", "method": "other", "status_class": "other"}) == 1
    queries = "ormtune_http_server_request_db_queries"
    assert value(f"{queries}_sum", {"route": "/users/{id}"}) == 9
    assert value(f"{queries}_bucket", {"route": "/users/{id}", "le": "2.0"}) == 0
    assert value(f"{queries}_bucket", {"route": "/users/{id}", "le": "3.0"}) == 3


def exemplar_of(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> object:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.exemplar
    raise AssertionError(f"no sample {name} {labels}")


def test_a_request_id_too_long_for_an_exemplar_still_records_the_request(
    registry: CollectorRegistry,
) -> None:
    # OpenMetrics allows 128 characters of exemplar labels ("request_id" takes 10): a longer
    # id drops the exemplar, never the request's other observations.
    collected = metrics(registry)
    for request_id in ("a" * 118, "b" * 119):
        collected.record_request(
            route="/x", method="GET", status=200, duration=0.02, queries=4,
            db_duration=0.001, request_id=request_id,
        )  # fmt: skip
    value = registry.get_sample_value
    labels = {"route": "/x", "method": "GET", "status_class": "2xx"}
    assert value("ormtune_http_server_request_duration_seconds_count", labels) == 2
    assert value("ormtune_http_server_request_db_queries_count", {"route": "/x"}) == 2
    assert value("ormtune_http_server_request_db_duration_seconds_count", {"route": "/x"}) == 2
    exemplar = exemplar_of(
        registry, "ormtune_http_server_request_duration_seconds_bucket", {**labels, "le": "0.025"}
    )
    assert exemplar is not None
    assert exemplar.labels == {"request_id": "a" * 118}  # type: ignore[attr-defined]
    assert exemplar.value == 0.02  # type: ignore[attr-defined]


def test_label_values_past_the_ceiling_are_recorded_as_other(registry: CollectorRegistry) -> None:
    collected = metrics(registry, max_label_values=2)
    for route in ("/a", "/b", "/c", "/d"):
        collected.record_request(
            route=route, method="GET", status=200, duration=0.01, queries=1, db_duration=0.0
        )
    queries = "ormtune_http_server_request_db_queries_count"
    assert registry.get_sample_value(queries, {"route": "/a"}) == 1
    assert registry.get_sample_value(queries, {"route": "/b"}) == 1
    assert registry.get_sample_value(queries, {"route": "/c"}) is None
    assert registry.get_sample_value(queries, {"route": "other"}) == 2


def test_asking_twice_for_one_registry_gives_the_same_metrics(registry: CollectorRegistry) -> None:
    first = metrics(registry)
    assert metrics(registry) is first
    with instrument(registry=registry) as one, instrument(registry=registry) as two:
        assert one.metrics is two.metrics is first
    assert metrics(CollectorRegistry()) is not first


def test_other_settings_for_existing_metrics_are_refused(registry: CollectorRegistry) -> None:
    metrics(registry)
    with pytest.raises(ConfigurationError, match="already exist on this registry"):
        metrics(registry, buckets=Buckets(query_seconds=(0.1, 1.0)))
    assert metrics(registry, namespace="other") is not metrics(registry)


def test_metrics_registered_behind_its_back_give_a_clear_error(
    registry: CollectorRegistry,
) -> None:
    Metrics(registry)
    with pytest.raises(ConfigurationError, match="already registered"):
        Metrics(registry)


def test_a_failing_collector_never_reaches_the_application(
    engine: Engine, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with instrument(engine, registry=registry, slow_query_threshold=None) as instrumentation:
        assert instrumentation.metrics is not None

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("collector bug")

        monkeypatch.setattr(instrumentation.metrics.query_duration, "labels", broken)
        monkeypatch.setattr(instrumentation.metrics.cache_lookups, "labels", broken)
        with Session(engine) as session:
            assert len(session.scalars(select(User)).all()) == 3
        emit(CacheEvent("orders", "hit"))


def test_database_labels_are_forgotten_with_their_engine() -> None:
    # The label memo is keyed by id(engine): an entry must go when its engine does, or a new
    # engine that reuses the id would be labelled with the old engine's database.
    first = create_engine("sqlite:///first.db")
    assert database_label(first) == "sqlite/first.db"
    key = id(first)
    assert _databases[key] == "sqlite/first.db"
    del first
    gc.collect()
    assert key not in _databases
    second = create_engine("sqlite:///second.db")
    assert database_label(second) == "sqlite/second.db"
    assert database_label(second) == "sqlite/second.db"  # memoised, same answer


# Bounds hit exactly, between bounds, below the first, above the last finite one, zero and a
# negative amount: every way an amount can fall into a bucket.
AMOUNTS = [0.0, -0.25, 0.0004, 0.0005, 0.0007, 0.001, 0.003, 0.3, 0.25, 7.0, 10.0, 11.0, 1e9]


def histogram_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith(DURATION) and not sample.name.endswith("_created")
    }


def assert_same_histograms(
    expected: dict[tuple[str, str], float], got: dict[tuple[str, str], float]
) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):  # one addition of a total instead of one per amount
            assert math.isclose(got[key], value, rel_tol=1e-12, abs_tol=1e-15), key
        else:  # counts and buckets: exactly the same
            assert got[key] == value, key


def test_bisected_observation_records_what_histogram_observe_records() -> None:
    public, fast = CollectorRegistry(), CollectorRegistry()
    public_child = metrics(public).query_duration.labels("select", "t", "db")
    fast_child = metrics(fast).query_duration.labels("select", "t", "db")
    for amount in AMOUNTS:
        public_child.observe(amount)
        observe(fast_child, amount)
    assert histogram_samples(fast) == histogram_samples(public)


def test_held_back_observations_add_up_to_per_statement_observations() -> None:
    public, held = CollectorRegistry(), CollectorRegistry()
    per_statement = metrics(public).query_duration
    aggregated = metrics(held).query_duration
    pending = PendingObservations()
    for n, amount in enumerate(AMOUNTS * 3):
        table = f"t{n % 2}"  # two children, interleaved
        per_statement.labels("select", table, "db").observe(amount)
        assert pending.add(aggregated.labels("select", table, "db"), amount)
    assert histogram_samples(held)[(f"{DURATION}_count", "")] == 0  # nothing until the flush
    pending.flush()
    assert_same_histograms(histogram_samples(public), histogram_samples(held))


def test_observations_after_the_flush_are_refused_for_the_caller_to_record() -> None:
    registry = CollectorRegistry()
    child = metrics(registry).query_duration.labels("select", "t", "db")
    pending = PendingObservations()
    assert pending.add(child, 0.001)
    pending.flush()
    assert not pending.add(child, 0.002)
    pending.flush()  # a second flush records nothing twice
    labels = {"operation": "select", "table": "t", "database": "db"}
    assert registry.get_sample_value(f"{DURATION}_count", labels) == 1
    assert registry.get_sample_value(f"{DURATION}_sum", labels) == 0.001
