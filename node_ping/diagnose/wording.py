"""How numbers read in messages and reports: percentages, spans of values, lengths of time, times."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime


def pct(ratio: float) -> str:
    """0.3 -> 30.0%."""
    return f"{ratio * 100:.1f}%"


def span(values: Sequence[float], fmt: str, unit: str) -> str:
    """The lowest and highest value as shown (20.0-30.0%), one value when they read the same."""
    low, high = min(values), max(values)
    if f"{low:{fmt}}" == f"{high:{fmt}}":
        return f"{low:{fmt}}{unit}"
    return f"{low:{fmt}}-{high:{fmt}}{unit}"


def ago(seconds: float) -> str:
    """30s, 10m, 2h5m: whole units, as a person reads a time span."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def loss_span(ratios: Sequence[float]) -> str:
    return span([r * 100 for r in ratios], ".1f", "%")


def ms_span(values: Sequence[float]) -> str:
    return span(values, ".1f", " ms")


def iso(at: float) -> str:
    """A unix time as messages and reports show it: 2023-11-14 22:13:20 UTC."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
