"""Prometheus metrics: queries, requests, caches, N+1 findings, autoload batches, pools.

Names follow the Prometheus conventions (a ``ormtune_`` namespace, the unit as a suffix,
``_total`` on counters) and the OpenTelemetry ones where they exist (``db_client_operation``
for statements, ``http_server_request`` for requests, ``db_client_connection`` for pools).
Every label has a bounded set of values: operations and status classes are fixed sets, routes
are templates, tables and relationships come from the application's models, and each is capped
by a :class:`~ormtune.instrumentation._labels.BoundedLabel` in case a bug feeds it raw input.

``prometheus_client`` is imported when metrics are first made, not when this module is, so
logging and the middleware work without it.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ormtune.exceptions import ConfigurationError, MissingDependencyError
from ormtune.instrumentation._context import _current
from ormtune.instrumentation._labels import BoundedLabel, status_class
from ormtune.querylog import AutoloadBatch, CacheEvent, NPlusOneSignal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from sqlalchemy.engine import Engine

    from ormtune.querylog import QueryEvent, Signal, StatementInfo

__all__ = ["Buckets", "Metrics", "PendingObservations", "database_label", "metrics", "observe"]


_Exemplar: Any = None  # prometheus_client.samples.Exemplar, bound by _prometheus()


def _prometheus() -> Any:
    global _Exemplar
    try:
        import prometheus_client
        from prometheus_client.samples import Exemplar
    except ImportError as exc:
        raise MissingDependencyError(
            "prometheus_client", "prometheus", "ormtune.instrumentation metrics"
        ) from exc
    _Exemplar = Exemplar
    return prometheus_client


@dataclass(frozen=True, slots=True)
class Buckets:
    """Histogram bucket bounds; the defaults suit web applications on a nearby database."""

    query_seconds: tuple[float, ...] = (
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    )  # fmt: skip
    request_seconds: tuple[float, ...] = (
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    )  # fmt: skip
    queries_per_request: tuple[float, ...] = (0, 1, 2, 3, 5, 8, 13, 21, 50, 100, 200, 500)
    pool_wait_seconds: tuple[float, ...] = (
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
    )  # fmt: skip
    autoload_parents: tuple[float, ...] = (2, 5, 10, 20, 50, 100, 500, 1000, 5000)


_OPERATIONS = {"select": "select", "insert": "insert", "update": "update", "delete": "delete"}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_CACHE_LOOKUPS = frozenset({"hit", "miss", "bypass"})

# id(engine) -> label, each entry dropped when its engine is collected (so an id is never
# reused while its entry lives). A plain dict keyed by id, not a WeakKeyDictionary: this is
# read for every statement, and a WeakKeyDictionary lookup makes a weak reference each time.
_databases: dict[int, str] = {}


def database_label(engine: Engine) -> str:
    """``backend/database`` of an engine (``postgresql/shop``), memoised per engine; never the
    host, user or password."""
    label = _databases.get(id(engine))
    if label is None:
        url = engine.url
        label = f"{url.get_backend_name()}/{url.database or ''}"
        if id(engine) not in _databases:
            _databases[id(engine)] = label
            weakref.finalize(engine, _databases.pop, id(engine), None)
    return label


def _fast(child: Any) -> bool:
    """Whether ``child`` (a labelled histogram) has the layout :func:`observe` relies on."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    return (
        isinstance(bounds, list)
        and isinstance(buckets, list)
        and len(bounds) == len(buckets)
        and all(callable(getattr(value, "inc", None)) for value in buckets)
        and all(callable(getattr(value, "set_exemplar", None)) for value in buckets)
        and callable(getattr(getattr(child, "_sum", None), "inc", None))
    )


def observe(child: Any, amount: float, exemplar: dict[str, str] | None = None) -> None:
    """``child.observe(amount, exemplar)`` for a labelled histogram, with the bucket found by
    bisection.

    prometheus_client's ``Histogram.observe`` checks the metric and walks the bounds in
    Python for every observation; this does what it does (add to the sum, count the first
    bucket whose bound is >= the amount, set the exemplar on that bucket) with one ``bisect``.
    It reads the child's ``_upper_bounds``, ``_sum`` and ``_buckets``, which prometheus_client
    has had for years; :class:`Metrics` checks them on its first child (``_fast``) and
    otherwise observes the public way. NaN, which no bucket takes, goes the public way too.
    An exemplar must be valid (see :func:`_exemplar`): it is not checked again here.
    """
    if amount == amount:
        child._sum.inc(amount)
        bucket = child._buckets[bisect_left(child._upper_bounds, amount)]
        bucket.inc(1)
        if exemplar:
            bucket.set_exemplar(_Exemplar(exemplar, amount, time.time()))
    else:
        child.observe(amount, exemplar)


