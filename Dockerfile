# marketfeed in a container: slim Python, non-root, health through `marketfeed health`.
#   docker build -t marketfeed .
#   docker run -d --name marketfeed -v /etc/marketfeed:/etc/marketfeed:ro -v marketfeed-spool:/var/lib/marketfeed \
#       -p 127.0.0.1:8766:8766 marketfeed
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/marketfeed
COPY setup.cfg pyproject.toml README.md ./
COPY actors actors
COPY bin bin
COPY cli cli
COPY config config
COPY feeds feeds
COPY sim sim
COPY storage storage
COPY supervision supervision
COPY telemetry telemetry
RUN pip install . \
    && groupadd --system --gid 10001 marketfeed \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/marketfeed --shell /usr/sbin/nologin marketfeed \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/marketfeed /run/marketfeed \
    && install -d /etc/marketfeed \
    && cp config/marketfeed.example.toml /etc/marketfeed/marketfeed.toml

# The example config's paths are the image's: pid and status file (how `marketfeed health` finds the service) in
# /run/marketfeed, spool, ledger and dead letters in /var/lib/marketfeed. Metrics listen on all interfaces inside
# the container: publish the port on the host's loopback.
ENV MARKETFEED_SERVICE__HTTP_LISTEN=0.0.0.0:8766

# Numeric, so that the runtime needs no passwd lookup to know the image runs as non-root.
USER 10001:10001
WORKDIR /var/lib/marketfeed
VOLUME ["/etc/marketfeed", "/var/lib/marketfeed"]
EXPOSE 8766
STOPSIGNAL SIGTERM
# --healthcheck: exit 0 while ok or degraded (e.g. one feed down), 1 when critical or unknown, as Docker wants.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD ["marketfeed", "health", "-c", "/etc/marketfeed/marketfeed.toml", "--timeout", "10", "--healthcheck"]
ENTRYPOINT ["marketfeed"]
CMD ["run", "-c", "/etc/marketfeed/marketfeed.toml"]
