"""Nodes with no current data of their own: silent (others ping them, they report nothing) and
stale (their data stopped before the end of the range), named with what their own metrics say
about their prober (pure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet

from node_ping import contract
from node_ping.diagnose.matrix import PROBER_FAILING, PROBER_RUNNING, PROBER_STOPPED, Prober, natural_key
from node_ping.diagnose.verdicts import NODE_SILENT, NODE_STALE, Verdict
from node_ping.diagnose.wording import ago


def _errors_hint(node: str, prober: Prober) -> str:
    """Where to look for why a prober fails: its error counters, with the kinds that rose, and its log."""
    rose = ", ".join(f"{kind} +{round(count)}" for kind, count in sorted(prober.errors.items()) if round(count) > 0)
    counters = f'{contract.ERRORS.name}{{{contract.SOURCE}="{node}"}}'
    return f"{counters} ({rose} in the range) and its log" if rose else f"{counters} and its log"


def _since_summary(prober: Prober) -> dict[str, float]:
    """stopped_seconds_before_end for a prober whose last success is too old, as for stale nodes."""
    if prober.state in (PROBER_STOPPED, PROBER_FAILING) and prober.since_success_s is not None:
        return {"stopped_seconds_before_end": round(prober.since_success_s, 3)}
    return {}


def silent(sources: AbstractSet[str], destinations: AbstractSet[str], stale: Mapping[str, float | None],
           prober_of: Callable[[str], Prober]) -> list[Verdict]:
    """Nodes others ping that report no ping data themselves; what their own metrics say decides
    whether their exporter is not there at all, or there but not producing data."""
    verdicts = []
    for node in sorted(destinations - sources - set(stale), key=natural_key):
        prober = prober_of(node)
        runs = f"node {node}'s prober runs and is scraped but has produced no ping data (other nodes ping it)"
        if prober.state == PROBER_FAILING:
            message = (f"{runs}: none of its cycles succeeded in the {ago(prober.since_success_s or 0.0)} "
                       f"before the end of the range; see {_errors_hint(node, prober)}")
        elif prober.state == PROBER_RUNNING:
            message = f"{runs}: it is starting, or has nothing to probe; see {_errors_hint(node, prober)}"
        elif prober.state == PROBER_STOPPED:
            message = (f"node {node} reports no ping data of its own (other nodes ping it), and its node-ping "
                       f"metrics stopped changing {ago(prober.since_success_s or 0.0)} before the end of "
                       "the range (its last successful cycle or its start-up): check its node-ping pod and "
                       "its logs")
        else:
            message = (f"node {node} reports no node-ping data at all (other nodes ping it): check that its "
                       "node-ping pod runs and that Prometheus scrapes its node-exporter")
        verdicts.append(Verdict(NODE_SILENT, (node,), message, summary=_since_summary(prober)))
    return verdicts

def stale(stale_nodes: Mapping[str, float | None], prober_of: Callable[[str], Prober]) -> list[Verdict]:
    """Nodes whose own data stopped before the end of the range; their rows were left out."""
    verdicts = []
    for node in sorted(stale_nodes, key=natural_key):
        since, prober = stale_nodes[node], prober_of(node)
        if since is None:
            message = (f"node {node} stopped reporting before the end of the range: its node-ping series end "
                       "early (the node, its node-ping pod or its node-exporter is down, or no longer "
                       "scraped); its row is left out")
        elif prober.state == PROBER_FAILING:
            message = (f"node {node}'s prober runs and is scraped, but none of its cycles succeeded in the "
                       f"{ago(since)} before the end of the range: see {_errors_hint(node, prober)}; its row "
                       "is left out")
        else:
            message = (f"node {node} stopped reporting {ago(since)} before the end of the range (its last "
                       "successful node-ping cycle), while its old numbers are still scraped: check its "
                       "node-ping pod and its logs; its row is left out")
        summary = {} if since is None else {"stopped_seconds_before_end": round(since, 3)}
        verdicts.append(Verdict(NODE_STALE, (node,), message, summary=summary))
    return verdicts
