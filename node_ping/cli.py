"""The `node-ping` command group: dispatch only. `node-ping` alone, or with run's flags, means `node-ping run`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click
from click_default_group import DefaultGroup

from node_ping import __version__
from node_ping.probe.command import health, once, run
from node_ping.settings import Command


@click.group(cls=DefaultGroup, default="run", default_if_no_args=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
             help="Probe every other Kubernetes node with fping and export Prometheus metrics to "
                  "node-exporter's textfile collector.")
@click.version_option(__version__, "--version", prog_name="node-ping", message="%(prog)s %(version)s")
def cli() -> None:
    pass


cli.add_command(run)
cli.add_command(once)
cli.add_command(health)


def _argparse_command(name: str, help_text: str) -> click.Command:
    @click.command(name, cls=Command, help=help_text, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def command(argv: tuple[str, ...]) -> int:
        if name == "discover":
            import better_exchook  # noqa: PLC0415

            from node_ping.discover import command as module  # noqa: PLC0415

            better_exchook.install()
        else:
            from node_ping.diagnose import command as module  # type: ignore[no-redef]  # noqa: PLC0415
        parser = argparse.ArgumentParser(prog=f"node-ping {name}")
        module.configure_parser(parser)
        args = parser.parse_args(list(argv))
        logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        return int(module.run(args))

    return command


cli.add_command(_argparse_command("discover", "Keep the nodes.json ConfigMap in step with the cluster's nodes."))
cli.add_command(_argparse_command("diagnose", "Read node-ping data from Prometheus and name the faulty node or link."))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code (2 for every bad setting)."""
    try:
        result: Any = cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="node-ping",
                               standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return int(result or 0)
