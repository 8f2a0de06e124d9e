# syntax=docker/dockerfile:1
# The console gateway's image: noVNC from npm, the gateway's wheel, a slim non-root runtime.
#
#   docker build -t console-gateway:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --read-only --tmpfs /tmp --cap-drop ALL -p 8080:8080 \
#     -v "$PWD/gateway.yaml:/etc/console-gateway/gateway.yaml:ro" \
#     -e CGW_REDIS_URL -e CGW_UPSTREAM_TOKEN -e CGW_AUTH_HS256_SECRET console-gateway:0.1.0
#
# Settings come from the mounted file named by CGW_CONFIG (config/gateway.example.yaml documents
# every key); secrets from the environment (CGW_AUTH_HS256_SECRET, CGW_UPSTREAM_TOKEN or
# CGW_UPSTREAM_KEYSTONE_PASSWORD, CGW_REDIS_URL), never from the image.
#
# Base images are pinned by tag only. Pinning by digest (FROM image:tag@sha256:...) needs a
# registry lookup, which is not possible where this file was written (no network to a
# registry, no Docker engine); a release pipeline should add the digests (e.g. with Renovate or
# `docker buildx imagetools inspect`) and keep them current.
#
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount in the runtime stage.
# tests/test_image.py performs the runtime stage's steps without Docker; scripts/lint-image runs
# hadolint on this file.

# --- noVNC, the browser-side VNC client that the console page serves (pinned by package-lock.json)
FROM node:20-bookworm-slim AS novnc
WORKDIR /novnc
COPY package.json package-lock.json ./
# --omit=dev leaves out the browser-test harness (playwright-core); noVNC has no install scripts.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
    && test -f node_modules/@novnc/novnc/core/rfb.js

# --- the gateway's wheel (pure Python; its dependencies ship binary wheels)
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --no-deps -w /dist .

# --- runtime: the wheel and its dependencies in a venv, noVNC's files, nothing else
FROM python:3.11-slim-bookworm AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="console-gateway" \
      org.opencontainers.image.description="Authenticating gateway and WebSocket proxy for OpenStack/Huawei ECS noVNC consoles" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/example/console-gateway" \
      org.opencontainers.image.documentation="https://github.com/example/console-gateway#readme" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# A fixed, numeric, non-root uid/gid (Kubernetes' runAsNonRoot can only verify a numeric USER).
# No home directory: nothing is written at run time.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway

# Only the built wheel is installed, with its dependencies from the index, into a venv without
# pip (the base image's pip installs into it). The wheel is bind-mounted from the build stage, so
# it is in no layer. pip compiles the .pyc files here, at build time: at run time
# PYTHONDONTWRITEBYTECODE keeps Python from trying to write any.
RUN --mount=type=bind,from=build,source=/dist,target=/tmp/dist \
    python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir \
       --disable-pip-version-check --root-user-action=ignore /tmp/dist/*.whl

# noVNC's client files (MPL-2.0, its licence alongside), owned by root: read-only for the gateway.
COPY --from=novnc /novnc/node_modules/@novnc/novnc/core /opt/novnc/core
COPY --from=novnc /novnc/node_modules/@novnc/novnc/vendor /opt/novnc/vendor
COPY --from=novnc /novnc/node_modules/@novnc/novnc/LICENSE.txt /opt/novnc/LICENSE.txt
COPY config/gateway.example.yaml /usr/share/doc/console-gateway/gateway.example.yaml

# Read-only root filesystem: the gateway writes no files at run time (no .pyc, no caches, no
# state: Redis holds it). Mount /tmp as an emptyDir (Kubernetes) or tmpfs (docker run --tmpfs
# /tmp) anyway, as the one writable path, for libraries that may want a temporary file.
ENV PATH="/opt/venv/bin:${PATH}" \
    CGW_CONFIG=/etc/console-gateway/gateway.yaml \
    CGW_SERVER_NOVNC_DIR=/opt/novnc \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
EXPOSE 8080

# Liveness only (/readyz turns 503 while draining or while Redis is down, which is no reason to
# restart). No curl in the image: Python's urllib, never through a proxy; follows
# CGW_SERVER_PORT when the port is set that way.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthz' % os.environ.get('CGW_SERVER_PORT', '8080'), timeout=2)"]

# SIGTERM starts the drain (unready at once, consoles closed with 1001 after drain.grace_s,
# exit by drain.deadline_s): give the container longer than drain.deadline_s to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["console-gateway"]
CMD ["serve"]
