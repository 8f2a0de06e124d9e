"""`python -m bench`: every benchmark, one table, written to bench/RESULTS.md.

bench/run is the documented entry point (it installs what is needed first). --quick runs tiny
sizes to prove the scripts work; its numbers mean nothing and it does not touch RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from bench import api, relay
from bench.harness import ROOT, Row, machine_facts, render

RESULTS = ROOT / "bench" / "RESULTS.md"
SUITES: dict[str, Callable[[bool], list[Row]]] = {"relay": relay.run, "api": api.run}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    parser.add_argument("--only", choices=sorted(SUITES), action="append", help="run just these")
    args = parser.parse_args(argv)
    started = time.monotonic()
    sections: list[tuple[str, list[Row]]] = []
    for name in args.only or list(SUITES):
        rows = SUITES[name](args.quick)
        sections.append((name, rows))
        print(render(rows, title=name), flush=True)
    elapsed = time.monotonic() - started
    missed = [row.figure for _, rows in sections for row in rows if row.met is False]
    print(f"bench: {elapsed:.0f} s; targets missed: {len(missed)}", flush=True)
    for figure in missed:
        print(f"  missed: {figure}")
    if not args.quick and not args.only:
        RESULTS.write_text(results_markdown(sections, elapsed))
        print(f"bench: wrote {RESULTS.relative_to(ROOT)}")
    return 1 if missed else 0


def results_markdown(sections: list[tuple[str, list[Row]]], elapsed_s: float) -> str:
    facts = machine_facts()
    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/run` (do not edit by hand). Every figure is the median of several",
        "runs with [min-max]; ratios pair each run with its baseline from the same invocation.",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in facts.items()),
        f"- run time: {elapsed_s:.0f} s",
        "",
        "## Command",
        "",
        "```",
        "bench/run",
        "```",
        "",
    ]
    for name, rows in sections:
        lines.append(render(rows, title=name))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
