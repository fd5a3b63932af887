"""N+1 detection: lazy loads in loops and repeated queries, each reported with its fix.

::

    from ormtune import nplusone

    with nplusone.detect("raise"):
        for user in session.scalars(select(User)):
            print(len(user.posts))        # NPlusOneError here, at the second user

    # N+1 query: User.posts lazy-loaded 2 times, once per User loaded by the same query
    #   at app/views.py:42 in list_users
    #   sql: select posts.id, posts.title, posts.author_id from posts where ? = posts.author_id
    #   fix: add .options(selectinload(User.posts)) to the query that loads the User objects,
    #        or enable ormtune.autoload()

What is reported, per unit of work (a :func:`detect` block: a request, a test):

* **N+1** (``kind="n+1"``): one relationship lazy-loaded for two or more of the objects that
  one query loaded (its *cohort*). A lazy load on a single object (``session.get()``,
  ``.first()``, a one-row result) is not one, nor is a many-to-one load that the identity map
  answers without SQL.
* **Repeated query** (``kind="repeated"``): one SELECT (same fingerprint) run from one line
  ``repeated_threshold`` times or more (default 5) and not already part of an N+1: lookups in a
  loop, reads of ``dynamic`` / ``write_only`` relationships, lazy loads on objects that were
  loaded one at a time.

Not reported: eager loads (``joinedload``, ``selectinload``, ``subqueryload``) whose
relationship is never read. Telling that needs an event when a loaded attribute is read, and
SQLAlchemy has none: a loaded value is returned straight from the instance ``__dict__`` by the
attribute descriptor, with no hook, and the one public way to replace the descriptors,
``sqlalchemy.ext.instrumentation``, works by rebinding ORM module globals, which is the
monkeypatching ormtune does not do.

:func:`install` turns detection on for a whole process (N+1s only; repeated queries need a
:func:`detect` block). The pytest plugin adds ``--ormtune-nplusone=raise|warn|log``, the
``nplusone`` marker and the ``assert_no_nplusone`` fixture.
"""

from ormtune.exceptions import NPlusOneError, NPlusOneWarning
from ormtune.nplusone._detection import Detection, detect, install, uninstall
from ormtune.nplusone._findings import Finding, FindingKind
from ormtune.nplusone._settings import Mode

__all__ = [
    "Detection",
    "Finding",
    "FindingKind",
    "Mode",
    "NPlusOneError",
    "NPlusOneWarning",
    "detect",
    "install",
    "uninstall",
]
