"""Reading exposition text back, with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Series = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name -> [(labels, value)]."""


def families(text: str) -> Series:
    """Sample name -> [(labels, value)], parsed back with prometheus_client's own parser."""
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append((sample.labels, sample.value))
    return series


def by_destination(series: Series, metric: str) -> dict[str, float]:
    """Destination node (or external target name) -> value of `metric`."""
    return {labels.get("destination_node", labels.get("destination_name", "")): value
            for labels, value in series.get(metric, [])}
