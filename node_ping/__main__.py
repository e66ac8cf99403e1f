"""`python -m node_ping` runs the same command line as the `node-ping` script."""

import sys

from node_ping.cli import main

sys.exit(main())
