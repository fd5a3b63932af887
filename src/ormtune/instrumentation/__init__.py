"""Observability in production: Prometheus metrics, structured JSON logs, a slow-query log and
HTTP middleware that ties every statement to the request that ran it.

::

    import logging

    from fastapi import FastAPI
    from ormtune.instrumentation import (
        JsonFormatter, OrmtuneMiddleware, instrument, metrics_app,
    )

    instrumentation = instrument(engine, slow_query_threshold=0.2, explain=True)
    app = FastAPI()
    app.add_middleware(OrmtuneMiddleware, metrics=instrumentation.metrics)
    app.mount("/metrics", metrics_app())

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("ormtune").addHandler(handler)
    logging.getLogger("ormtune").setLevel(logging.INFO)

Each response then carries ``X-Request-ID`` and ``Server-Timing: db;dur=..;desc="N queries"``;
each request logs one JSON line with its id, route, status, duration and query count; slow
statements log their SQL, call-site and plan; ``/metrics`` serves query, request, pool, cache,
N+1 and autoload metrics (the list is in docs/instrumentation.md).

The metrics feed on ``ormtune.querylog``'s statement stream and signal channel, so they count
what the cache, N+1 detection and autoload report without importing them. prometheus_client is
needed only for metrics (``pip install 'ormtune[prometheus]'``).
"""

from ormtune.instrumentation._asgi import OrmtuneMiddleware, metrics_app, route_template
from ormtune.instrumentation._context import RequestContext, current_request, set_route
from ormtune.instrumentation._instrument import Instrumentation, instrument
from ormtune.instrumentation._labels import BoundedLabel
from ormtune.instrumentation._logs import JsonFormatter, QueryLogger, add_request_context
from ormtune.instrumentation._metrics import Buckets, Metrics, metrics
from ormtune.instrumentation._pool import (
    TimedAsyncAdaptedQueuePool,
    TimedQueuePool,
    instrument_pool,
)
from ormtune.instrumentation._request import ActorScope
from ormtune.instrumentation._slowlog import SlowQueryLog
from ormtune.instrumentation._wsgi import OrmtuneWSGIMiddleware

__all__ = [
    "ActorScope",
    "BoundedLabel",
    "Buckets",
    "Instrumentation",
    "JsonFormatter",
    "Metrics",
    "OrmtuneMiddleware",
    "OrmtuneWSGIMiddleware",
    "QueryLogger",
    "RequestContext",
    "SlowQueryLog",
    "TimedAsyncAdaptedQueuePool",
    "TimedQueuePool",
    "add_request_context",
    "current_request",
    "instrument",
    "instrument_pool",
    "metrics",
    "metrics_app",
    "route_template",
    "set_route",
]