# OpenMetrics caps an exemplar's label names and values at 128 characters in all, and
# prometheus_client raises ValueError past it (after counting the observation).
_EXEMPLAR_LIMIT = 128 - len("request_id")


def _exemplar(request_id: str | None) -> dict[str, str] | None:
    """The request-id exemplar, or None when there is no id or it is too long for one."""
    if not request_id or len(request_id) > _EXEMPLAR_LIMIT:
        return None
    return {"request_id": request_id}


class PendingObservations:
    """Statement durations of one HTTP request, held back and recorded when it ends.

    The middleware gives every request one; :meth:`Metrics.on_query` adds each statement of the
    request here instead of observing the histogram at once, and the middleware's
    :meth:`flush` records them all at the request's end: per histogram child, one increment of
    the sum and one per bucket that was hit, instead of two per statement. The histograms end
    up with the same counts and bucket counts as if each statement had been observed on its
    own, and the same sums up to floating-point rounding; they only show a request's statements
    once the request has finished. A statement that arrives after :meth:`flush` (a task the
    request started and left running) is refused, and its caller observes it directly.
    """

    __slots__ = ("_items", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[Any, float]] | None = []

    def add(self, child: Any, amount: float) -> bool:
        """Hold one observation for ``child``; False once flushed (observe it yourself)."""
        with self._lock:
            items = self._items
            if items is None:
                return False
            items.append((child, amount))
            return True

    def flush(self) -> None:
        """Record everything held, and refuse what comes later."""
        with self._lock:
            items, self._items = self._items, None
        if not items:
            return
        # child -> [sum, {bucket index: count}], in order of first appearance
        grouped: dict[Any, list[Any]] = {}
        for child, amount in items:
            if amount != amount:  # NaN: no bucket takes it; let prometheus_client decide
                child.observe(amount)
                continue
            index = bisect_left(child._upper_bounds, amount)
            group = grouped.get(child)
            if group is None:
                grouped[child] = [amount, {index: 1}]
            else:
                group[0] += amount
                counts = group[1]
                counts[index] = counts.get(index, 0) + 1
        for child, (total, counts) in grouped.items():
            child._sum.inc(total)
            buckets = child._buckets
            for index, count in counts.items():
                buckets[index].inc(count)


