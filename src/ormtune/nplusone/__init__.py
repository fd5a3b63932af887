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
* **Unused eager load** (``kind="unused-eager"``, with ``detect(unused_eager=True)``): a
  relationship one query loaded eagerly (``joinedload``, ``selectinload``, ``subqueryload``,
  ``immediateload``, or the mapping's ``lazy=``) and read on none of its objects by the end of
  the block; the finding names the query's line and the option to drop (or ``lazy="select"``).
  SQLAlchemy has no event for reading a loaded attribute (``InstrumentedAttribute.__get__``
  returns it straight from the instance ``__dict__``), so while such a block is open, and only
  then, the class attributes of the relationships queries actually loaded eagerly are switched
  to a read-noting subclass (same objects, same values) and switched back when the last such
  block closes; ``_eager.py`` says why the supported extension points do not fit.

:func:`install` turns detection on for a whole process (N+1s only; repeated queries and unused
eager loads need a :func:`detect` block). The pytest plugin adds
``--ormtune-nplusone=raise|warn|log`` and ``--ormtune-unused-eager``, the ``nplusone`` marker
and the ``assert_no_nplusone`` fixture.
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
