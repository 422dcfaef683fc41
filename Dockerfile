# Cryptopass relay. Build: podman build -t cryptopass-relay . (see docs/OPERATIONS.md)
# BASE must provide python3 (3.11+) with venv; the container test passes a local Debian base.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Optional CA bundle for pip's HTTPS (e.g. mounted read-only at build time behind a proxy).
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY client ./client
COPY wire ./wire
COPY transport ./transport
COPY crypto ./crypto
COPY enrolment ./enrolment
COPY storage ./storage
COPY bench ./bench
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
    && python3 -m venv /opt/relay \
    && /opt/relay/bin/pip install --no-compile . \
    && /opt/relay/bin/python -m compileall -q /opt/relay/lib

FROM ${BASE}
# A fixed non-root uid/gid, so that a host directory mounted at /data can be chowned to it.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /data --no-create-home relay \
    && mkdir -p /data/sender-cert-keys && chown -R relay:relay /data \
    && chmod 0700 /data/sender-cert-keys
COPY --from=build /opt/relay /opt/relay
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CRYPTOPASS_DATA_DIR=/data \
    CRYPTOPASS_LISTEN_HOST=0.0.0.0 \
    CRYPTOPASS_LISTEN_PORT=4433 \
    CRYPTOPASS_METRICS_LISTEN=0.0.0.0:9464
VOLUME ["/data"]
# 4433/udp: QUIC for devices. 9464/tcp: /metrics, /healthz, /readyz (internal only).
EXPOSE 4433/udp 9464/tcp
USER 10001:10001
WORKDIR /data
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cryptopass-relay"]
CMD ["serve"]
