"""`node-ping diagnose`: read the loss and latency matrix from Prometheus and name what is broken.

Settings (config) -> queries over the HTTP client (queries, prometheus) -> the pure analysis
(analysis) -> text or JSON (render). Exit codes: 0 healthy, 1 faults found, 2 a bad setting,
Prometheus unreachable, refusing, answering with an error or not Prometheus, or no data.
With --publish-events the same diagnosis runs in a loop until stopped (publish, events).
Credentials may sit in this command's values, so it installs no crash handler that prints locals.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import click

from node_ping.diagnose import config
from node_ping.diagnose.address import Address
from node_ping.diagnose.analysis import Thresholds
from node_ping.diagnose.analysis import diagnose as analyse
from node_ping.diagnose.render import Report, render_json, render_text
from node_ping.settings import EXIT_USAGE, Command, env, options

if TYPE_CHECKING:
    from node_ping.diagnose.prometheus import Prometheus

EXIT_HEALTHY, EXIT_FAULTS, EXIT_ERROR = 0, 1, EXIT_USAGE


def _warn(prometheus: Prometheus) -> None:
    for warning in prometheus.warnings:
        click.echo(f"node-ping diagnose: warning from Prometheus, the data may be incomplete: {warning}", err=True)


def diagnosis(prometheus: Prometheus, window: str, thresholds: Thresholds, at: float) -> Report:
    """One diagnosis over the `window` ending at `at`: the one-shot's and each loop's of --publish-events.
    PrometheusError (NoDataError among them) when Prometheus gives nothing to diagnose."""
    from node_ping.diagnose.queries import check_data, fetch_matrix  # noqa: PLC0415  (see diagnose())

    matrix = fetch_matrix(prometheus, window, at, thresholds)
    check_data(matrix, prometheus, window, at)
    return Report(matrix, analyse(matrix, thresholds), thresholds, window, at, prometheus.url,
                  tuple(prometheus.warnings))


@click.command(cls=Command, help="Read node-ping data from Prometheus and name the faulty node or link.")
@options(*config.SETTINGS)
def diagnose(**values: Any) -> int:
    # Imported here so that `node-ping --help` and the prober do not load the HTTP client.
    from node_ping.diagnose.prometheus import Prometheus, PrometheusError  # noqa: PLC0415

    address: Address = values["prometheus"]
    window: str = values["range"]
    # httpx logs every request at INFO; stderr is for the user's messages here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    headers = config.request_headers(values["header"], env(config.HEADERS_ENV, "") or "", values["bearer_token_file"],
                                     basic_auth=address.basic_auth is not None)
    thresholds = Thresholds(loss_ratio=values["loss_threshold"] / 100, latency_ms=values["latency_threshold"],
                            node_loss_ratio=values["node_loss_threshold"] / 100)
    with Prometheus(address, values["timeout"], headers) as prometheus:
        if values["publish_events"]:
            from node_ping.diagnose.publish import serve  # noqa: PLC0415  (loads the Kubernetes client's helpers)

            def each(at: float) -> Report:
                prometheus.warnings.clear()  # each loop reports its own
                return diagnosis(prometheus, window, thresholds, at)

            return serve(values, each, prometheus.url)
        at: float = values["time"] if values["time"] is not None else time.time()
        try:
            report = diagnosis(prometheus, window, thresholds, at)
        except PrometheusError as err:
            _warn(prometheus)
            click.echo(f"node-ping diagnose: {err}", err=True)
            return EXIT_ERROR
        _warn(prometheus)
    click.echo(render_json(report) if values["output"] == "json" else render_text(report), nl=False)
    return EXIT_HEALTHY if report.healthy else EXIT_FAULTS
