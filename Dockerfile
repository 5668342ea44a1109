# paastis in a container (README.md, "Docker"):
#   docker build -t paastis .        (podman: podman build --format docker -t paastis .)
#   docker run --rm -p 3000:3000 --env-file .env paastis
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/paastis/bin:$PATH

# tini as PID 1 forwards signals to paastis and reaps the background processes that hooks may
# leave behind, also where the platform passes no --init. Its version is the base's Debian's.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 paastis \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init --shell /usr/sbin/nologin paastis

# The runtime dependencies at their locked versions, in a layer of their own: a change to the
# sources or the README reuses it.
COPY requirements.lock /opt/paastis-build/
RUN python3 -m venv /opt/paastis \
    && pip install --no-cache-dir -r /opt/paastis-build/requirements.lock

# paastis itself, without dependencies (they are all above; pip check says so).
COPY pyproject.toml README.md LICENSE /opt/paastis-build/
COPY src /opt/paastis-build/src
RUN pip install --no-cache-dir --no-deps /opt/paastis-build \
    && pip check \
    && rm -rf /opt/paastis-build

# paastis reads ./paastis.yml and ./.env from its working directory. No configuration is
# baked in: mount yours (-v "$PWD/paastis.yml:/app/paastis.yml:ro") or pass variables.
WORKDIR /app
# The local-provider demo (its apps serve examples/site/, never /app):
#   docker run --rm -p 3000:3000 -e PROVIDER_NAME=local paastis --config examples/local.yml
COPY examples /app/examples

# The admin listener, on the container's loopback, answers the HEALTHCHECK.
ENV ADMIN_PORT=9000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['ADMIN_PORT'], timeout=4)"]

# Numeric, so that Kubernetes' runAsNonRoot can check it; paastis writes nowhere.
USER 10001:10001
# HOST defaults to 0.0.0.0, so the proxy is reachable through the published port.
EXPOSE 3000
ENTRYPOINT ["/usr/bin/tini", "--", "paastis"]
