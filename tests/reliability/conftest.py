"""The fault suite's report: one row per (link, scenario), printed after the run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest


@dataclass
class FaultRow:
    link: str
    scenario: str
    what: str
    cycles: int = 0
    crashes: int = 0
    max_detect_s: float = 0.0
    max_recovery_s: float = 0.0
    rss_growth_kib: int = 0
    secret_hits: int = 0  # secret values in log records (INFO+), status changes, metrics
    records_scanned: int = 0
    detects: list[float] = field(default_factory=list, repr=False)
    recoveries: list[float] = field(default_factory=list, repr=False)

    def add(self, detect_s: float, recovery_s: float) -> None:
        self.cycles += 1
        self.detects.append(detect_s)
        self.recoveries.append(recovery_s)
        self.max_detect_s = max(self.max_detect_s, detect_s)
        self.max_recovery_s = max(self.max_recovery_s, recovery_s)


@dataclass
class Report:
    rows: list[FaultRow] = field(default_factory=list)


_REPORT = Report()


@pytest.fixture
def fault_report() -> Iterator[Report]:
    yield _REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = [r for r in _REPORT.rows if r.cycles]
    if not rows:
        return
    tr = terminalreporter
    tr.section("link fault scenarios")
    tr.write_line(
        f"{'link':<9}{'scenario':<24}{'cycles':>7}{'crashes':>8}"
        f"{'max detect s':>13}{'max recovery s':>15}{'RSS growth KiB':>15}{'secret hits':>12}"
    )
    for r in rows:
        tr.write_line(
            f"{r.link:<9}{r.scenario:<24}{r.cycles:>7}{r.crashes:>8}"
            f"{r.max_detect_s:>13.2f}{r.max_recovery_s:>15.2f}{r.rss_growth_kib:>15}"
            f"{r.secret_hits:>12}"
        )
    path = os.environ.get("FIELD_AGENT_FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(asdict(r)) + "\n")
