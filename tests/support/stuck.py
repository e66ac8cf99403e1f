"""`python -m tests.support.stuck FIFO [node-ping arguments]`: node-ping whose main thread gets stuck
in a system call, as on a config path that is a FIFO or on a hung mount.

Reading the node list first opens FIFO, which nobody ever opens for writing: open() blocks in the
kernel for good. With `--no-handlers-run` the stop signals are also blocked in the main thread
before that, so no Python signal handler can run there either, as in an uninterruptible wait (a
hung NFS mount). This way the block does not depend on what node-ping itself accepts as a config
path.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from node_ping import cli, signals
from node_ping.probe import cycle
from node_ping.targets import NodeTarget, TargetList, read_nodes

READY = "tests.support.stuck: opening the FIFO"


def main(argv: list[str]) -> int:
    fifo, *rest = argv
    no_handlers = "--no-handlers-run" in rest
    args = [arg for arg in rest if arg != "--no-handlers-run"]

    def stuck_read(path: Path, setting: str) -> TargetList[NodeTarget]:
        if no_handlers:
            signal.pthread_sigmask(signal.SIG_BLOCK, signals.STOP_SIGNALS)
        # Past this line the block is certain, whenever a signal comes: tests wait for it.
        sys.stderr.write(f"{READY}\n")
        sys.stderr.flush()
        with open(fifo, "rb"):  # blocks: no writer ever comes
            pass
        return read_nodes(path, setting)

    setattr(cycle, "read_nodes", stuck_read)  # noqa: B010  (cycle imported the name)
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
