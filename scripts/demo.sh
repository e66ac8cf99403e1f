#!/usr/bin/env bash
# Quick start: set up, then run one node-ping cycle against the built-in loopback example and print
# the metrics node-exporter would serve.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/node-ping once --example
