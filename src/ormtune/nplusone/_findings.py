"""Findings: what N+1 detection reports, each with the change that removes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.orm import RelationshipProperty

    from ormtune.querylog import CallSite

__all__ = [
    "AUTOLOAD",
    "BATCH_ADVICE",
    "STRATEGY_OPTIONS",
    "Finding",
    "FindingKind",
    "describe",
    "eager_fix",
    "loader_option",
    "relationship_name",
]

FindingKind = Literal["n+1", "repeated", "unused-eager"]
"""``"n+1"``: one relationship lazy-loaded for several objects one query loaded.
``"repeated"``: one SELECT run again and again from one line (not an N+1 lazy load).
``"unused-eager"``: a relationship a query loaded eagerly and nothing read."""

STRATEGY_OPTIONS: Final = {
    "joined": "joinedload",
    "selectin": "selectinload",
    "subquery": "subqueryload",
    "immediate": "immediateload",
}
"""The eager loader strategies (``relationship(lazy=...)``) and the option of each."""

_MAPPED_FIX = 'lazy="select"'

AUTOLOAD = "ormtune.autoload()"
BATCH_ADVICE = (
    "run one query for all the values before the loop (for example "
    ".where(column.in_(values))), or cache its result"
)


def relationship_name(relationship: RelationshipProperty[Any]) -> str:
    """``Class.attribute`` of a relationship, as users write it."""
    return f"{relationship.parent.class_.__name__}.{relationship.key}"


def loader_option(relationship: RelationshipProperty[Any]) -> str:
    """The loader option that loads ``relationship`` for every row of a query up front.

    A collection gets ``selectinload`` (one extra query, no row multiplication); a single
    related object (many-to-one, one-to-one) gets ``joinedload`` (no extra query at all).
    """
    strategy = "selectinload" if relationship.uselist else "joinedload"
    return f".options({strategy}({relationship_name(relationship)}))"


def eager_fix(relationship: RelationshipProperty[Any], strategy: str, *, option: bool) -> str:
    """What to change for an unused eager load: the loader option to drop
    (``selectinload(User.posts)``) or, for a mapping's default, ``lazy="select"``."""
    if option:
        return f"{STRATEGY_OPTIONS[strategy]}({relationship_name(relationship)})"
    return _MAPPED_FIX


@dataclass(frozen=True, slots=True)
class Finding:
    """One pattern of wasted queries, where it happens and how to fix it.

    ``relationship`` is ``"Class.attribute"`` for lazy loads (None for a repeated statement
    that is not one); ``count`` is how many statements the pattern cost (for an unused eager
    load: how many objects it was loaded for); ``callsite`` is the line of application code
    inside the loop (for an unused eager load: the line that ran the query); ``fingerprint``
    is the SQL statement's shape (None for unused eager loads); ``fix`` is the change that
    removes it: the loader option as code (``.options(selectinload(User.posts))``; for an
    unused eager load, the option to drop, ``selectinload(User.posts)``, or ``lazy="select"``
    for a mapping's default) when there is one, otherwise a sentence. ``str(finding)`` is the
    full, readable report.
    """

    kind: FindingKind
    relationship: str | None
    count: int
    callsite: CallSite | None
    fingerprint: str | None
    fix: str

    @property
    def owner(self) -> str | None:
        """The class whose objects the relationship was loaded for (``User`` for
        ``User.posts``)."""
        if self.relationship is None:
            return None
        return self.relationship.rpartition(".")[0]

    @property
    def summary(self) -> str:
        """The first line of the report: what happened and how often."""
        times = f"{self.count} time" if self.count == 1 else f"{self.count} times"
        if self.kind == "n+1":
            return (
                f"N+1 query: {self.relationship} lazy-loaded {times}, "
                f"once per {self.owner} loaded by the same query"
            )
        if self.kind == "unused-eager":
            objects = "object" if self.count == 1 else "objects"
            return (
                f"Unused eager load: {self.relationship} loaded for {self.count} {self.owner} "
                f"{objects} and never read"
            )
        if self.relationship is not None:
            return (
                f"Repeated query: {self.relationship} lazy-loaded {times} from one line, "
                f"for {self.owner} objects that were loaded one at a time"
            )
        return f"Repeated query: the same SELECT ran {times} from one line"

    @property
    def advice(self) -> str:
        """The fix as a sentence, naming ``ormtune.autoload()`` where it applies."""
        if self.kind == "n+1":
            return (
                f"add {self.fix} to the query that loads the {self.owner} objects, "
                f"or enable {AUTOLOAD}"
            )
        if self.kind == "unused-eager":
            finder = f"raiseload({self.relationship})"
            if self.fix == _MAPPED_FIX:
                return (
                    f"set {self.fix} on {self.relationship} (or add .options(lazyload("
                    f"{self.relationship})) to this query); {finder} finds code that reads it"
                )
            return (
                f"remove {self.fix} from this query's options; {finder} in its place finds "
                f"code that reads it"
            )
        if self.relationship is not None:
            return f"load the {self.owner} objects with one query, with {self.fix}"
        return self.fix

    def __str__(self) -> str:
        where = str(self.callsite) if self.callsite is not None else "an unknown line"
        lines = [self.summary, f"  at {where}"]
        if self.fingerprint is not None:
            lines.append(f"  sql: {self.fingerprint}")
        lines.append(f"  fix: {self.advice}")
        return "\n".join(lines)


def describe(findings: Sequence[Finding]) -> str:
    """Several findings as one text: a count, then each finding's report (one finding is just
    its report)."""
    if not findings:
        return "no N+1 or repeated queries"
    if len(findings) == 1:
        return str(findings[0])
    noun = "finding" if len(findings) == 1 else "findings"
    parts = [f"{len(findings)} N+1 {noun}:"]
    parts.extend(str(finding) for finding in findings)
    return "\n".join(parts)
