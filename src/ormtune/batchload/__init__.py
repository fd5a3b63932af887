"""Automatic batch loading of lazy relationships: the N+1 pattern, fixed without code changes.

``ormtune.autoload()`` makes the first lazy load of a relationship on one object load it for
every object loaded by the same query (its cohort), the way SQLAlchemy's own ``selectinload``
does (or through it), so the object graph is the one ``selectinload`` would give.
"""

from ormtune.batchload._autoload import Autoload, autoload, autoload_option, autoloading
from ormtune.batchload._options import AutoloadOption

__all__ = ["Autoload", "AutoloadOption", "autoload", "autoload_option", "autoloading"]
