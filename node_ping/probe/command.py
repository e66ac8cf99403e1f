"""`node-ping run | once | health`: the DaemonSet's prober, one cycle of it, and its liveness probe."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from node_ping import __version__, logs
from node_ping.contract import POD_PATH
from node_ping.probe import config
from node_ping.probe.config import ListenAddress, Settings
from node_ping.settings import EXIT_USAGE, Command, SettingsError, options

INTERRUPTED = 130
"""Exit code of `once` stopped by a signal, as shells report a command ended by Ctrl-C."""

STOP_GRACE_S = 1.5
"""A stop signal ends the prober within 2 s, even when its main thread is stuck (see signals)."""


log = logging.getLogger("node_ping")


def _settings(values: dict[str, Any], *, cycles: int | None, example: bool = False) -> Settings:
    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    pod_path = values["path"] == POD_PATH
    return Settings(
        node_name=values["node_name"] or ("example" if example else ""),
        textfile_dir=values.get("textfile_dir"),
        # Two probers of a node never share a file unless told to.
        prefix=values["prefix"] if "prefix" in values and (given("prefix") or not pod_path) else
        config.POD_PREFIX if pod_path else config.PREFIX.default,
        config_path=config.EXAMPLES / "nodes.json" if example else values["config"],
        external_config_path=config.EXAMPLES / "external.json" if example else values["external_config"],
        count=values["count"] if given("count") or not example else config.EXAMPLE_COUNT,
        period_ms=values["period_ms"] if given("period_ms") or not example else config.EXAMPLE_PERIOD_MS,
        cycles=cycles,
        listen=values.get("listen_address"),
        health_file=values.get("health_file"),
        topology=values["topology"],
        peers_per_zone=values["peers_per_zone"],
        fping=values["fping"],
        mtu=values["mtu"],
        path=values["path"],
    )


@click.command(cls=Command, help="The DaemonSet loop (the default command).")
@options(*config.RUN_SETTINGS)
def run(**values: Any) -> int:
    logs.setup(values["verbose"])
    settings = _settings(values, cycles=values["cycles"])
    if settings.textfile_dir is None and settings.listen is None:
        raise SettingsError(f"nowhere to put the metrics: set {config.TEXTFILE_DIR.env} or "
                            f"{config.TEXTFILE_DIR.flag} (and/or {config.LISTEN_ADDRESS.flag})")
    return _probe(settings, once=False)


@click.command(cls=Command, help="Run one cycle and print the metrics.")
@options(*config.ONCE_SETTINGS)
def once(**values: Any) -> int:
    logs.setup(values["verbose"])
    return _probe(_settings(values, cycles=1, example=values["example"]), once=True)


@click.command(cls=Command, help="Exit 0 if a cycle succeeded recently (the liveness probe).")
@options(*config.HEALTH_SETTINGS)
def health(health_file: Path | None, max_age: float) -> int:
    if health_file is None:
        raise SettingsError(f"set {config.HEALTH_FILE.flag} or {config.HEALTH_FILE.env}")
    try:
        age = time.time() - health_file.stat().st_mtime
    except FileNotFoundError:
        click.echo(f"unhealthy: {health_file} does not exist: no cycle has succeeded yet", err=True)
        return 1
    except OSError as err:
        click.echo(f"unhealthy: cannot read {health_file}: {err.strerror or err}", err=True)
        return 1
    if age < -max_age:
        # The clock went back: every working cycle would have touched the file since.
        click.echo(f"unhealthy: {health_file} is dated {-age:.0f} s in the future (limit {max_age:g} s): "
                   "no cycle has succeeded since the clock was set back", err=True)
        return 1
    if age > max_age:
        click.echo(f"unhealthy: last successful cycle {age:.0f} s ago (limit {max_age:g} s)", err=True)
        return 1
    click.echo(f"healthy: last successful cycle {max(age, 0):.0f} s ago")
    return 0


def _probe(settings: Settings, *, once: bool) -> int:
    # Imported here so `node-ping --help` and `health` stay fast and light.
    from node_ping.probe import fping  # noqa: PLC0415
    from node_ping.probe.cycle import Prober, run  # noqa: PLC0415
    from node_ping.probe.export import SnapshotCollector, new_registry, render  # noqa: PLC0415
    from node_ping.probe.serve import serve_metrics  # noqa: PLC0415
    from node_ping.probe.textfile import claim, output_path, release, remove_stale  # noqa: PLC0415
    from node_ping.signals import stop_on_signals  # noqa: PLC0415

    log.info("node-ping %s starting: %s", __version__, settings)
    stop = stop_on_signals(STOP_GRACE_S, exit_code=INTERRUPTED if once else 0, on_overdue=fping.kill_running)
    own_file = output_path(settings.textfile_dir, settings.prefix, settings.node_name) \
        if settings.textfile_dir is not None else None
    prober = Prober(settings, last_success_ts=_previous_last_success(own_file, settings))
    collector = SnapshotCollector(prober.snapshot)
    prober.on_snapshot = lambda snapshot: setattr(collector, "snapshot", snapshot)

    # The port first: an instance that cannot start must not have removed anybody's file.
    if settings.listen is not None:
        try:
            _, where = serve_metrics(settings.listen, new_registry(collector))
        except OSError as err:
            click.echo(f"node-ping: error: cannot serve metrics on {_shown(settings.listen)}: "
                       f"{err.strerror or err}; choose another {config.LISTEN_ADDRESS.flag}", err=True)
            return EXIT_USAGE
        log.info("serving metrics on %s", where)
    if settings.textfile_dir is not None:
        try:
            for path in remove_stale(settings.textfile_dir, settings.prefix, keep=own_file):
                log.info("removed stale file %s from an earlier run", path)
        except OSError as err:
            log.warning("cannot clean up %s: %s", settings.textfile_dir, err)
    if own_file is not None:
        # One writer per file: another node-ping of this node (a surge, a release with the same
        # prefix) leaves it to us while we run, and we to it while it does.
        claim(own_file)

    try:
        code = run(prober, stop, prober.touch_health)
    finally:
        if own_file is not None:
            release(own_file)  # a node-ping waiting for our file (a surge) takes over at its next cycle
    if once:
        if stop.is_set():
            return INTERRUPTED  # a cut-short cycle has nothing worth printing
        try:
            sys.stdout.write(render(prober.snapshot))
            sys.stdout.flush()
        except OSError as err:
            click.echo(f"node-ping once: cannot write the metrics to stdout: {err.strerror or err}", err=True)
            return 1
    return code


def _shown(listen: ListenAddress) -> str:
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return f"{host}:{listen.port}"


def _previous_last_success(own_file: Path | None, settings: Settings) -> float | None:
    """The last success the previous instance on this node wrote, if its file is there."""
    from node_ping.probe.export import last_success_in  # noqa: PLC0415  (see _probe)
    from node_ping.probe.textfile import read_text  # noqa: PLC0415

    if own_file is None:
        return None
    try:
        # Not through a link: others may write to the directory, and node-ping reads as root.
        return last_success_in(read_text(own_file), settings.node_name, settings.pod_path)
    except OSError:
        return None
