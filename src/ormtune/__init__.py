"""ormtune: make SQLAlchemy 2.x applications fast, and keep them fast.

The 30-second tour::

    import ormtune

    with ormtune.capture(callsites=True) as log:
        run_the_code_you_care_about()
    print(log.report())          # counts, fingerprints, duplicates, call-sites

and in tests, with the bundled pytest plugin::

    def test_list_orders(assert_max_queries):
        with assert_max_queries(2):
            list_orders()

and to make naive lazy-loading loops issue one query per relationship instead of one per
object::

    ormtune.autoload()

and to serve hot reads from a cache that a commit invalidates before it returns::

    session.scalars(select(Payment).where(Payment.user_id == 7).options(ormtune.cache(ttl=300)))
"""

from ormtune.__about__ import __version__
from ormtune._install import Installation, install
from ormtune.batchload import Autoload, autoload, autoload_option
from ormtune.caching import (
    CachedRoute,
    Identity,
    QueryCache,
    ResponseCache,
    cache,
    cached,
    invalidate,
)
from ormtune.exceptions import (
    CacheBackendError,
    ConfigurationError,
    MissingDependencyError,
    NPlusOneError,
    NPlusOneWarning,
    OrmtuneError,
    QueryCountError,
)
from ormtune.instrumentation import (
    OrmtuneMiddleware,
    OrmtuneWSGIMiddleware,
    instrument,
    metrics_app,
)
from ormtune.querylog import (
    CallSite,
    QueryEvent,
    QueryGroup,
    QueryLog,
    StatementKind,
    capture,
    fingerprint,
    observe,
)
from ormtune.typing import QueryObserver

__all__ = [
    "Autoload",
    "CacheBackendError",
    "CachedRoute",
    "CallSite",
    "ConfigurationError",
    "Identity",
    "Installation",
    "MissingDependencyError",
    "NPlusOneError",
    "NPlusOneWarning",
    "OrmtuneError",
    "OrmtuneMiddleware",
    "OrmtuneWSGIMiddleware",
    "QueryCache",
    "QueryCountError",
    "QueryEvent",
    "QueryGroup",
    "QueryLog",
    "QueryObserver",
    "ResponseCache",
    "StatementKind",
    "__version__",
    "autoload",
    "autoload_option",
    "cache",
    "cached",
    "capture",
    "fingerprint",
    "install",
    "instrument",
    "invalidate",
    "metrics_app",
    "observe",
]
