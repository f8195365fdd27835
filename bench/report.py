"""Rows of the bench table and how they print."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One measured number, with the baseline it is compared to (if any) and the target for the ratio.

    ``higher_is_better`` says which way the ratio should go: throughput ratios must reach the target,
    latency ratios must stay under it.
    """

    part: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline

    @property
    def verdict(self) -> str:
        """``met`` / ``MISSED`` against the target, or empty when there is none."""
        if self.target is None:
            return ""
        measured = self.ratio if self.baseline is not None else self.value
        if measured is None:
            return ""
        ok = measured >= self.target if self.higher_is_better else measured <= self.target
        return "met" if ok else "MISSED"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        sign = ">=" if self.higher_is_better else "<="
        suffix = "x" if self.baseline is not None else f" {self.unit}"
        return f"{sign} {self.target:g}{suffix}"


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs/performance.md)."""
    header = ["part", "metric", "inferno-jobs", "baseline", "ratio", "target", "", "notes"]
    lines = [header]
    for r in rows:
        lines.append([r.part, r.metric, f"{_num(r.value)} {r.unit}",
                      f"{_num(r.baseline)} {r.unit}" if r.baseline is not None else "",
                      f"{r.ratio:.2f}x" if r.ratio is not None else "", r.target_text(), r.verdict, r.note])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
