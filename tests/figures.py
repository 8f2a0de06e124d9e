"""Figures of the adversarial suite: what was tried, what was refused, what broke.

Each adversarial test adds a row (an "area": one attack family) through the session-scoped
`security_figures` fixture. At the end of the session the rows are written to
test-output/security-figures.json, which scripts/security-report renders as the table that
.ci/run prints last. Counts add up when several tests report the same area; measurements
(latencies, durations) are kept per test under `measures`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FIGURES_FILE = Path("test-output") / "security-figures.json"


@dataclass
class AreaFigures:
    """Counters for one attack family. Invariants are asserted by the tests themselves;
    these numbers only report what the assertions covered."""

    inputs: int = 0  # hostile inputs or faults tried
    refused: int = 0  # answered with the documented refusal (4xx, close code, error)
    server_errors: int = 0  # 5xx that were NOT the documented answer (must stay 0)
    state_changes: int = 0  # store/upstream changes caused by refused inputs (must stay 0)
    leaks: int = 0  # secrets found in outputs (must stay 0)
    faults_survived: int = 0  # injected dependency faults after which service recovered
    measures: dict[str, float | int | str] = field(default_factory=dict)


class SecurityFigures:
    def __init__(self) -> None:
        self.areas: dict[str, AreaFigures] = {}
        # Areas every run reports (the leak scanner): alone they do not replace the last file.
        self.background: set[str] = set()

    def add_background(
        self, area: str, *, inputs: int = 0, leaks: int = 0, **measures: float | int | str
    ) -> None:
        """Like add(), for an area that runs with every test, adversarial or not."""
        self.background.add(area)
        self.add(area, inputs=inputs, leaks=leaks)
        self.areas[area].measures.update(measures)

    def add(
        self,
        area: str,
        *,
        inputs: int = 0,
        refused: int = 0,
        server_errors: int = 0,
        state_changes: int = 0,
        leaks: int = 0,
        faults_survived: int = 0,
        **measures: float | int | str,
    ) -> None:
        row = self.areas.setdefault(area, AreaFigures())
        row.inputs += inputs
        row.refused += refused
        row.server_errors += server_errors
        row.state_changes += state_changes
        row.leaks += leaks
        row.faults_survived += faults_survived
        row.measures.update(measures)

    def write(self, path: Path = FIGURES_FILE) -> None:
        if not set(self.areas) - self.background:
            return  # a partial run (-k ...) without adversarial tests keeps the last file
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = {name: asdict(row) for name, row in sorted(self.areas.items())}
        path.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
