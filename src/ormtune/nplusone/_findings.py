"""Findings: what N+1 detection reports, each with the change that removes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.orm import RelationshipProperty

    from ormtune.querylog import CallSite

__all__ = [
    "AUTOLOAD",
    "BATCH_ADVICE",
    "Finding",
    "FindingKind",
    "describe",
    "loader_option",
    "relationship_name",
]

FindingKind = Literal["n+1", "repeated"]
"""``"n+1"``: one relationship lazy-loaded for several objects one query loaded.
``"repeated"``: one SELECT run again and again from one line (not an N+1 lazy load)."""

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


@dataclass(frozen=True, slots=True)
class Finding:
    """One pattern of wasted queries, where it happens and how to fix it.

    ``relationship`` is ``"Class.attribute"`` for lazy loads (None for a repeated statement
    that is not one); ``count`` is how many statements the pattern cost; ``callsite`` is the
    line of application code inside the loop; ``fingerprint`` is the SQL statement's shape;
    ``fix`` is the change that removes it: the loader option as code
    (``.options(selectinload(User.posts))``) when there is one, otherwise a sentence.
    ``str(finding)`` is the full, readable report.
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
