# syntax=docker/dockerfile:1
# node-ping image: `docker build -t node-ping:<version> .`
# The build stage turns node-ping and its pinned dependencies (requirements.txt) into wheels; the
# final stage installs only those wheels, offline, next to Debian's fping.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.txt ./
COPY node_ping ./node_ping
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels --no-deps . \
 && pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels -r requirements.txt

FROM ${PYTHON_IMAGE}
# fping from Debian (5.1 in bookworm). Its package gives /usr/bin/fping the file capability
# cap_net_raw; the DaemonSet still runs as root with only NET_RAW, because a file capability is
# ignored under no_new_privs (allowPrivilegeEscalation: false) for a non-root user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fping \
 && rm -rf /var/lib/apt/lists/*
# Installed from the build stage's wheels only (--no-index): the image gets exactly the pinned
# versions, and no compiler or build tool ends up in it. The bind mount keeps the wheels out of
# the layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-index --find-links=/wheels /wheels/*.whl
# The non-root user the discovery Deployment runs as (the chart's discovery.podSecurityContext).
RUN groupadd --system --gid 10001 node-ping \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin node-ping
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LC_ALL=C.UTF-8
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["node-ping"]
CMD ["run"]
