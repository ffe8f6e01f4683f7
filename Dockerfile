# K2's image for its own services (k2-init, k2-consumer, k2-api in docker-compose.yml): the pinned
# dependencies of requirements.lock and K2 itself, run as an unprivileged user. The entrypoint is
# `k2`, so a service's command is a k2 command (`consume`, `api`, `init`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    K2_HOME=/var/lib/k2

WORKDIR /opt/k2
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY k2_etl ./k2_etl
COPY api ./api
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /var/lib/k2 --create-home k2
USER 10001
WORKDIR /var/lib/k2
ENTRYPOINT ["k2"]
CMD ["--help"]
