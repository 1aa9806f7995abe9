"""The Prometheus endpoint every long-running process serves."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from .settings import Settings

log = logging.getLogger(__name__)


def serve_metrics(settings: Settings, port: int | None = None) -> tuple[str, int]:
    """Serve /metrics on OPSCENTRE_METRICS_ADDR (or `port` on its host); returns the address."""
    host, default_port = settings.metrics_host_port()
    chosen = default_port if port is None else port
    try:
        server, _ = start_http_server(chosen, addr=host)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{chosen}: {exc.strerror or exc}") from None
    return host, server.server_port
