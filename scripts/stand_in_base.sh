#!/usr/bin/env bash
# Make the Dockerfile's base image (python:3.11-slim-bookworm) from Debian's own packages, for a
# machine that has podman but no registry to pull from, and print the name it is stored under.
#   bash scripts/stand_in_base.sh
# It is bookworm (minbase) with Debian's python3 (3.11), pip, python-is-python3 and ca-certificates
# from the bookworm, bookworm-updates and bookworm-security suites, made like the real image where a
# build can tell: `python` and `pip` on PATH, pip allowed to install into the system (no
# EXTERNALLY-MANAGED), no apt lists, LANG=C.UTF-8, CMD python3. What differs from the real image:
# Python is Debian's 3.11.2 in /usr/bin (the real one builds the newest 3.11 into /usr/local), pip is
# Debian's 23.0 with setuptools and wheel beside it, packages pip installs land in
# /usr/local/lib/python3.11/dist-packages (not site-packages), and the image is larger (about 245 MB,
# the real one about 130 MB) because Debian's pip brings its dependencies.
# A base of that name that this script did not make (a real python image) is left as it is. The
# stand-in is kept under a tag that is the hash of this file, so it is made again only when missing
# or when this recipe changes; older stand-ins are removed.
set -euo pipefail

BASE=docker.io/library/python:3.11-slim-bookworm
REPOSITORY=localhost/node-ping-stand-in-base
LABEL=org.node-ping.stand-in
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
tag="$REPOSITORY:$recipe"

if podman image exists "$BASE" && [ -z "$(podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$BASE")" ]; then
    echo "$BASE"  # the real image
    exit 0
fi

if ! podman image exists "$tag"; then
    mirror=http://deb.debian.org
    mmdebstrap --quiet --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm - \
        "deb $mirror/debian bookworm main" \
        "deb $mirror/debian bookworm-updates main" \
        "deb $mirror/debian-security bookworm-security main" \
    | podman import --quiet --change "LABEL $LABEL=$recipe" --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$tag" >/dev/null
fi
podman tag "$tag" "$BASE"
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "$REPOSITORY"); do
    [[ "$old" != "$REPOSITORY:"* || "$old" = "$tag" ]] || podman rmi "$old" >/dev/null
done
echo "$tag"