class Metrics:
    """The collectors ormtune records into, on one registry.

    Get one with :func:`metrics` (which returns the same object for the same registry, so two
    apps or two tests never register a time series twice). It is a
    :class:`~ormtune.typing.QueryObserver` and a :class:`~ormtune.typing.SignalObserver`;
    :func:`ormtune.instrumentation.instrument` subscribes it, and the middleware calls
    :meth:`record_request`. Recording never raises into the application.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        namespace: str = "ormtune",
        buckets: Buckets | None = None,
        max_label_values: int = 500,
    ) -> None:
        prom = _prometheus()
        # Weak: metrics() keeps one Metrics per registry in a WeakKeyDictionary, which a strong
        # reference back to its key would keep alive for ever (every test's fresh registry).
        self._registry = weakref.ref(registry)
        self.namespace = namespace
        self.buckets = buckets = buckets or Buckets()
        self.max_label_values = max_label_values
        self._route = BoundedLabel(max_label_values)
        self._table = BoundedLabel(max_label_values)
        self._relationship = BoundedLabel(max_label_values)
        self._cache = BoundedLabel(max_label_values)
        self._error = BoundedLabel(max_label_values)
        self._pool = BoundedLabel(max_label_values)
        self._children: dict[tuple[str, str, str], Any] = {}
        self._by_statement: dict[int, tuple[StatementInfo, str, Any, str]] = {}
        self._request_children: dict[tuple[str | None, str, int], tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()
        # Whether the histogram children have the layout observe() relies on (None: not known
        # until the first child is made; a child cannot be made here without exporting it).
        self._fast: bool | None = None

        def histogram(name: str, doc: str, labels: Sequence[str], bounds: Sequence[float]) -> Any:
            return prom.Histogram(
                name, doc, labels, namespace=namespace, registry=registry, buckets=bounds
            )

        def counter(name: str, doc: str, labels: Sequence[str]) -> Any:
            return prom.Counter(name, doc, labels, namespace=namespace, registry=registry)

        def gauge(name: str, doc: str, labels: Sequence[str]) -> Any:
            # livesum: under multiprocess servers, the sum over the live worker processes.
            return prom.Gauge(
                name, doc, labels, namespace=namespace, registry=registry,
                multiprocess_mode="livesum",
            )  # fmt: skip

        try:
            self.query_duration: Histogram = histogram(
                "db_client_operation_duration_seconds",
                "Time the database took to execute one SQL statement.",
                ("operation", "table", "database"),
                buckets.query_seconds,
            )
            self.query_errors: Counter = counter(
                "db_client_operation_errors_total",
                "SQL statements the database refused, by the driver's error class.",
                ("operation", "database", "error_type"),
            )
            self.request_queries: Histogram = histogram(
                "http_server_request_db_queries",
                "SQL statements executed per HTTP request.",
                ("route",),
                buckets.queries_per_request,
            )
            self.request_db_duration: Histogram = histogram(
                "http_server_request_db_duration_seconds",
                "Time spent in the database per HTTP request.",
                ("route",),
                buckets.request_seconds,
            )
            self.request_duration: Histogram = histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP requests, from the first byte received to the last sent.",
                ("route", "method", "status_class"),
                buckets.request_seconds,
            )
            self.cache_lookups: Counter = counter(
                "cache_lookups_total",
                "Query cache lookups by outcome: hit, miss or bypass.",
                ("cache", "outcome"),
            )
            self.cache_invalidations: Counter = counter(
                "cache_invalidations_total",
                "Commits that invalidated entries of a query cache.",
                ("cache",),
            )
            self.cache_rejected: Counter = counter(
                "cache_rejected_stores_total",
                "Query cache stores refused (dependencies changed while reading, too large).",
                ("cache",),
            )
            self.nplusone_findings: Counter = counter(
                "nplusone_findings_total",
                "N+1 loops and repeated queries found, by relationship.",
                ("relationship", "kind"),
            )
            self.autoload_batches: Counter = counter(
                "autoload_batches_total",
                "Batch loads made by ormtune.autoload(), by relationship.",
                ("relationship",),
            )
            self.autoload_parents: Histogram = histogram(
                "autoload_batch_parents",
                "Objects whose relationship one autoload batch loaded.",
                ("relationship",),
                buckets.autoload_parents,
            )
            self.pool_size: Gauge = gauge(
                "db_client_connection_pool_size",
                "Configured size of a connection pool (QueuePool pool_size).",
                ("pool",),
            )
            self.pool_checked_out: Gauge = gauge(
                "db_client_connection_checked_out",
                "Connections checked out of a pool, in use by the application.",
                ("pool",),
            )
            self.pool_overflow: Gauge = gauge(
                "db_client_connection_overflow",
                "Checked-out connections beyond pool_size (the overflow in use).",
                ("pool",),
            )
            self.pool_wait: Histogram = histogram(
                "db_client_connection_wait_time_seconds",
                "Time to obtain a connection from a pool (timed pools only).",
                ("pool",),
                buckets.pool_wait_seconds,
            )
            self.pool_timeouts: Counter = counter(
                "db_client_connection_timeouts_total",
                "Checkouts that gave up waiting for a connection (timed pools only).",
                ("pool",),
            )
            self.pool_invalidated: Counter = counter(
                "db_client_connection_invalidated_total",
                "Connections invalidated (disconnects, errors, soft invalidation).",
                ("pool",),
            )
        except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
            raise ConfigurationError(
                f"ormtune's metrics (namespace {namespace!r}) are already registered on this "
                f"registry by something other than ormtune.instrumentation.metrics(): {exc}. "
                f"Get the metrics with metrics(registry) instead of Metrics(registry), or pass "
                f"a fresh CollectorRegistry."
            ) from exc

    @property
    def registry(self) -> CollectorRegistry | None:
        """The registry the collectors are registered on (None once it is gone)."""
        return self._registry()

    # -- statements -------------------------------------------------------------------------

    def on_query(self, event: QueryEvent) -> None:
        """Record one statement's duration (and its error, if it failed)."""
        info = event.statement
        engine = event.engine
        database = _databases.get(id(engine)) or database_label(engine)
        # The child (and operation) of each statement, by the identity of its StatementInfo,
        # which the fingerprint memo hands out again for every execution of the same SQL; the
        # entry holds the StatementInfo, so its id cannot be reused while the entry lives.
        memo = self._by_statement.get(id(info))
        if memo is not None and memo[0] is info and memo[1] == database:
            child, operation = memo[2], memo[3]
        else:
            child, operation = self._statement_child(info, database)
        if self._fast:
            # In a request: held back and recorded at its end (see PendingObservations).
            request = _current.get()
            if request is None or not request.pending.add(child, event.duration):
                observe(child, event.duration)
        else:
            child.observe(event.duration)
        if event.error is not None:
            error_type = self._error(type(event.error).__name__)
            self.query_errors.labels(operation, database, error_type).inc()

    def _statement_child(self, info: StatementInfo, database: str) -> tuple[Any, str]:
        operation = _OPERATIONS.get(info.kind, "other")
        key = (operation, info.tables[0] if info.tables else "", database)
        child = self._children.get(key)
        if child is None:
            child = self.query_duration.labels(operation, self._table(key[1]), database)
            with self._lock:
                self._children[key] = child
                if self._fast is None:
                    self._fast = _fast(child)
        with self._lock:
            if len(self._by_statement) >= 10_000:  # bounded, like the fingerprint memo
                self._by_statement.clear()
            self._by_statement[id(info)] = (info, database, child, operation)
        return child, operation

    # -- signals ----------------------------------------------------------------------------

    def on_signal(self, signal: Signal) -> None:
        """Count a cache outcome, an N+1 finding or an autoload batch."""
        if isinstance(signal, CacheEvent):
            cache = self._cache(signal.name)
            if signal.outcome in _CACHE_LOOKUPS:
                self.cache_lookups.labels(cache, signal.outcome).inc()
            elif signal.outcome == "invalidation":
                self.cache_invalidations.labels(cache).inc()
            elif signal.outcome == "rejected":
                self.cache_rejected.labels(cache).inc()
        elif isinstance(signal, NPlusOneSignal):
            relationship = self._relationship(signal.relationship)
            self.nplusone_findings.labels(relationship, signal.kind).inc()
        elif isinstance(signal, AutoloadBatch):
            relationship = self._relationship(signal.relationship)
            self.autoload_batches.labels(relationship).inc()
            self.autoload_parents.labels(relationship).observe(signal.parents)

    # -- requests ---------------------------------------------------------------------------

    def record_request(
        self,
        *,
        route: str | None,
        method: str,
        status: int,
        duration: float,
        queries: int,
        db_duration: float,
        request_id: str | None = None,
    ) -> None:
        """Record one HTTP request; ``route`` must be a template (``/users/{id}``), never the
        raw path. The request id goes on the duration histogram as an exemplar (shown by the
        OpenMetrics exposition; multiprocess mode drops exemplars)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            route_label = self._route(route)
            method_label = method if method in _METHODS else "other"
            children = (
                self.request_duration.labels(route_label, method_label, status_class(status)),
                self.request_queries.labels(route_label),
                self.request_db_duration.labels(route_label),
            )
            with self._lock:
                if len(self._request_children) < 10_000:  # bounded, like the labels
                    self._request_children[key] = children
        exemplar = _exemplar(request_id)
        if self._fast is None:
            self._fast = _fast(children[1])
        if self._fast:
            observe(children[0], duration, exemplar)
            observe(children[1], queries)
            observe(children[2], db_duration)
        else:
            children[0].observe(duration, exemplar)
            children[1].observe(queries)
            children[2].observe(db_duration)

    # -- pools (called by ormtune.instrumentation's pool hooks) -----------------------------

    def pool_label(self, name: str) -> str:
        return self._pool(name)


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Metrics]] = (
    weakref.WeakKeyDictionary()
)
_registry_lock = threading.Lock()


def metrics(
    registry: CollectorRegistry | None = None,
    *,
    namespace: str = "ormtune",
    buckets: Buckets | None = None,
    max_label_values: int = 500,
) -> Metrics:
    """ormtune's metrics on ``registry`` (default: prometheus_client's global ``REGISTRY``),
    made on the first call and returned again on every later call with the same registry and
    namespace, so registering twice never raises "Duplicated timeseries".

    ``buckets`` and ``max_label_values`` apply when the metrics are made; asking again with
    different ones is a :class:`~ormtune.exceptions.ConfigurationError`, because the
    collectors already exist with the first ones.
    """
    prom = _prometheus()
    target: CollectorRegistry = prom.REGISTRY if registry is None else registry
    wanted = buckets or Buckets()
    with _registry_lock:
        made = _by_registry.setdefault(target, {})
        existing = made.get(namespace)
        if existing is None:
            existing = made[namespace] = Metrics(
                target, namespace=namespace, buckets=wanted, max_label_values=max_label_values
            )
        elif existing.buckets != wanted or existing.max_label_values != max_label_values:
            raise ConfigurationError(
                f"ormtune's metrics in namespace {namespace!r} already exist on this registry "
                f"with buckets={existing.buckets!r} and "
                f"max_label_values={existing.max_label_values}; they cannot be made again with "
                f"other settings. Pass the same settings, or another namespace or registry."
            )
    return existing
