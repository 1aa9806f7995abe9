"""Retention: whole months past it are dropped, what is open stays open, nothing older is accepted."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dashboards.kpi import lifecycle_count
from opscentre.clickhouse import connect
from opscentre.events import Validator, retention_start_ms
from opscentre.provinces import load_provinces
from opscentre.settings import Settings
from sinks.clickhouse_sink import ClickHouseSink
from sinks.retention import apply_retention
from sinks.schema import migrate
from streams.processor import Processor

UTC = dt.timezone.utc
NOW = dt.datetime(2027, 3, 15, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def ms(*args) -> int:
    return int(dt.datetime(*args, tzinfo=UTC).timestamp() * 1000)


def test_the_retention_starts_on_the_first_of_a_month():
    assert retention_start_ms(NOW_MS, 400) == ms(2026, 2, 1)
    assert retention_start_ms(NOW_MS, 0) == 0


def test_events_before_the_retention_start_are_rejected():
    validator = Validator(load_provinces(None), retention_days=400)
    base = {"event_id": "e1", "event_type": "dossier.received", "province": "01", "agency": "STP", "source": "s",
            "dossier_id": "HS-1", "procedure_code": "p", "service_level": "full_online", "channel": "online"}
    old = dict(base, occurred_at="2026-01-31T23:59:59Z", due_at="2026-03-01T00:00:00Z")
    (rejection,) = validator.decode(json.dumps(old).encode(), NOW_MS).rejections
    assert rejection.reason.startswith("field 'occurred_at': 2026-01-31T23:59:59+00:00 is before 2026-02-01T00:00:00")
    due_before = dict(base, occurred_at="2026-03-01T00:00:00Z", due_at="2026-01-15T00:00:00Z")
    (rejection,) = validator.decode(json.dumps(due_before).encode(), NOW_MS).rejections
    assert rejection.reason.startswith("field 'due_at': 2026-01-15T00:00:00+00:00 is before")
    kept = dict(base, occurred_at="2026-02-01T00:00:00Z", due_at="2026-02-02T00:00:00Z")
    assert validator.decode(json.dumps(kept).encode(), NOW_MS).events


@pytest.mark.integration
def test_months_past_retention_are_dropped_and_open_items_stay_open(clickhouse_url):
    store = connect(clickhouse_url)
    migrate(store)
    settings = Settings(topic_prefix="k", retention_days=0)  # no retention while the history is written
    processor = Processor(settings, {settings.service_topic: "ts", settings.security_topic: "tz"},
                          ClickHouseSink(store), b"k", ["%02d" % i for i in range(100)], clock=lambda: NOW_MS / 1000)

    def received(n, at_ms, due_ms):
        return {"event_id": f"r{n}", "event_type": "dossier.received", "occurred_at": at_ms, "province": "01",
                "agency": "STP", "source": "s", "dossier_id": f"HS-{n}", "procedure_code": "p",
                "service_level": "full_online", "channel": "online", "due_at": due_ms}

    history = [
        received(1, ms(2025, 12, 10), ms(2025, 12, 20)),  # never closed: overdue since December 2025
        received(2, ms(2025, 12, 11), ms(2026, 1, 20)),
        {"event_id": "c2", "event_type": "dossier.completed", "occurred_at": ms(2026, 1, 5), "province": "01",
         "agency": "STP", "source": "s", "dossier_id": "HS-2", "procedure_code": "p", "due_at": ms(2026, 1, 20),
         "result": "approved"},
        received(3, ms(2026, 3, 2), ms(2026, 3, 5)),
    ]
    for offset, event in enumerate(history):
        processor.process(settings.service_topic, 0, offset, ms(2026, 3, 3), json.dumps(event).encode())
    processor.flush()
    before = {t: lifecycle_count(store, t, "dossiers_overdue", None) for t in (ms(2026, 4, 1), NOW_MS)}
    assert before[NOW_MS] == {"01": 2}

    dropped = apply_retention(store, 400, NOW_MS)
    assert {"service_events 202512", "service_events 202601", "lifecycle_edges 202512", "service_minute 202601"} <= set(
        dropped)
    assert not any(name.endswith("202603") or name.startswith(("service_day", "service_month", "open_items", "alerts"))
                   for name in dropped)
    assert apply_retention(store, 400, NOW_MS) == []  # nothing left to drop
    # Counts from the months kept and the month rows: the dossier open since December is still overdue.
    assert {t: lifecycle_count(store, t, "dossiers_overdue", None) for t in before} == before
    (events,) = store.query(f"SELECT count() FROM {store.table('service_events')}")[0]
    assert int(events) == 1
