# paastis in a container: docker build -t paastis . && docker run --init -p 3000:3000 --env-file .env paastis
# See README.md, "Docker".
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package, then drop the sources: the image runs the installed copy.
COPY pyproject.toml README.md /tmp/paastis/
COPY src /tmp/paastis/src
RUN pip install /tmp/paastis && rm -rf /tmp/paastis

# Runs as an unprivileged user; it needs no write access anywhere.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin paastis

# paastis reads ./paastis.yml and ./.env from its working directory.
WORKDIR /app
# The build context's paastis.yml when there is one (the [l] glob lets the build go on
# without it, and paastis.yml.sample keeps the source list non-empty). Without it, mount
# one at run time: -v "$PWD/paastis.yml:/app/paastis.yml:ro". A .env is never copied
# (see .dockerignore): pass secrets at run time.
COPY paastis.yml.sample paastis.ym[l] /app/
# The local-provider demo, to try the image: ... paastis --config examples/local.yml
COPY examples /app/examples

USER paastis
# HOST defaults to 0.0.0.0, so the proxy is reachable through the published port.
EXPOSE 3000
ENTRYPOINT ["paastis"]
