"""Helpers for test suites: query budgets and N+1 checks that fail with the statements listed.

The pytest plugin (``ormtune.pytest_plugin``, loaded automatically) exposes these as the
``assert_max_queries``, ``assert_num_queries`` and ``assert_no_nplusone`` fixtures and the
``max_queries`` and ``nplusone`` markers; other test runners can use the functions directly.
"""

from ormtune.testing._budget import QueryBudget, assert_max_queries, assert_num_queries
from ormtune.testing._nplusone import assert_no_nplusone

__all__ = ["QueryBudget", "assert_max_queries", "assert_no_nplusone", "assert_num_queries"]
