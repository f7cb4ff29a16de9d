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
    && useradd --system --uid 10001 --home-dir /var/lib/marketfeed --shell /usr/sbin/nologin marketfeed \
    && install -d -o marketfeed -g marketfeed /etc/marketfeed /var/lib/marketfeed /run/marketfeed \
    && cp config/marketfeed.example.toml /etc/marketfeed/marketfeed.toml

# The pid and status files are how `marketfeed health` finds the service; metrics listen on all
# interfaces inside the container, publish the port on the host's loopback.
ENV MARKETFEED_SERVICE__PID_FILE=/run/marketfeed/marketfeed.pid \
    MARKETFEED_SERVICE__STATUS_FILE=/run/marketfeed/status.json \
    MARKETFEED_SERVICE__HTTP_LISTEN=0.0.0.0:8766 \
    MARKETFEED_SPOOL__DIR=/var/lib/marketfeed/spool

USER marketfeed
WORKDIR /var/lib/marketfeed
VOLUME ["/etc/marketfeed", "/var/lib/marketfeed"]
EXPOSE 8766
STOPSIGNAL SIGTERM
# Degraded (exit 1, e.g. one feed down) is still healthy for Docker; critical (2) and unknown (3) are not.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD marketfeed health -c /etc/marketfeed/marketfeed.toml --timeout 10 >/dev/null; [ $? -le 1 ] || exit 1
ENTRYPOINT ["marketfeed"]
CMD ["run", "-c", "/etc/marketfeed/marketfeed.toml"]
