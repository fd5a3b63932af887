"""Repositories and services: the data-access layer over SQLAlchemy, written once.

* :class:`Repository` / :class:`AsyncRepository`: CRUD, filters, offset and keyset
  pagination, bulk writes and upserts for one model, with declared eager loads
  (``load = [Payment.user, (Payment.job, Job.client)]``) and database errors translated into
  :mod:`ormtune.exceptions`. Soft-deletable models (``ormtune.integrity.SoftDeleteMixin``) are
  soft-deleted, restored and hard-deleted through them.
* :class:`Service` / :class:`AsyncService`: input mapping (dicts or pydantic models),
  validation hooks and transaction boundaries on top.
"""

from ormtune.repository._async import AsyncRepository
from ormtune.repository._errors import translate_integrity_error, translating
from ormtune.repository._query import LoadSpec, OrderSpec, Page, loader_options, where_from_filters
from ormtune.repository._service import AsyncService, Service
from ormtune.repository._sync import Repository

__all__ = [
    "AsyncRepository",
    "AsyncService",
    "LoadSpec",
    "OrderSpec",
    "Page",
    "Repository",
    "Service",
    "loader_options",
    "translate_integrity_error",
    "translating",
    "where_from_filters",
]
