"""A process of another user that holds abstract unix socket names, as anyone on a node can.

Run as root (`python -m tests.support.squatter --uid 65534 NAME...`): it drops to the uid before it
makes its sockets, so they are that user's, binds each name (listening on it with `--listen`),
prints "ready" and holds them until its stdin closes. Dropping in-process rather than through
setpriv keeps the virtualenv's interpreter, which other users may not be able to reach.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

from tests.support.processes import PYTHON, REPO, stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--listen", action="store_true")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    os.setgroups([])
    os.setresgid(args.uid, args.uid, args.uid)
    os.setresuid(args.uid, args.uid, args.uid)
    held = []
    for name in args.names:
        held.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        held[-1].bind("\0" + name)
        if args.listen:
            held[-1].listen(0)  # and never accept
    print("ready", flush=True)
    sys.stdin.read()


@contextlib.contextmanager
def squatting(prefix: Sequence[str], addresses: Sequence[str], *, uid: int,
              listen: bool) -> Iterator[subprocess.Popen[str]]:
    """Hold `addresses` (abstract, leading NUL) as `uid`, started through `prefix` (e.g. `ip netns
    exec NS`); yields the process, whose pid is the holder's."""
    argv = [*prefix, PYTHON, "-m", "tests.support.squatter", "--uid", str(uid), *(["--listen"] if listen else []),
            *(address.lstrip("\0") for address in addresses)]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n", "the squatter did not bind its names"
        yield process
    finally:
        stop(process)


if __name__ == "__main__":
    main()
