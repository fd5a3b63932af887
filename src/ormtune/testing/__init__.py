"""Helpers for test suites: query budgets that fail with the statements listed.

The pytest plugin (``ormtune.pytest_plugin``, loaded automatically) exposes these as the
``assert_max_queries`` and ``assert_num_queries`` fixtures and the ``max_queries`` marker; other
test runners can use the functions directly.
"""

from ormtune.testing._budget import QueryBudget, assert_max_queries, assert_num_queries

__all__ = ["QueryBudget", "assert_max_queries", "assert_num_queries"]
