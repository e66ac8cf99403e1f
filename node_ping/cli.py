"""The `node-ping` command group: dispatch only. `node-ping` alone, or with run's flags, means `node-ping run`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from click_default_group import DefaultGroup

from node_ping import __version__
from node_ping.diagnose.command import diagnose
from node_ping.discover.command import discover
from node_ping.probe.command import INTERRUPTED, health, once, run


class _DefaultRun(DefaultGroup):
    """`node-ping` alone or followed by an option runs `run`; a word that names no command is an error,
    not an option of `run`."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and not cmd_name.startswith("-"):
            return None
        return super().get_command(ctx, cmd_name)


@click.group(cls=_DefaultRun, default="run", default_if_no_args=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
             help="Probe every other Kubernetes node with fping and export Prometheus metrics to "
                  "node-exporter's textfile collector.")
@click.version_option(__version__, "--version", prog_name="node-ping", message="%(prog)s %(version)s")
def cli() -> None:
    pass


cli.add_command(run)
cli.add_command(once)
cli.add_command(health)
cli.add_command(discover)
cli.add_command(diagnose)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code (2 for every bad setting)."""
    try:
        result: Any = cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="node-ping",
                               standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        # Ctrl-C outside a prober's own signal handling (diagnose, discover's start-up): the shell's
        # code for it, never 1, which diagnose uses for "faults found".
        return INTERRUPTED
    return int(result or 0)
