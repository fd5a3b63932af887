"""N+1 detection on against off, paired within one process, on its own: the second table of
``autoload.py`` (see its docstring for the design), without the loading strategies' table.

The same naive loop on PostgreSQL runs in one process as a sequence of pairs, ``--runs`` runs
with detection off and ``--runs`` runs with it on (``install("log")``, each run in a
``detect("log")`` block, then ``uninstall()``), the two halves of a pair in alternating order;
a half's time is the median of its runs, each pair gives one ratio, and the report is the
median over all pairs of ``--processes`` processes, run one after another, with its
quartiles. An A/A control pairs "off" with "off" the same way, so its ratios show how far a
pair strays by chance. "Off" after an ``uninstall()`` is SQLAlchemy with no ormtune listener
left; what remains is its ``_has_events`` flag on the dialect, an empty listener list checked
per statement.

    .venv-bench/bin/python bench/detection_paired.py
    .venv-bench/bin/python bench/detection_paired.py --sizes 10,100,1000 --pairs 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).parent))

import _harness
from autoload import PAIRED_HEADERS, PairDesign, detection_paired_rows, quiet_findings, seed


def main() -> None:
    quiet_findings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=_harness.DEFAULT_POSTGRES)
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--pairs", type=int, default=30, help="pairs per process")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument(
        "--runs", type=int, help="runs per half (default: about 50 ms of loop, at least 3)"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    design = PairDesign(pairs=args.pairs, processes=args.processes, runs=args.runs)
    rows: list[list[object]] = []
    verdicts = []
    with _harness.scratch_postgres(args.postgres, "ormtune_bench_detection") as url:
        engine = create_engine(url)
        seed(engine, max(sizes))
        engine.dispose()  # no pooled connection crosses into the worker processes
        for users in sizes:
            more_rows, verdict = detection_paired_rows(url, users, design)
            rows += more_rows
            verdicts.append(verdict)
    print(_harness.text_table(PAIRED_HEADERS, rows))
    print()
    print("\n".join(verdicts))
    environment = _harness.environment(
        {"pairs per process": str(args.pairs), "processes": str(args.processes)}
    )
    print(f"\n{environment}\ncommand: {_harness.command_line()}")
    print()
    print(_harness.markdown_table(PAIRED_HEADERS, rows))


if __name__ == "__main__":
    main()
