# syntax=docker/dockerfile:1.7
#
# One image for every freshrank role:
#   freshrank serve                 feed API (Deployment)
#   PyFlink stream job              JobManager/TaskManagers started by the Flink Kubernetes Operator
#   freshrank candidates / train    CronJobs
#
#   docker build -t freshrank:0.1.0 .
#
# The base image is pinned to an exact tag. For byte-for-byte reproducible builds pin it by
# digest too: --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
# Python dependencies come only from uv.lock (`uv sync --frozen`): the image runs the exact
# versions CI tested.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: resolve nothing, install the locked set into /opt/freshrank/venv ------------------
FROM ${PYTHON_IMAGE} AS build

# The uv that wrote uv.lock; an older uv may not read a newer lock format.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

ENV UV_PROJECT_ENVIRONMENT=/opt/freshrank/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --no-editable

# Then the project itself, installed as a wheel (--no-editable), so /src is not needed at run time.
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# The apache-flink wheel carries a whole Flink distribution (bin/, lib/, opt/, plugins/, conf/).
# Move it to /opt/flink, where the Flink Kubernetes Operator and Flink's native Kubernetes
# integration expect it (conf mounted at /opt/flink/conf, logs in /opt/flink/log), and leave
# symlinks behind so PyFlink still finds it from inside the venv. Doing this here, not in the
# runtime stage, keeps the 350 MB distribution in one layer. flink-python.jar (the PythonDriver
# the FlinkDeployment starts) gets a version-free name, and the Feast repo a fixed path for
# `feast apply`.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pyflink="$(/opt/freshrank/venv/bin/python -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))')" \
    && mkdir -p /opt/flink/usrlib \
    && for dir in bin lib opt plugins conf log; do \
         mv "${pyflink}/${dir}" "/opt/flink/${dir}" && ln -s "/opt/flink/${dir}" "${pyflink}/${dir}"; \
       done \
    && jars=(/opt/flink/opt/flink-python-*.jar) && test "${#jars[@]}" -eq 1 && test -f "${jars[0]}" \
    && ln -s "$(basename "${jars[0]}")" /opt/flink/opt/flink-python.jar \
    && ln -s "$(dirname "${pyflink}")/feature_repo" /opt/freshrank/feature_repo

# --- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="freshrank" \
      org.opencontainers.image.description="Streaming features and real-time re-ranking for feeds: API, PyFlink job, batch jobs" \
      org.opencontainers.image.licenses="Apache-2.0"

# Java 17 for PyFlink; tini as PID 1 so signals reach the app and child processes are reaped.
# Debian package versions are not pinned (DL3008): bookworm security updates replace old
# versions in the archive, so a pinned version stops building; the base tag fixes the release.
# The man1 dir works around the JRE's postinst on slim images, which strip /usr/share/man.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

# A fixed numeric uid/gid, so Kubernetes can verify runAsNonRoot without a runAsUser.
RUN groupadd --system --gid 10001 freshrank \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/freshrank --create-home \
       --shell /usr/sbin/nologin freshrank

COPY --from=build /opt/freshrank /opt/freshrank
COPY --from=build /opt/flink /opt/flink
# Flink writes its logs under the distribution; nothing else in the image is writable by the app.
RUN chown 10001:10001 /opt/flink/log /opt/flink/usrlib

# Flink's native Kubernetes integration starts JobManager/TaskManager containers as
# `/docker-entrypoint.sh bash -c "kubernetes-jobmanager.sh ..."`. The official Flink image's
# script mostly rewrites conf/ from environment variables; the operator mounts a complete
# conf/ instead, so this one only runs its arguments.
RUN printf '%s\n' '#!/bin/sh' 'exec "$@"' > /docker-entrypoint.sh \
    && chmod 0755 /docker-entrypoint.sh

ENV PATH=/opt/freshrank/venv/bin:/opt/flink/bin:$PATH \
    JAVA_HOME=/opt/java \
    FLINK_HOME=/opt/flink \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/freshrank

WORKDIR /home/freshrank
USER 10001:10001

# 8000: feed API; 9464: stream job /metrics; 6123/6124/8081: Flink RPC, blob server, REST.
EXPOSE 8000 9464 6123 6124 8081

ENTRYPOINT ["/usr/bin/tini", "--", "freshrank"]
CMD ["--help"]
