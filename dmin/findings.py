"""What `verify`'s checks record: findings that name a file, and counts of what was checked.

Below both `verify` (which runs every check) and `index` (whose index checks live next to the code that builds it),
so the two import it and neither imports the other's internals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    severity: str  # "defect" | "warning"
    check: str
    file: str
    message: str


@dataclass
class Findings:
    """A check run's record: a `defect` fails verification (exit 1), a `warning` is reported (exit 0)."""

    deep: bool
    findings: list[Finding] = field(default_factory=list)
    checked: Counter[str] = field(default_factory=Counter)

    def defect(self, check: str, file: str, message: str) -> None:
        self.findings.append(Finding("defect", check, file, message))

    def warn(self, check: str, file: str, message: str) -> None:
        self.findings.append(Finding("warning", check, file, message))
