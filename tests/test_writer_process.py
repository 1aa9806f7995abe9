"""The ClickHouse writer process on a real server: connected before its first batch, idempotent, restarted
when it dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from opscentre.clickhouse import connect
from sinks.clickhouse_sink import SERVICE_RAW_COLUMNS, Derived, WriteBatch
from sinks.schema import migrate
from sinks.writer_process import WriterProcess

pytestmark = pytest.mark.integration


def tcp_connections(store) -> int:
    return int(store.query("SELECT value FROM system.metrics WHERE metric = 'TCPConnection'")[0][0])


def raw_event(offset: int) -> tuple:
    values = dict.fromkeys(SERVICE_RAW_COLUMNS, "")
    values.update(
        event_id=f"e-{offset}", event_type="dossier.received", occurred_ms=1_764_000_000_000 + offset,
        province="HNI", agency="SO-TP", source="dvc", item_id=f"d-{offset}", due_ms=1_764_500_000_000,
        on_time=0, digitized=None, amount_vnd=0, satisfied=None, topic_id="svc", source_partition=0,
        source_offset=offset, item_index=0, record_ms=1_764_000_000_000 + offset,
    )
    return tuple(values[name] for name in SERVICE_RAW_COLUMNS)


def stored(store) -> int:
    return int(store.query(f"SELECT count() FROM {store.table('service_events')} FINAL")[0][0])


def test_writer_connects_at_start_and_comes_back_after_being_killed(clickhouse_url):
    store = connect(clickhouse_url)
    migrate(store)
    before = tcp_connections(store)
    writer = WriterProcess(clickhouse_url, 10.0)
    try:
        writer.start()
        # Spawning the child and connecting it happen before any batch, not during the first write.
        deadline = time.monotonic() + 20
        while tcp_connections(store) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tcp_connections(store) > before

        batch = [raw_event(offset) for offset in range(5)]
        assert writer.insert(WriteBatch(service_raw=batch)) == Derived()
        assert stored(store) == 5
        os.kill(writer._process.pid, signal.SIGKILL)
        writer._process.join(10)
        # The next write starts a new child; the same rows written again are stored once.
        writer.insert(WriteBatch(service_raw=batch))
        assert stored(store) == 5
    finally:
        writer.close()
