# syntax=docker/dockerfile:1
# node-ping images, one target each:
#   docker build -t node-ping:<version> .                                   (the exporter, the default)
#   docker build --target discovery -t node-ping-discovery:<version> .      (the discovery controller)
# The build stage turns node-ping into a wheel and fetches every locked dependency (requirements*.lock,
# each file checked against its hash); the targets install only those wheels, offline, and only
# what they run: the exporter gets fping and no Kubernetes client, discovery the Kubernetes client and
# no fping.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock requirements-discover.lock ./
COPY node_ping ./node_ping
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels/node-ping --no-deps . \
 && pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels/deps --require-hashes \
      -r requirements-discover.lock \
 && cp requirements.lock requirements-discover.lock /wheels/

# What both targets share: the user, the environment, the entrypoint.
FROM ${PYTHON_IMAGE} AS common
# The non-root user the discovery Deployment runs as (the chart's discovery.podSecurityContext).
RUN groupadd --system --gid 10001 node-ping \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin node-ping
# No bytecode in the layers (pip's own included): it would double the size of the Python code, and
# the read-only root filesystem the chart sets could not take it at run time anyway.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LC_ALL=C.UTF-8
ENTRYPOINT ["node-ping"]

FROM common AS discovery
# Installed from the build stage's wheels only (--no-index, --require-hashes): the image gets exactly
# the pinned versions, and no compiler or build tool ends up in it. The bind mount keeps the wheels
# out of the layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-compile --disable-pip-version-check --no-index --find-links=/wheels/deps \
      --require-hashes -r /wheels/requirements-discover.lock \
 && pip install --no-cache-dir --no-compile --disable-pip-version-check --no-index --no-deps /wheels/node-ping/*.whl
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
CMD ["discover"]

FROM common AS exporter
# fping from Debian (5.1 in bookworm). Its package gives /usr/bin/fping the file capability
# cap_net_raw; the DaemonSet still runs as root with only NET_RAW, because a file capability is
# ignored under no_new_privs (allowPrivilegeEscalation: false) for a non-root user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fping \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
# As for discovery, from requirements.lock: no Kubernetes client.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-compile --disable-pip-version-check --no-index --find-links=/wheels/deps \
      --require-hashes -r /wheels/requirements.lock \
 && pip install --no-cache-dir --no-compile --disable-pip-version-check --no-index --no-deps /wheels/node-ping/*.whl
USER 10001:10001
CMD ["run"]
