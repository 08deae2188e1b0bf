"""The summary CSV of a batch run: one row per case (case, status, seconds, output, error)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..io import write_atomic
from .apply import CaseResult

__all__ = ["BatchSummary", "write_summary"]

COLUMNS = ("case", "status", "seconds", "output", "error")


@dataclass
class BatchSummary:
    """The outcome of a batch run.

    Attributes:
        results: One :class:`CaseResult` per case, in cohort order.
        path: The summary CSV written.
        seconds: Wall time of the run (cluster start included).
    """

    results: list[CaseResult] = field(default_factory=list)
    path: Path | None = None
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Cases per status: ``{"done": 6, "skipped": 1, "failed": 1}``."""
        c = Counter(r.status for r in self.results)
        return {s: c.get(s, 0) for s in ("done", "skipped", "failed")}

    def failed(self) -> list[CaseResult]:
        """The failed cases."""
        return [r for r in self.results if r.status == "failed"]

    def describe(self) -> str:
        """One line: ``8 cases: 6 done, 1 skipped, 1 failed in 42.0 s``."""
        n = self.counts()
        return (f"{len(self.results)} cases: {n['done']} done, {n['skipped']} skipped, "
                f"{n['failed']} failed in {self.seconds:.1f} s")  # fmt: skip


def write_summary(path: str | Path, results: list[CaseResult]) -> Path:
    """Write the summary CSV atomically; returns its path."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in results:
        w.writerow((r.case, r.status, f"{r.seconds:.2f}", r.output, r.error))
    p = Path(path)
    write_atomic(p, lambda tmp: tmp.write_text(buf.getvalue()), ".csv")
    return p
