"""Command line: `node-ping run|once|health|discover|diagnose`.

Every `run` setting can come from an env var (how the DaemonSet sets it) or a flag (which wins).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from node_ping import __version__, diagnose, discover
from node_ping.config import Settings, SettingsError, env, parse_listen_address
from node_ping.signals import stop_on_signals

INTERRUPTED = 130
"""Exit code of `once` stopped by a signal, as shells report a command ended by Ctrl-C."""

log = logging.getLogger("node_ping")

EXAMPLES = Path(__file__).parent / "examples"


def _env_int(name: str, default: int) -> int:
    text = env(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not a whole number") from None


def _add_probe_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--node-name", default=env("MY_NODE_NAME"), help="this node's name (env MY_NODE_NAME)")
    add("--config", type=Path, default=Path(env("NODE_PING_CONFIG", "/config/nodes.json") or ""),
        help="JSON list of {name, ipAddress[, zone]} (env NODE_PING_CONFIG; default %(default)s)")
    add("--external-config", type=Path,
        default=Path(env("NODE_PING_EXTERNAL_CONFIG", "/config/external.json") or ""),
        help="JSON list of {name, host}; a missing file means none (env NODE_PING_EXTERNAL_CONFIG; "
             "default %(default)s)")
    add("--count", type=int, default=None, help="pings per target per cycle (env NODE_PING_COUNT; default 30)")
    add("--period-ms", type=int, default=None,
        help="milliseconds between two pings to one target (env NODE_PING_PERIOD_MS; default 1000)")
    add("--topology", default=env("NODE_PING_TOPOLOGY", "full"), choices=("full", "zone"),
        help="full: probe every node; zone: every node of the own zone plus k per other zone "
             "(env NODE_PING_TOPOLOGY; default %(default)s)")
    add("--peers-per-zone", type=int, default=None,
        help="k for --topology zone (env NODE_PING_PEERS_PER_ZONE; default 3)")
    add("--fping", default=env("NODE_PING_FPING", "fping"),
        help="fping binary (env NODE_PING_FPING; default %(default)s)")
    add("-v", "--verbose", action="store_true", help="log every cycle")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="node-ping", description="Probe every other Kubernetes node with fping and export Prometheus "
                                      "metrics to node-exporter's textfile collector.")
    parser.add_argument("--version", action="version", version=f"node-ping {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="the DaemonSet loop (default)")
    _add_probe_options(run)
    run.add_argument("--textfile-dir", type=Path, default=env("PROMETHEUS_TEXTFILE_DIR"),
                     help="node-exporter's textfile directory (env PROMETHEUS_TEXTFILE_DIR)")
    run.add_argument("--prefix", default=env("PROMETHEUS_TEXTFILE_PREFIX", "node-ping_"),
                     help="file name prefix (env PROMETHEUS_TEXTFILE_PREFIX; default %(default)s)")
    run.add_argument("--cycles", type=int, default=None, help="stop after N cycles (default: run forever)")
    run.add_argument("--listen-address", default=env("NODE_PING_LISTEN_ADDRESS"),
                     help="also serve /metrics over HTTP: :9797 (every interface, IPv4 and IPv6), 127.0.0.1:9797 "
                          "or [::1]:9797 (env NODE_PING_LISTEN_ADDRESS)")
    run.add_argument("--health-file", type=Path, default=env("NODE_PING_HEALTH_FILE"),
                     help="touched after every successful cycle, for `node-ping health` "
                          "(env NODE_PING_HEALTH_FILE)")

    once = commands.add_parser("once", help="run one cycle and print the metrics")
    _add_probe_options(once)
    once.add_argument("--example", action="store_true",
                      help="probe the built-in loopback example (127.0.0.1, 127.0.0.2, ::1, localhost)")

    health = commands.add_parser("health", help="exit 0 if a cycle succeeded recently (liveness probe)")
    health.add_argument("--health-file", type=Path, default=env("NODE_PING_HEALTH_FILE"),
                        help="the file `run --health-file` touches (env NODE_PING_HEALTH_FILE)")
    health.add_argument("--max-age", type=_seconds, required=True, help="seconds since the last successful cycle")
    for sub in (run, once, health):
        sub.set_defaults(command_parser=sub)  # errors found after parsing show this command's usage

    for name, module, help_text in (
        ("discover", discover, "keep the nodes.json ConfigMap in step with the cluster's nodes"),
        ("diagnose", diagnose, "read node-ping data from Prometheus and name the faulty node or link"),
    ):
        sub = commands.add_parser(name, help=help_text)
        module.configure_parser(sub)
        sub.set_defaults(handler=module.run)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    example = getattr(args, "example", False)
    node_name = args.node_name or ("example" if example else None)
    listen = getattr(args, "listen_address", None)
    return Settings(
        node_name=node_name or "",
        textfile_dir=getattr(args, "textfile_dir", None),
        prefix=getattr(args, "prefix", "node-ping_"),
        config_path=EXAMPLES / "nodes.json" if example else args.config,
        external_config_path=EXAMPLES / "external.json" if example else args.external_config,
        count=args.count if args.count is not None else _env_int("NODE_PING_COUNT", 30 if not example else 5),
        period_ms=args.period_ms if args.period_ms is not None else _env_int(
            "NODE_PING_PERIOD_MS", 1000 if not example else 200),
        cycles=1 if args.command == "once" else getattr(args, "cycles", None),
        listen=parse_listen_address(listen) if listen else None,
        health_file=getattr(args, "health_file", None),
        topology=args.topology,
        peers_per_zone=args.peers_per_zone if args.peers_per_zone is not None else _env_int(
            "NODE_PING_PEERS_PER_ZONE", 3),
        fping=args.fping,
    )


def _health(args: argparse.Namespace) -> int:
    if args.health_file is None:
        print("node-ping health: set --health-file or NODE_PING_HEALTH_FILE", file=sys.stderr)
        return 2
    try:
        age = time.time() - args.health_file.stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: {args.health_file} does not exist: no cycle has succeeded yet", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"unhealthy: cannot read {args.health_file}: {err.strerror or err}", file=sys.stderr)
        return 1
    if age < -args.max_age:
        # The clock went back: every working cycle would have touched the file since.
        print(f"unhealthy: {args.health_file} is dated {-age:.0f} s in the future (limit {args.max_age:g} s): "
              "no cycle has succeeded since the clock was set back", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"unhealthy: last successful cycle {age:.0f} s ago (limit {args.max_age:g} s)", file=sys.stderr)
        return 1
    print(f"healthy: last successful cycle {max(age, 0):.0f} s ago")
    return 0


def _probe(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here so `node-ping --help` and `health` stay fast and light.
    from node_ping.loop import Prober, run  # noqa: PLC0415
    from node_ping.metrics import SnapshotCollector, new_registry, render  # noqa: PLC0415
    from node_ping.serve import serve_metrics  # noqa: PLC0415
    from node_ping.textfile import output_path, remove_stale  # noqa: PLC0415

    log.info("node-ping %s starting: %s", __version__, settings)
    stop = stop_on_signals()
    own_file = output_path(settings.textfile_dir, settings.prefix, settings.node_name) \
        if settings.textfile_dir is not None else None
    prober = Prober(settings, last_success_ts=_previous_last_success(own_file, settings.node_name))
    collector = SnapshotCollector(prober.snapshot)
    prober.on_snapshot = lambda snapshot: setattr(collector, "snapshot", snapshot)

    # The port first: an instance that cannot start must not have removed anybody's file.
    if settings.listen is not None:
        try:
            _, where = serve_metrics(settings.listen, new_registry(collector))
        except OSError as err:
            print(f"node-ping: error: cannot serve metrics on {args.listen_address}: "
                  f"{err.strerror or err}; choose another --listen-address", file=sys.stderr)
            return 2
        log.info("serving metrics on %s", where)
    if settings.textfile_dir is not None:
        try:
            for path in remove_stale(settings.textfile_dir, settings.prefix, keep=own_file):
                log.info("removed stale file %s from an earlier run", path)
        except OSError as err:
            log.warning("cannot clean up %s: %s", settings.textfile_dir, err)

    code = run(prober, stop, prober.touch_health)
    if args.command == "once":
        if stop.is_set():
            return INTERRUPTED  # a cut-short cycle has nothing worth printing
        try:
            sys.stdout.write(render(prober.snapshot))
            sys.stdout.flush()
        except OSError as err:
            print(f"node-ping once: cannot write the metrics to stdout: {err.strerror or err}", file=sys.stderr)
            return 1
    return code


def _previous_last_success(own_file: Path | None, node_name: str) -> float | None:
    """The last success the previous instance on this node wrote, if its file is there."""
    from node_ping.metrics import last_success_in  # noqa: PLC0415  (see _probe)

    if own_file is None:
        return None
    try:
        return last_success_in(own_file.read_text(encoding="utf-8", errors="replace"), node_name)
    except OSError:
        return None


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (NaN compares false with everything: never unhealthy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds above 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    if not raw or (raw[0].startswith("-") and raw[0] not in ("-h", "--help", "--version")):
        raw.insert(0, "run")  # `node-ping` alone, or with run's flags, means `node-ping run`
    args = parser.parse_args(raw)
    if args.command != "diagnose":
        # A crash prints a readable traceback with the values of local variables. Not for
        # diagnose, whose locals may hold Prometheus credentials.
        import better_exchook  # noqa: PLC0415

        better_exchook.install()
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "health":
        return _health(args)
    if hasattr(args, "handler"):
        return int(args.handler(args))
    try:
        settings = _settings(args)
        if args.command == "run" and settings.textfile_dir is None and settings.listen is None:
            raise SettingsError("nowhere to put the metrics: set PROMETHEUS_TEXTFILE_DIR or --textfile-dir "
                                "(and/or --listen-address)")
    except SettingsError as err:
        args.command_parser.error(str(err))
    return _probe(args, settings)
