#!/usr/bin/env bash
# Install what node-ping needs on a Debian machine (run as root): the Debian packages, then a
# virtualenv in .venv with node-ping and its test tools. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# podman (with runc, its networking and buildah) builds and runs the images in tests/test_image.py;
# mmdebstrap makes their base image from Debian's packages (scripts/stand_in_base.sh).
DEBIAN_PACKAGES=(fping iproute2 nftables prometheus prometheus-node-exporter python3-venv procps libcap2-bin
                 ca-certificates podman buildah runc conmon catatonit netavark aardvark-dns uidmap
                 slirp4netns golang-github-containers-common mmdebstrap)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages start no services here; node-ping's tests start their own instances.

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.node-ping-installed
if [ ! -f "$stamp" ] || [ requirements-dev.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into .venv"
    # Exactly the locked versions, each file checked against its hash (scripts/lock.sh makes the lock).
    .venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements-dev.lock
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    touch "$stamp"
fi
