"""Compare JUnit XML results of SQLAlchemy's test suite: baseline against each variant.

``python bench/conformance/compare.py RESULTS_DIR base A B C`` prints each run's counts and
every test whose outcome differs from the first run's, with the first line of its message.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path


def outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """test id -> (pass / failure / error / skip, first line of the message)."""
    found: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "pass", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
                message = (child.get("message") or "").strip().split("\n", 1)[0][:200]
            elif child.tag == "skipped":
                outcome = "skip"
        found[name] = (outcome, message)
    return found


def main(directory: str, baseline: str, *variants: str) -> None:
    base = outcomes(Path(directory) / f"results-{baseline}.xml")
    for name in (baseline, *variants):
        results = base if name == baseline else outcomes(Path(directory) / f"results-{name}.xml")
        counts = Counter(outcome for outcome, _ in results.values())
        print(f"{name}: {len(results)} tests, " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        for test, (outcome, message) in sorted(results.items()):
            before = base.get(test, ("missing", ""))[0]
            if outcome != before:
                print(f"  {before} -> {outcome}: {test}: {message}")


if __name__ == "__main__":
    main(*sys.argv[1:])
