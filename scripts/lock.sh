#!/usr/bin/env bash
# Lock every Python dependency, transitive ones included, with the hashes of their files on PyPI:
#   requirements.txt           -> requirements.lock            (the exporter image)
#   requirements-discover.txt  -> requirements-discover.lock   (the discovery image)
#   requirements-dev.txt       -> requirements-dev.lock        (.venv: tests and linters)
# The dev lock (every package) is made first and constrains the two image locks, so a package has
# one version everywhere: the tests run the versions the images ship.
# Run after editing a requirements*.txt: `bash scripts/lock.sh` (pins already in a lock stay unless
# their input changed; `bash scripts/lock.sh --upgrade` moves every unpinned one to its newest).
# Uses pip-compile from .venv (pip-tools, in requirements-dev.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

# Only PyPI: a machine's own pip configuration (local wheel directories, mirrors) must not reach
# the lock, or its hashes would name files no one else can download.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_NO_INDEX
export CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh"

compile() {
    local input=$1 output=$2
    shift 2
    .venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
        --no-emit-find-links --index-url https://pypi.org/simple \
        --output-file "$output" "$@" "$input"
}

compile requirements-dev.txt requirements-dev.lock "$@"
compile requirements-discover.txt requirements-discover.lock --constraint requirements-dev.lock "$@"
compile requirements.txt requirements.lock --constraint requirements-dev.lock "$@"
