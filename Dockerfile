# K2's image for its own services (k2-init, k2-consumer, k2-api in docker-compose.yml). Two stages:
# the first installs requirements-runtime.lock (requirements.lock without the dev tools) and K2
# into a virtual environment; the second is the same slim Python with only that environment (no
# installer in it, nothing of the build stage), run as an unprivileged user. The entrypoint is
# `k2`, so a service's command is a k2 command (`consume`, `api`, `init`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --without-pip: the environment carries no installer into the final stage; the base image's pip
# installs into it (--python).
RUN python -m venv --without-pip /opt/k2
WORKDIR /src
COPY requirements-runtime.lock ./
RUN pip --python /opt/k2/bin/python install --no-deps -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY k2_etl ./k2_etl
COPY api ./api
RUN pip --python /opt/k2/bin/python install --no-deps . \
    && pip --python /opt/k2/bin/python check

# The same base as the build stage: the environment's python links to this image's interpreter.
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/k2/bin:$PATH \
    K2_HOME=/var/lib/k2

COPY --from=build /opt/k2 /opt/k2
RUN useradd --system --uid 10001 --home-dir /var/lib/k2 --create-home k2
USER 10001
WORKDIR /var/lib/k2
ENTRYPOINT ["k2"]
CMD ["--help"]
