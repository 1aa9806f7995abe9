"""Retention: whole months dropped, never rows inside a month.

Coarse rows are recomputed from finer ones (sinks.clickhouse_sink, Rollups), so a bucket may only
be recomputed while every finer row of it is kept. The worker accepts nothing dated before the
retention start (opscentre.events.retention_start_ms: the first of a month), and this drops only
the months before it, whole: every month kept is complete, and nothing ever recomputes a month
that is gone. ClickHouse's row TTL (absent on 18.16) would delete rows inside months, so it is
not used on either server.

| kept                                                                         | how long              |
|------------------------------------------------------------------------------|-----------------------|
| raw events, rejections, minute rows, lifecycle edges and minutes, item tables | `retention_days`      |
| hour rows                                                                    | twice that            |
| accepted ids (de-duplication on take-over)                                   | 7 days                |
| day and month rows, alerts, open items (what is still open is never lost)    | always                |
"""

from __future__ import annotations

import time

from opscentre.clickhouse import Store
from opscentre.events import retention_start_ms

from .clickhouse_sink import HOUR, LIFECYCLE_MINUTE, SECURITY_MINUTE, SERVICE_MINUTE, drop_before, grain_table

RAW_TABLES = ("service_events", "security_events", "rejected_events", "service_minute", "security_minute",
              "lifecycle_edges", "lifecycle_minute", "item_receipts", "item_closings", "item_events")
HOUR_TABLES = tuple(grain_table(table, HOUR) for table in (SERVICE_MINUTE, SECURITY_MINUTE, LIFECYCLE_MINUTE))
SEEN_IDS_DAYS = 7


def apply_retention(store: Store, retention_days: int, now_ms: int | None = None) -> list[str]:
    """Drop what is past retention; returns "table partition" of each partition dropped."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    dropped = []
    if retention_days > 0:
        dropped += _drop_months(store, RAW_TABLES, retention_start_ms(now_ms, retention_days))
        dropped += _drop_months(store, HOUR_TABLES, retention_start_ms(now_ms, 2 * retention_days))
    seen_start = time.gmtime(max(0, now_ms // 1000 - SEEN_IDS_DAYS * 86400))
    dropped += drop_before(store, "seen_event_ids", int(time.strftime("%Y%m%d", seen_start)))
    return dropped


def _drop_months(store: Store, tables, start_ms: int) -> list[str]:
    month = time.gmtime(start_ms // 1000)
    below = month.tm_year * 100 + month.tm_mon
    dropped = []
    for table in tables:
        dropped += drop_before(store, table, below)
    return dropped
