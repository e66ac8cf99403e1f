#!/usr/bin/env bash
# Set up, then run the linters and the whole test suite (as root: the tests build network
# namespaces). Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parse`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
