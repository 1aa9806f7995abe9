"""The Prometheus endpoint every long-running process serves."""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter

from prometheus_client import Histogram, start_http_server

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


def observe_many(histogram: Histogram, amounts: list[float]) -> None:
    """`histogram.observe(amount)` for each of `amounts`, with one increment per bucket: a
    snapshot of single-event records commits tens of thousands of records at once, and one
    observe each was 3-4% of the worker's main thread. Writes the same buckets observe does
    (prometheus_client keeps them in `_buckets`, its `le` bounds in `_upper_bounds`)."""
    bounds = histogram._upper_bounds
    per_bucket = Counter(bisect_left(bounds, amount) for amount in amounts)
    if not per_bucket:
        return
    histogram._raise_if_not_observable()
    histogram._sum.inc(sum(amounts))
    buckets = histogram._buckets
    for index, count in per_bucket.items():
        buckets[index].inc(count)
